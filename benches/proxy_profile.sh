#!/usr/bin/env bash
# CPU per proxied request of the stackinit proxy, under callgrind (instruction counts: repeatable on a noisy,
# shared machine) or perf (cpu-clock samples with call graphs). Same upstream as benches/proxy.sh: nginx
# `return 200` on a unix socket.
#   benches/proxy_profile.sh callgrind [seconds]   -> Ir per request, and a callgrind.out for callgrind_annotate
#   benches/proxy_profile.sh perf [seconds]        -> perf.data for `perf report`
#   benches/proxy_profile.sh syscalls [seconds]    -> syscalls per request (perf stat on syscall tracepoints)
# Build the binary with symbols first: cargo build --profile profiling --bin stackinit
# STACKINIT=path picks the binary (default target/profiling/stackinit). OUT=dir keeps the outputs (default /tmp).
# WORKERS=N sets the proxy's `workers` (default: left out, one per core).
set -euo pipefail

MODE=${1:-callgrind}
DURATION=${2:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${STACKINIT:-$ROOT/target/profiling/stackinit}
OUT=${OUT:-/tmp}
for tool in wrk /usr/sbin/nginx; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[[ -x "$BIN" ]] || { echo "missing $BIN (cargo build --profile profiling --bin stackinit)" >&2; exit 1; }
case "$MODE" in
  callgrind) command -v valgrind >/dev/null || { echo "missing valgrind" >&2; exit 1; } ;;
  perf|syscalls) command -v perf >/dev/null || { echo "missing perf" >&2; exit 1; } ;;
  *) echo "usage: $0 callgrind|perf|syscalls [seconds]" >&2; exit 2 ;;
esac

TMP=$(mktemp -d /tmp/stackinit-proxy-profile.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_SI=$(port)
UPSOCK="$TMP/up.sock"
NGINX_USER=""
[[ $(id -u) == 0 ]] && NGINX_USER="user root;"
mkdir -p "$TMP/up/logs"
cat > "$TMP/up/nginx.conf" <<CONF
daemon off;
$NGINX_USER
worker_processes 1;
pid $TMP/up/nginx.pid;
error_log $TMP/up/logs/error.log;
events { worker_connections 4096; }
http {
  client_body_temp_path $TMP/up/cb; proxy_temp_path $TMP/up/pt; fastcgi_temp_path $TMP/up/ft;
  uwsgi_temp_path $TMP/up/ut; scgi_temp_path $TMP/up/st;
  access_log off;
  server { listen unix:$UPSOCK; location / { return 200 "ok\\n"; } }
}
CONF
/usr/sbin/nginx -p "$TMP/up" -c "$TMP/up/nginx.conf" &
PIDS+=($!)

cat > "$TMP/stackinit.toml" <<CONF
[init]
logs_dir = "$TMP"
[proxy]
listen = ["127.0.0.1:$P_SI"]
${WORKERS:+workers = $WORKERS}
[[proxy.server]]
server_name = ["*.compute.amazonaws.com"]
default = true
  [[proxy.server.location]]
  path = "/"
  upstream = "unix:$UPSOCK"
CONF

case "$MODE" in
  callgrind)
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.proxy" \
      "$BIN" proxy --config "$TMP/stackinit.toml" > "$TMP/access.log" 2> "$TMP/valgrind.err" &
    ;;
  perf|syscalls)
    "$BIN" proxy --config "$TMP/stackinit.toml" > "$TMP/access.log" 2> "$TMP/stackinit.err" &
    ;;
esac
SI_PID=$!
PIDS+=($SI_PID)
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$P_SI/" && break; sleep 0.1; done

HOST='Host: ec2-1-2-3-4.us-west-2.compute.amazonaws.com'
# Warm up the pools, then count only the measured window.
wrk -t1 -c64 -d2s -H "$HOST" "http://127.0.0.1:$P_SI/" >/dev/null
case "$MODE" in
  callgrind)
    callgrind_control --zero "$SI_PID" >/dev/null
    out=$(wrk -t1 -c64 -d"${DURATION}s" -H "$HOST" "http://127.0.0.1:$P_SI/")
    callgrind_control --dump=measured "$SI_PID" >/dev/null
    ;;
  perf)
    perf record -F 2000 ${PERF_ARGS:-} -o "$OUT/perf.data.proxy" -p "$SI_PID" \
      -- sleep "$DURATION" 2> "$TMP/perf.err" &
    REC=$!
    out=$(wrk -t1 -c64 -d"${DURATION}s" -H "$HOST" "http://127.0.0.1:$P_SI/")
    wait "$REC" || true
    ;;
  syscalls)
    SYSCALLS=(recvfrom writev write read epoll_wait futex accept4)
    events=$(printf 'syscalls:sys_enter_%s,' "${SYSCALLS[@]}")
    perf stat -x, -e "${events%,}" -p "$SI_PID" -o "$TMP/syscalls.csv" -- sleep "$((DURATION + 1))" &
    REC=$!
    sleep 0.3
    out=$(wrk -t1 -c64 -d"${DURATION}s" -H "$HOST" "http://127.0.0.1:$P_SI/")
    wait "$REC" || true
    ;;
esac
requests=$(awk '/requests in/ {print $1}' <<<"$out")
echo "$out" | grep -E 'Requests/sec|requests in|Non-2xx|Socket errors' >&2 || true
if [[ $MODE == callgrind ]]; then
  sleep 1
  dump=$(ls -t "$OUT"/callgrind.out.proxy* | head -1)
  ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
  echo "callgrind: $requests requests, $ir Ir, $(python3 -c "print(round($ir/$requests))") Ir/request; dump $dump"
elif [[ $MODE == syscalls ]]; then
  awk -F, -v n="$requests" '/syscalls:sys_enter_/ {sub("syscalls:sys_enter_", "", $3);
    printf "%s %.3f/request (%s)\n", $3, $1 / n, $1}' "$TMP/syscalls.csv"
else
  echo "perf: $requests requests; data $OUT/perf.data.proxy"
fi
