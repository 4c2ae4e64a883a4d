#!/usr/bin/env bash
# Memory per idle HTTP/1 keep-alive client connection of the stackinit proxy (standalone mode, as in
# benches/proxy.sh: one location upstream to nginx `return 200` on a unix socket). A client opens N connections,
# each makes one request and then idles; the proxy's RSS is read before and while they are held, and the
# difference is given per held connection. Short and repeatable: no wrk run before (benches/proxy.sh holds its
# connections after its throughput rounds, so its figure also carries what those rounds left behind).
#   benches/proxy_idle_memory.sh [connections] [rounds]   (default 2000 connections, 2 rounds: the second shows
#                                                          what a proxy that has held them before costs again)
# STACKINIT=path picks the binary (default target/release, else target/profiling). WORKERS=N sets `workers`.
# HEAPTRACK=1 runs the proxy under heaptrack and keeps its output in OUT (default /tmp).
set -euo pipefail

CONNS=${1:-2000}
ROUNDS=${2:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${STACKINIT:-}
if [[ -z "$BIN" ]]; then
  if [[ -x "$ROOT/target/release/stackinit" ]]; then BIN="$ROOT/target/release/stackinit"; else BIN="$ROOT/target/profiling/stackinit"; fi
fi
OUT=${OUT:-/tmp}
for tool in /usr/sbin/nginx python3 curl; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
[[ -x "$BIN" ]] || { echo "missing $BIN (cargo build --release --bin stackinit)" >&2; exit 1; }
NOFILE=$(ulimit -n)
(( CONNS > (NOFILE - 200) / 2 )) && CONNS=$(( (NOFILE - 200) / 2 ))

TMP=$(mktemp -d /tmp/stackinit-idle-memory.XXXXXX)
PIDS=()
SI_PID=""
cleanup() {
  # The proxy first, and its end awaited: under heaptrack it is not this script's child, and heaptrack writes
  # its output as the proxy exits.
  if [[ -n "$SI_PID" ]]; then
    kill "$SI_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SI_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

P_SI=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
UPSOCK="$TMP/up.sock"
NGINX_USER=""
[[ $(id -u) == 0 ]] && NGINX_USER="user root;"
mkdir -p "$TMP/up/logs"
cat > "$TMP/up/nginx.conf" <<CONF
daemon off;
master_process off;
$NGINX_USER
worker_processes 1;
pid $TMP/up/nginx.pid;
error_log $TMP/up/logs/error.log;
events { worker_connections 1024; }
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
RUN=()
[[ -n "${HEAPTRACK:-}" ]] && RUN=(heaptrack -o "$OUT/heaptrack.stackinit")
"${RUN[@]}" "$BIN" proxy --config "$TMP/stackinit.toml" > "$TMP/access.log" 2> "$TMP/stackinit.err" &
PIDS+=($!)
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$P_SI/" && break; sleep 0.05; done
SI_PID=$(pgrep -n -f "proxy --config $TMP/stackinit.toml" || true)
[[ -n "$SI_PID" ]] || { echo "the proxy did not start" >&2; cat "$TMP/stackinit.err" >&2; exit 1; }

rss() { awk '/^VmRSS/ {print $2}' "/proc/$SI_PID/status"; }
hold() { # prints once every connection is open, then holds them until killed
  python3 "$ROOT/benches/hold_keepalive.py" "$P_SI" "$CONNS" "$TMP/held" &
  HOLDER=$!
  for _ in $(seq 600); do [[ -e "$TMP/held" ]] && break; sleep 0.1; done
  [[ -e "$TMP/held" ]] || { echo "holding $CONNS connections failed" >&2; exit 1; }
}

printf '%-6s %12s %12s %22s\n' round "idle KiB" "held KiB" "KiB per held conn"
for round in $(seq "$ROUNDS"); do
  rm -f "$TMP/held"
  sleep 0.5
  BEFORE=$(rss)
  hold
  # Past the quiet time after which the proxy parks a connection (src/proxy/park.rs: 100 ms; up to a second for
  # one that was busy), so that every held connection is as idle as it would be.
  sleep 2.5
  HELD=$(rss)
  kill "$HOLDER"; wait "$HOLDER" 2>/dev/null || true
  printf '%-6s %12s %12s %22s\n' "$round" "$BEFORE" "$HELD" \
    "$(awk -v a="$BEFORE" -v b="$HELD" -v n="$CONNS" 'BEGIN {printf "%.2f", (b - a) / n}')"
done
