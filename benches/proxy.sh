#!/usr/bin/env bash
# Proxy throughput on loopback with wrk, against the same upstream: nginx `return 200` on a unix socket (and on
# TCP for the direct run), which is not the bottleneck.
#   1. direct to the upstream (the limit)
#   2. nginx, seed config: proxy_pass http://unix:..., no upstream keep-alive
#   3. nginx tuned: upstream block with keepalive 64, proxy_http_version 1.1, Connection "", worker_processes auto
#   4. the stackinit proxy (standalone mode, same upstream socket, default workers: one per core)
#   5. HAProxy, as the other fast proxy a user might pick: HTTP mode, one thread per core, `http-reuse always`
#      to the same unix socket, the same forwarded headers, its access log (httplog) on stdout to a file
#   6. the ceiling: nginx's stream module relaying bytes between each client connection and an upstream
#      connection of its own. It makes the same socket calls per request as any keep-alive proxy and does no HTTP
#      work and no logging, so no HTTP proxy on this box can beat its rps or its CPU per request.
# Every proxy writes an access log, as the seed does. Tuned nginx and stackinit are then compared in ROUNDS
# interleaved rounds (nginx, stackinit, nginx, stackinit, ...: both see the same machine load), over plain HTTP
# and over HTTPS (the same self-signed P-256 certificate: rustls against nginx's OpenSSL, keep-alive; both offer
# TLS 1.3, as Debian's nginx.conf has nginx do, and the suite each negotiates with wrk's OpenSSL is printed), and by
# memory: RSS (and PSS, which counts pages nginx's processes share once) at idle and holding IDLE_CONNS
# keep-alive connections that have each made one request.
# Usage: benches/proxy.sh [seconds] [connections] [wrk threads]. ROUNDS=3, IDLE_CONNS=10000 (capped by the open
# file limit), WORKERS=N sets stackinit's `workers` (default: left out). On 2 cores wrk's own threads compete
# with the proxies: compare -t1 (wrk leaves a core) with -t2.
# STACKINIT=path/to/stackinit picks the binary (default: target/release if built, else target/debug).
set -euo pipefail

