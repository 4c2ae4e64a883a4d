#!/usr/bin/env bash
# Idle wakeups of init and the proxy after traffic (issue 16: the proxy's metrics reach init without polling).
#
#   benches/metrics_idle.sh              # uses target/release/stackinit, else target/debug/stackinit
#   REQUESTS=200 IDLE=30 benches/metrics_idle.sh
#
# Starts `stackinit run` with the built-in demo worker behind the proxy (on loopback, in a temp dir), sends
# REQUESTS requests through the proxy, waits 3 s (the proxy reports within about a second of its last change),
# checks that /metrics has the proxy's count, then counts the context switches (all threads) of init and of
# the proxy over IDLE seconds. Both must stay at 0: the figure is printed, and the script fails otherwise.
# It cleans up what it started (by pid) and its temp dir, also on failure or Ctrl-C. Needs curl and python3.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
REQUESTS=${REQUESTS:-100}
IDLE=${IDLE:-10}
if [ -n "${STACKINIT:-}" ]; then
    BIN=$STACKINIT
elif [ -x "$ROOT/target/release/stackinit" ]; then
    BIN=$ROOT/target/release/stackinit
elif [ -x "$ROOT/target/debug/stackinit" ]; then
    BIN=$ROOT/target/debug/stackinit
else
    echo "metrics_idle.sh: no stackinit binary: cargo build --release (or set STACKINIT=path)" >&2
    exit 2
fi
command -v curl >/dev/null || { echo "metrics_idle.sh: curl not found" >&2; exit 2; }

TMP=$(mktemp -d /tmp/stackinit-metrics-idle.XXXXXX)
# The proxy runs as nobody: it must reach the app socket in here.
chmod 755 "$TMP"
INIT=
cleanup() {
    if [ -n "$INIT" ] && [ -d "/proc/$INIT" ]; then
        kill -TERM "$INIT" 2>/dev/null || true
        for _ in $(seq 100); do [ -d "/proc/$INIT" ] || break; sleep 0.1; done
        kill -KILL "$INIT" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$TMP/stackinit.toml" <<EOF
[init]
logs_dir = "$TMP/logs"
control_socket = "$TMP/control.sock"

[service.app]
command = ["stackinit", "demo-worker"]
listen = "unix:$TMP/app.sock"
start_secs = "100ms"

[proxy]
listen = ["127.0.0.1:$PORT"]

[[proxy.server]]
server_name = ["idle.test"]
  [[proxy.server.location]]
  path = "/"
  upstream = "app"
EOF

"$BIN" run --config "$TMP/stackinit.toml" 2>"$TMP/stackinit.err" &
INIT=$!
for _ in $(seq 300); do
    curl -fs -o /dev/null -H 'Host: idle.test' "http://127.0.0.1:$PORT/" && break
    sleep 0.1
done
curl -fsS -o /dev/null -H 'Host: idle.test' "http://127.0.0.1:$PORT/" || {
    echo "metrics_idle.sh: the proxy never served the demo worker:" >&2; cat "$TMP/stackinit.err" >&2; exit 1; }
for _ in $(seq "$REQUESTS"); do
    curl -fs -o /dev/null -H 'Host: idle.test' "http://127.0.0.1:$PORT/"
done
sleep 3
METRICS=$(curl -fs --unix-socket "$TMP/control.sock" http://stackinit/metrics)
COUNTED=$(echo "$METRICS" | awk -F'} ' '/^stackinit_proxy_requests_total\{server="idle.test",upstream="app",class="2xx"/ {print $2}')
[ -n "$COUNTED" ] && [ "$COUNTED" -ge "$REQUESTS" ] || { echo "metrics_idle.sh: /metrics has no proxy count ($COUNTED)" >&2; exit 1; }

PROXY=
for child in $(cat /proc/"$INIT"/task/*/children); do
    if tr '\0' ' ' <"/proc/$child/cmdline" | grep -q ' proxy'; then PROXY=$child; fi
done
[ -n "$PROXY" ] || { echo "metrics_idle.sh: no proxy process under init $INIT" >&2; exit 1; }
switches() {
    cat /proc/"$1"/task/*/status | awk '/^(non)?voluntary_ctxt_switches/ {s += $2} END {print s}'
}
init0=$(switches "$INIT"); proxy0=$(switches "$PROXY")
sleep "$IDLE"
init1=$(switches "$INIT"); proxy1=$(switches "$PROXY")
echo "after $REQUESTS requests ($COUNTED counted in /metrics), over $IDLE s idle:"
echo "  init  (pid $INIT):  $((init1 - init0)) context switches"
echo "  proxy (pid $PROXY): $((proxy1 - proxy0)) context switches"
[ $((init1 - init0)) -eq 0 ] && [ $((proxy1 - proxy0)) -eq 0 ]
