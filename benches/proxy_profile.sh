#!/usr/bin/env bash
# CPU and system calls per proxied request of the stackinit proxy (or, for comparison, of tuned nginx), under
# callgrind (instruction counts: repeatable on a noisy, shared machine), perf (cpu-clock samples with call
# graphs) or strace (system calls per request). Same upstream as benches/proxy.sh: nginx `return 200` on a unix
# socket; over HTTPS, the same self-signed P-256 certificate, keep-alive.
#   benches/proxy_profile.sh callgrind [seconds] [http|https] -> Ir per request, and a callgrind.out for callgrind_annotate
#   benches/proxy_profile.sh perf [seconds] [http|https]      -> perf.data for `perf report`
#   benches/proxy_profile.sh strace [seconds] [http|https]    -> system calls per request, by name
#   benches/proxy_profile.sh syscalls [seconds] [http|https]  -> the same from perf's syscall tracepoints
#                                                                (no ptrace: the proxy runs at full speed)
# Build the binary with symbols first: cargo build --profile profiling --bin stackinit
# STACKINIT=path picks the binary (default target/profiling/stackinit). OUT=dir keeps the outputs (default /tmp).
# WORKERS=N sets the proxy's `workers` (default: left out, one per core).
# TARGET=nginx profiles tuned nginx instead (one worker, no master process: the same single process to measure).
# STEADY=1 leaves out wrk's connection set-up (its TLS handshakes): the window opens 1 s into the run, and the
# requests are counted from the access log, not wrk (with HTTPS under callgrind, 64 handshakes are a third of
# the TLS cost per request of a 10 s window, and nothing in a real keep-alive run).
set -euo pipefail

MODE=${1:-callgrind}
DURATION=${2:-10}
SCHEME=${3:-http}
TARGET=${TARGET:-stackinit}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${STACKINIT:-$ROOT/target/profiling/stackinit}
OUT=${OUT:-/tmp}
for tool in wrk /usr/sbin/nginx openssl; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[[ $TARGET == nginx || -x "$BIN" ]] || { echo "missing $BIN (cargo build --profile profiling --bin stackinit)" >&2; exit 1; }
case "$MODE" in
  callgrind) command -v valgrind >/dev/null || { echo "missing valgrind" >&2; exit 1; } ;;
  perf) command -v perf >/dev/null || { echo "missing perf" >&2; exit 1; } ;;
  strace) command -v strace >/dev/null || { echo "missing strace" >&2; exit 1; } ;;
  syscalls) command -v perf >/dev/null || { echo "missing perf" >&2; exit 1; } ;;
  *) echo "usage: $0 callgrind|perf|strace|syscalls [seconds] [http|https]" >&2; exit 2 ;;
esac
case "$SCHEME" in http|https) ;; *) echo "usage: $0 MODE [seconds] [http|https]" >&2; exit 2 ;; esac

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
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
NGINX_USER=""
[[ $(id -u) == 0 ]] && NGINX_USER="user root;"
nginx_conf() { # name, master_process, http-body
  mkdir -p "$TMP/$1/logs"
  cat > "$TMP/$1/nginx.conf" <<CONF
daemon off;
master_process $2;
$NGINX_USER
worker_processes 1;
pid $TMP/$1/nginx.pid;
error_log $TMP/$1/logs/error.log;
events { worker_connections 4096; }
http {
  client_body_temp_path $TMP/$1/cb; proxy_temp_path $TMP/$1/pt; fastcgi_temp_path $TMP/$1/ft;
  uwsgi_temp_path $TMP/$1/ut; scgi_temp_path $TMP/$1/st;
$3
}
CONF
}
nginx_conf up on "  access_log off;
  server { listen unix:$UPSOCK; location / { return 200 \"ok\\n\"; } }"
/usr/sbin/nginx -p "$TMP/up" -c "$TMP/up/nginx.conf" &
PIDS+=($!)

if [[ $TARGET == nginx ]]; then
  LISTEN="127.0.0.1:$P_SI"
  # TLS 1.3 as Debian's nginx.conf enables it (nginx 1.22's own default stops at 1.2): the suite rustls gets too.
  [[ $SCHEME == https ]] && LISTEN="$LISTEN ssl; ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $TMP/cert.pem; ssl_certificate_key $TMP/key.pem"
  nginx_conf tuned off "  access_log $TMP/tuned/logs/access.log;
  upstream app { server unix:$UPSOCK; keepalive 64; }
  server { listen $LISTEN;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header Host \$http_host; proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme; } }"
  COMMAND=(/usr/sbin/nginx -p "$TMP/tuned" -c "$TMP/tuned/nginx.conf")
else
  LISTENERS="listen = [\"127.0.0.1:$P_SI\"]"
  [[ $SCHEME == https ]] && LISTENERS="listen = []
[proxy.tls]
listen = [\"127.0.0.1:$P_SI\"]
cert = \"$TMP/cert.pem\"
key = \"$TMP/key.pem\""
  cat > "$TMP/stackinit.toml" <<CONF
[init]
logs_dir = "$TMP"
[proxy]
${WORKERS:+workers = $WORKERS}
$LISTENERS
[[proxy.server]]
server_name = ["*.compute.amazonaws.com"]
default = true
  [[proxy.server.location]]
  path = "/"
  upstream = "unix:$UPSOCK"
CONF
  COMMAND=("$BIN" proxy --config "$TMP/stackinit.toml")
fi

case "$MODE" in
  callgrind)
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.proxy" \
      "${COMMAND[@]}" > "$TMP/access.log" 2> "$TMP/valgrind.err" &
    ;;
  *)
    "${COMMAND[@]}" > "$TMP/access.log" 2> "$TMP/proxy.err" &
    ;;