DURATION=${1:-10}
CONNS=${2:-64}
THREADS=${3:-2}
ROUNDS=${ROUNDS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${STACKINIT:-}
if [[ -z "$BIN" ]]; then
  if [[ -x "$ROOT/target/release/stackinit" ]]; then BIN="$ROOT/target/release/stackinit"; else BIN="$ROOT/target/debug/stackinit"; fi
fi
for tool in wrk /usr/sbin/nginx /usr/sbin/haproxy openssl; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
[[ -e $STREAM_MODULE ]] || { echo "missing $STREAM_MODULE (apt-get install libnginx-mod-stream)" >&2; exit 1; }
[[ -x "$BIN" ]] || { echo "missing $BIN (cargo build first)" >&2; exit 1; }
# Each held connection costs the client a file and the proxy one (stackinit keeps 2 per connection in its budget).
NOFILE=$(ulimit -n)
IDLE_CONNS=${IDLE_CONNS:-10000}
(( IDLE_CONNS > (NOFILE - 2000) / 2 )) && IDLE_CONNS=$(( (NOFILE - 2000) / 2 ))

TMP=$(mktemp -d /tmp/stackinit-proxy-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_UP=$(port); P_SEED=$(port); P_TUNED=$(port); P_SI=$(port); P_TUNED_TLS=$(port); P_SI_TLS=$(port); P_RELAY=$(port); P_HAPROXY=$(port)
UPSOCK="$TMP/up.sock"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null

# As root, nginx workers would switch to nobody and lose access to the 0700 temp dir and its socket.
NGINX_USER=""
[[ $(id -u) == 0 ]] && NGINX_USER="user root;"
nginx_conf() { # name, workers, http-body, [main-context lines]
  mkdir -p "$TMP/$1/logs"
  cat > "$TMP/$1/nginx.conf" <<CONF
${4:-}
daemon off;
master_process on;
$NGINX_USER
worker_processes $2;
worker_rlimit_nofile $NOFILE;
pid $TMP/$1/nginx.pid;
error_log $TMP/$1/logs/error.log;
events { worker_connections $NOFILE; }
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
  server { listen 127.0.0.1:$P_TUNED default_server; listen 127.0.0.1:$P_TUNED_TLS ssl default_server;
    ssl_certificate $TMP/cert.pem; ssl_certificate_key $TMP/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    server_name *.compute.amazonaws.com;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; $PROXY_PARAMS } }"
nginx_conf relay auto "" "load_module $STREAM_MODULE;
stream { server { listen 127.0.0.1:$P_RELAY; proxy_pass unix:$UPSOCK; } }"
cat > "$TMP/haproxy.cfg" <<CONF
global
  nbthread $(nproc)
  maxconn $(( (NOFILE - 100) / 2 ))
  log stdout format raw local0
defaults
  mode http
  log global
  option httplog
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend web
  bind 127.0.0.1:$P_HAPROXY
  option forwardfor
  http-request set-header X-Real-IP %[src]
  http-request set-header X-Forwarded-Proto http
  default_backend app
backend app
  http-reuse always
  server up $UPSOCK
CONF
/usr/sbin/haproxy -db -f "$TMP/haproxy.cfg" > "$TMP/haproxy-access.log" 2> "$TMP/haproxy.err" &
PIDS+=($!)

WORKERS_LINE=""
[[ -n "${WORKERS:-}" ]] && WORKERS_LINE="workers = $WORKERS"
cat > "$TMP/stackinit.toml" <<CONF
[init]
logs_dir = "$TMP"
[proxy]
listen = ["127.0.0.1:$P_SI"]
$WORKERS_LINE
[proxy.tls]
listen = ["127.0.0.1:$P_SI_TLS"]
cert = "$TMP/cert.pem"
key = "$TMP/key.pem"
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

for p in $P_UP $P_SEED $P_TUNED $P_SI $P_RELAY $P_HAPROXY; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.05; done
done
for p in $P_TUNED_TLS $P_SI_TLS; do
  for _ in $(seq 100); do curl -sk -o /dev/null "https://127.0.0.1:$p/" && break; sleep 0.05; done
done

# What an OpenSSL client (wrk's library, its default offer) negotiates with each: the same protocol and suite.
negotiated() { openssl s_client -connect "127.0.0.1:$1" </dev/null 2>/dev/null | awk '/^New,/ {print $2, $5}'; }
echo "HTTPS negotiated: tuned nginx $(negotiated "$P_TUNED_TLS"), stackinit $(negotiated "$P_SI_TLS")" >&2

declare -A RPS P50 P99 CPU PIDOF
SI_REQUESTS=0
# CPU time (clock ticks), user and system, of a process (all its threads) and its children (nginx master +
# workers).
ticks() {
  local user=0 sys=0 p u s
  for p in $1 $(pgrep -P "$1" || true); do
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat")
    user=$(( user + u )); sys=$(( sys + s ))
  done
  echo "$user $sys"
}
# Resident and proportional memory (KiB) of a process and its children.
memory() {
  local rss=0 pss=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    rss=$(( rss + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status") ))
    pss=$(( pss + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup") ))
  done
  echo "$(( rss / 1024 )).$(( rss % 1024 * 10 / 1024 )) / $(( pss / 1024 )).$(( pss % 1024 * 10 / 1024 ))"
}
run() { # key, process label, url
  local out before after
  before=$(ticks "${PIDOF[$2]}")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: ec2-1-2-3-4.us-west-2.compute.amazonaws.com' "$3")
  RPS[$1]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  P50[$1]=$(awk '$1=="50%" {print $2}' <<<"$out")
  P99[$1]=$(awk '$1=="99%" {print $2}' <<<"$out")
  after=$(ticks "${PIDOF[$2]}")
  local requests; requests=$(awk '/requests in/ {print $1}' <<<"$out")
  [[ $2 == stackinit ]] && SI_REQUESTS=$(( SI_REQUESTS + requests ))
  # Per request: the total, then user + system (the kernel's share is most of a proxy's cost).
  CPU[$1]=$(python3 -c "
b, a, hz, n = '$before'.split(), '$after'.split(), $(getconf CLK_TCK), $requests
u, s = ((int(a[i]) - int(b[i])) / hz / n * 1e6 for i in (0, 1))
print(f'{u + s:.1f} ({u:.1f}+{s:.1f})')")
  local errors; errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  [[ -n "$errors" ]] && echo "  $1: $errors" >&2
  return 0
}
ratio() { python3 -c "print(f'{float($1)/float($2):.2f}')"; }
row() { # key
  printf '%-16s %10s %10s %10s %10s %10s %18s\n' "$1" "${RPS[$1]}" "${P50[$1]}" "${P99[$1]}" \
    "$(ratio "${RPS[$1]}" "${RPS[seed]}")" "$(ratio "${RPS[$1]}" "${RPS[tuned1]}")" "${CPU[$1]}"
}
PIDOF[direct]=${PIDS[0]}; PIDOF[seed]=${PIDS[1]}; PIDOF[tuned]=${PIDS[2]}; PIDOF[relay]=${PIDS[3]}
PIDOF[haproxy]=${PIDS[4]}; PIDOF[stackinit]=$SI_PID
WORKER_THREADS=$(ls "/proc/$SI_PID/task" | wc -l)
echo "wrk -t$THREADS -c$CONNS -d${DURATION}s on $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg);" \
  "stackinit: $BIN ($WORKER_THREADS threads)" >&2
IDLE_TUNED=$(memory "${PIDOF[tuned]}"); IDLE_SI=$(memory "$SI_PID"); IDLE_HAPROXY=$(memory "${PIDOF[haproxy]}")

URL="http://127.0.0.1"
run direct direct "$URL:$P_UP/"
run seed seed "$URL:$P_SEED/"
for r in $(seq "$ROUNDS"); do
  run "tuned$r" tuned "$URL:$P_TUNED/"
  run "stackinit$r" stackinit "$URL:$P_SI/"
  run "haproxy$r" haproxy "$URL:$P_HAPROXY/"
  run "relay$r" relay "$URL:$P_RELAY/"
done
for r in $(seq "$ROUNDS"); do
  run "tls-tuned$r" tuned "https://127.0.0.1:$P_TUNED_TLS/"
  run "tls-stackinit$r" stackinit "https://127.0.0.1:$P_SI_TLS/"
done

printf '%-16s %10s %10s %10s %10s %10s %18s\n' config rps p50 p99 "vs seed" "vs tuned1" "cpu us/req (usr+sys)"
row direct; row seed
for r in $(seq "$ROUNDS"); do row "tuned$r"; row "stackinit$r"; row "haproxy$r"; row "relay$r"; done
for r in $(seq "$ROUNDS"); do row "tls-tuned$r"; row "tls-stackinit$r"; done
# Each round's ratio against the nginx run just before it, then the median and the spread.
summary() { # label, nginx key prefix, stackinit key prefix
  local ratios=() r
  for r in $(seq "$ROUNDS"); do ratios+=("$(ratio "${RPS[$3$r]}" "${RPS[$2$r]}")"); done
  python3 - "$1" "${ratios[@]}" <<'PY'
import statistics, sys
label, values = sys.argv[1], [float(v) for v in sys.argv[2:]]
print(f"{label} / tuned nginx rps per round {' '.join(f'{v:.2f}' for v in values)}; "
      f"median {statistics.median(values):.2f}, spread {min(values):.2f}-{max(values):.2f}")
PY
}
summary "HTTP: stackinit" tuned stackinit
summary "HTTP: HAProxy" tuned haproxy
summary "HTTP: the byte relay (ceiling)" tuned relay
summary "HTTPS: stackinit" tls-tuned tls-stackinit

# Memory holding IDLE_CONNS keep-alive connections, each after one request.
hold() { # port; prints once every connection is open, then holds them until killed
  python3 "$ROOT/benches/hold_keepalive.py" "$1" "$IDLE_CONNS" "$TMP/held.$1" &
  HOLDER=$!
  for _ in $(seq 600); do [[ -e "$TMP/held.$1" ]] && break; sleep 0.1; done
  [[ -e "$TMP/held.$1" ]] || echo "holding $IDLE_CONNS connections on :$1 failed" >&2
}
hold "$P_TUNED"; sleep 2; HELD_TUNED=$(memory "${PIDOF[tuned]}"); kill "$HOLDER"; wait "$HOLDER" 2>/dev/null || true
hold "$P_SI"; sleep 2; HELD_SI=$(memory "$SI_PID"); kill "$HOLDER"; wait "$HOLDER" 2>/dev/null || true
hold "$P_HAPROXY"; sleep 2; HELD_HAPROXY=$(memory "${PIDOF[haproxy]}"); kill "$HOLDER"; wait "$HOLDER" 2>/dev/null || true
printf '%-16s %22s %30s\n' "memory MiB" "idle RSS / PSS" "$IDLE_CONNS keep-alive RSS / PSS"
# KiB of RSS per held connection: what each idle keep-alive connection costs above the process at idle.
per_conn() { awk -v idle="${1%% *}" -v held="${2%% *}" -v n="$IDLE_CONNS" 'BEGIN {printf "%.1f", (held - idle) * 1024 / n}'; }
printf '%-16s %22s %30s %14s\n' "tuned nginx" "$IDLE_TUNED" "$HELD_TUNED" "$(per_conn "$IDLE_TUNED" "$HELD_TUNED") KiB/conn"
printf '%-16s %22s %30s %14s\n' "stackinit" "$IDLE_SI" "$HELD_SI" "$(per_conn "$IDLE_SI" "$HELD_SI") KiB/conn"
printf '%-16s %22s %30s %14s\n' "HAProxy" "$IDLE_HAPROXY" "$HELD_HAPROXY" "$(per_conn "$IDLE_HAPROXY" "$HELD_HAPROXY") KiB/conn"
awk '/VmHWM/ {printf "stackinit proxy %s %s %s\n", $1, $2, $3}' "/proc/$SI_PID/status"
sleep 0.5
echo "stackinit: access log lines $(wc -l < "$TMP/stackinit-access.log"), requests wrk saw answered" \
  "$SI_REQUESTS + $IDLE_CONNS held + 2 probes (the log also has those cut off at each run's end)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
