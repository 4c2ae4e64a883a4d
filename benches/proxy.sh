#!/usr/bin/env bash
# Proxy throughput on loopback with wrk, all four configurations in one run, against the same upstream:
# nginx `return 200` on a unix socket (and on TCP for the direct run), which is not the bottleneck.
#   1. direct to the upstream (the limit)
#   2. nginx, seed config: proxy_pass http://unix:..., no upstream keep-alive
#   3. nginx tuned: upstream block with keepalive 64, proxy_http_version 1.1, Connection ""
#   4. the stackinit proxy (standalone mode, same upstream socket)
# Every proxy writes an access log, as the seed does. Usage: benches/proxy.sh [seconds] [connections]
# STACKINIT=path/to/stackinit picks the binary (default: target/release if built, else target/debug).
set -euo pipefail

DURATION=${1:-10}
CONNS=${2:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${STACKINIT:-}
if [[ -z "$BIN" ]]; then
  if [[ -x "$ROOT/target/release/stackinit" ]]; then BIN="$ROOT/target/release/stackinit"; else BIN="$ROOT/target/debug/stackinit"; fi
fi
for tool in wrk /usr/sbin/nginx; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[[ -x "$BIN" ]] || { echo "missing $BIN (cargo build first)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/stackinit-proxy-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_UP=$(port); P_SEED=$(port); P_TUNED=$(port); P_SI=$(port)
UPSOCK="$TMP/up.sock"

# As root, nginx workers would switch to nobody and lose access to the 0700 temp dir and its socket.
NGINX_USER=""
[[ $(id -u) == 0 ]] && NGINX_USER="user root;"
nginx_conf() { # name, workers, http-body
  mkdir -p "$TMP/$1/logs"
  cat > "$TMP/$1/nginx.conf" <<CONF
daemon off;
master_process on;
$NGINX_USER
worker_processes $2;
pid $TMP/$1/nginx.pid;
error_log $TMP/$1/logs/error.log;
events { worker_connections 4096; }
http {
  client_body_temp_path $TMP/$1/cb; proxy_temp_path $TMP/$1/pt; fastcgi_temp_path $TMP/$1/ft;
  uwsgi_temp_path $TMP/$1/ut; scgi_temp_path $TMP/$1/st;
$3
}
CONF
  /usr/sbin/nginx -p "$TMP/$1" -c "$TMP/$1/nginx.conf" &
  PIDS+=($!)
}

PROXY_PARAMS='proxy_set_header Host $http_host; proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;'

nginx_conf upstream 1 "  access_log off;
  server { listen unix:$UPSOCK; listen 127.0.0.1:$P_UP; location / { return 200 \"ok\\n\"; } }"
nginx_conf seed auto "  access_log $TMP/seed/logs/access.log;
  server { listen 127.0.0.1:$P_SEED default_server; server_name *.compute.amazonaws.com;
    location / { proxy_pass http://unix:$UPSOCK; $PROXY_PARAMS } }"
nginx_conf tuned auto "  access_log $TMP/tuned/logs/access.log;
  upstream app { server unix:$UPSOCK; keepalive 64; }
  server { listen 127.0.0.1:$P_TUNED default_server; server_name *.compute.amazonaws.com;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; $PROXY_PARAMS } }"

cat > "$TMP/stackinit.toml" <<CONF
[init]
logs_dir = "$TMP"
[proxy]
listen = ["127.0.0.1:$P_SI"]
[[proxy.server]]
server_name = ["*.compute.amazonaws.com"]
default = true
  [[proxy.server.location]]
  path = "/"
  upstream = "unix:$UPSOCK"
CONF
"$BIN" proxy --config "$TMP/stackinit.toml" > "$TMP/stackinit-access.log" 2> "$TMP/stackinit.err" &
SI_PID=$!
PIDS+=($SI_PID)

for p in $P_UP $P_SEED $P_TUNED $P_SI; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.05; done
done

declare -A RPS P50 P99 CPU PIDOF
# CPU time (clock ticks) of a process and its children (nginx master + workers).
ticks() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "$total"
}
run() { # label, port
  local out before after
  before=$(ticks "${PIDOF[$1]}")
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: ec2-1-2-3-4.us-west-2.compute.amazonaws.com' "http://127.0.0.1:$2/")
  RPS[$1]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  P50[$1]=$(awk '$1=="50%" {print $2}' <<<"$out")
  P99[$1]=$(awk '$1=="99%" {print $2}' <<<"$out")
  after=$(ticks "${PIDOF[$1]}")
  local requests; requests=$(awk '/requests in/ {print $1}' <<<"$out")
  CPU[$1]=$(python3 -c "print(f'{($after-$before)/$(getconf CLK_TCK)/$requests*1e6:.1f}')")
  local errors; errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  [[ -n "$errors" ]] && echo "  $1: $errors" >&2
  return 0
}
PIDOF[direct]=${PIDS[0]}; PIDOF[seed]=${PIDS[1]}; PIDOF[tuned]=${PIDS[2]}; PIDOF[stackinit]=$SI_PID
echo "wrk -t2 -c$CONNS -d${DURATION}s on $(nproc) cores; stackinit binary: $BIN" >&2
run direct "$P_UP"
run seed "$P_SEED"
run tuned "$P_TUNED"
run stackinit "$P_SI"

ratio() { python3 -c "print(f'{float($1)/float($2):.2f}')"; }
printf '%-12s %10s %10s %10s %10s %10s %12s\n' config rps p50 p99 "vs seed" "vs tuned" "cpu us/req"
for k in direct seed tuned stackinit; do
  printf '%-12s %10s %10s %10s %10s %10s %12s\n' "$k" "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" \
    "$(ratio "${RPS[$k]}" "${RPS[seed]}")" "$(ratio "${RPS[$k]}" "${RPS[tuned]}")" "${CPU[$k]}"
done
awk '/VmHWM|VmRSS/ {printf "stackinit proxy %s %s %s\n", $1, $2, $3}' "/proc/$SI_PID/status"
echo "access log lines written by stackinit: $(wc -l < "$TMP/stackinit-access.log")"