esac
SI_PID=$!
PIDS+=($SI_PID)
URL="$SCHEME://127.0.0.1:$P_SI/"
for _ in $(seq 200); do curl -sk -o /dev/null "$URL" && break; sleep 0.1; done

HOST='Host: ec2-1-2-3-4.us-west-2.compute.amazonaws.com'
LOG="$TMP/access.log"
[[ $TARGET == nginx ]] && LOG="$TMP/tuned/logs/access.log"
# Warm up the pools, then count only the measured window.
wrk -t1 -c64 -d2s -H "$HOST" "$URL" >/dev/null
start() { # the measured window opens
  case "$MODE" in
    callgrind) callgrind_control --zero "$SI_PID" >/dev/null ;;
    perf)
      perf record -F 2000 ${PERF_ARGS:-} -o "$OUT/perf.data.proxy" -p "$SI_PID" 2> "$TMP/perf.err" &
      REC=$! ;;
    strace)
      # -f attaches every thread of the running process; the counts are written when strace is interrupted.
      strace -c -f -o "$OUT/strace.proxy" -p "$SI_PID" 2> "$TMP/strace.err" &
      REC=$!
      # Attached before wrk starts (with STEADY, it counts from here, as the access log does).
      [[ -n "${STEADY:-}" ]] || sleep 1 ;;
    syscalls)
      local events
      events=$(printf 'syscalls:sys_enter_%s,' recvfrom sendto writev write read epoll_wait futex accept4)
      perf stat -x, -e "${events%,}" -p "$SI_PID" -o "$TMP/syscalls.csv" 2> "$TMP/perf.err" &
      REC=$!
      sleep 0.3 ;;
  esac
}
finish() { # and closes
  case "$MODE" in
    callgrind) callgrind_control --dump=measured "$SI_PID" >/dev/null ;;
    *) kill -INT "$REC"; wait "$REC" || true ;;
  esac
}
if [[ -n "${STEADY:-}" ]]; then
  wrk -t1 -c64 -d"$((DURATION + 3))s" -H "$HOST" "$URL" > "$TMP/wrk.out" &
  WRK=$!
  sleep 1
  before=$(wc -l < "$LOG")
  start
  sleep "$DURATION"
  finish
  requests=$(( $(wc -l < "$LOG") - before ))
  wait "$WRK"
  out=$(cat "$TMP/wrk.out")
else
  start
  out=$(wrk -t1 -c64 -d"${DURATION}s" -H "$HOST" "$URL")
  finish
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
fi
echo "$out" | grep -E 'Requests/sec|requests in|Non-2xx|Socket errors' >&2 || true
case "$MODE" in
  callgrind)
    sleep 1
    dump=$(ls -t "$OUT"/callgrind.out.proxy* | head -1)
    ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
    echo "callgrind: $TARGET $SCHEME, $requests requests, $ir Ir, $(python3 -c "print(round($ir/$requests))") Ir/request; dump $dump"
    ;;
  perf) echo "perf: $TARGET $SCHEME, $requests requests; data $OUT/perf.data.proxy" ;;
  strace)
    echo "strace: $TARGET $SCHEME, $requests requests; system calls per request:"
    # Columns: % time, seconds, usecs/call, calls, [errors,] syscall (the total line too).
    awk -v n="$requests" '$4 ~ /^[0-9]+$/ && $NF ~ /^[a-z_0-9]+$/ { printf "  %-16s %8.3f\n", $NF, $4 / n }' \
      "$OUT/strace.proxy"
    ;;
  syscalls)
    echo "syscalls: $TARGET $SCHEME, $requests requests; system calls per request:"
    awk -F, -v n="$requests" '/syscalls:sys_enter_/ { sub("syscalls:sys_enter_", "", $3);
      printf "  %-16s %8.3f\n", $3, $1 / n }' "$TMP/syscalls.csv"
    ;;
esac
