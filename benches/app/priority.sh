#!/usr/bin/env bash
# What the proxy's CPU priority buys when the app saturates the machine (issue 18).
#
# The AMI's stack (3 replicas forked from a template, benches/app/common.sh) runs as `stackinit run`, which
# gives its proxy nice -5 and, under kernel.sched_autogroup_enabled=1, sets the proxy's autogroup to -5 too
# (every service is its own session, so without that its nice would do nothing against the workers).
# `wrk -t2 -c$CONNS` on / keeps the workers and both cores busy while benches/app/probe.py asks /healthz
# through the proxy on one keep-alive connection, back to back, each request's own latency recorded: a load
# balancer's health check. Rounds alternate the proxy's autogroup between -5 (the default) and 0 (as if
# the priority did nothing) on the same running stack; the summary gives the median and range per setting.
#
# Usage: [ROUNDS=3] benches/app/priority.sh [seconds] [connections]. Needs root (the autogroup and the
# priority), autogroups enabled, wrk, the venv (.cache/venv or STACKINIT_TEST_VENV) and a release build
# (STACKINIT=path picks another binary). KEEP=1 keeps the temp dir.
set -euo pipefail

DURATION=${1:-12}
CONNS=${2:-16}
ROUNDS=${ROUNDS:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
APP=$ROOT/app
VENV=${STACKINIT_TEST_VENV:-$ROOT/.cache/venv}
BIN=${STACKINIT:-$ROOT/target/release/stackinit}
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "benches/app/priority.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root: the proxy's priority and its autogroup are set as root"
[[ $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null) == 1 ]] ||
  die "kernel.sched_autogroup_enabled is not 1: this measures the autogroup's nice"
for tool in wrk curl python3; do command -v "$tool" >/dev/null || die "missing $tool"; done
[[ -x "$VENV/bin/python" ]] || die "no venv at $VENV (run scripts/test once, or set STACKINIT_TEST_VENV)"
[[ -x "$BIN" ]] || die "missing $BIN (cargo build --release)"

# shellcheck source=benches/app/common.sh
source "$ROOT/benches/app/common.sh"
bench_dir stackinit-priority-bench

SELECTED=si-forked
PORT=$(port)
si_forked_stack "$PORT"
wait_ok "$PORT" /healthz
wait_ok "$PORT" /
PROXY=$("$BIN" --socket "$TMP/si-forked/control.sock" status --json | python3 -c \
  'import json,sys; print(next(s["pid"] for s in json.load(sys.stdin)["services"] if s["name"]=="proxy"))')
[[ -r /proc/$PROXY/autogroup ]] || die "the proxy (pid $PROXY) has no autogroup"
echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); proxy pid $PROXY, $(cat "/proc/$PROXY/autogroup")," \
  "nice $(ps -o ni= -p "$PROXY" | tr -d ' '); wrk -t2 -c$CONNS on /, probe on /healthz, ${DURATION}s x $ROUNDS rounds per setting" >&2

RESULTS=$TMP/results
: > "$RESULTS"
printf '%-6s %-9s %7s %8s %8s %8s %8s %8s\n' round autogroup wrk-rps probes p50 p99 p99.9 max
for ((r = 1; r <= ROUNDS; r++)); do
  for nice in -5 0; do
    echo "$nice" > "/proc/$PROXY/autogroup"
    tag=$TMP/$r.$nice
    wrk -t2 -c"$CONNS" -d"$((DURATION + 2))s" "http://127.0.0.1:$PORT/" > "$tag.wrk" &
    load=$!
    sleep 1 # the workers are busy before the first probe
    python3 "$ROOT/benches/app/probe.py" "127.0.0.1:$PORT" /healthz "$DURATION" "$tag.probe"
    wait "$load"
    read -r count p50 p99 p999 max < <(python3 "$ROOT/benches/app/latency.py" probe "$tag.probe")
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$tag.wrk")
    printf '%-6s %-9s %7s %8s %8s %8s %8s %8s\n' "$r" "$nice" "$rps" "$count" "$p50" "$p99" "$p999" "$max"
    # latency.py summary reads "run stack rps p50 p99 p99.9 max"; the setting stands for the stack.
    echo "$r nice$nice $rps $p50 $p99 $p999 $max" >> "$RESULTS"
  done
done
echo "-5" > "/proc/$PROXY/autogroup"
echo
echo "/healthz through the proxy (ms): median (min–max) over $ROUNDS rounds per setting"
python3 "$ROOT/benches/app/latency.py" summary "$RESULTS" nice0
echo "load after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
