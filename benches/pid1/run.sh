#!/usr/bin/env bash
# PID 1 benchmark (issue 3): reaping 1000 orphans, stackinit against tini, in the same run; and the RSS
# of stackinit as PID 1 with the built-in demo stack (proxy + 3 workers).
#
#   benches/pid1/run.sh [ROUNDS]      (as root: it makes PID namespaces with unshare)
#
# Each round runs benches/pid1/orphans.py under each PID 1 in a fresh PID namespace; the figure is the
# median time from the last orphan's creation until no zombie is left. Uses target/release/stackinit if present
# (STACKINIT=path to override). Cleans up what it starts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROUNDS=${1:-5}
BIN=${STACKINIT:-target/release/stackinit}
[ -x "$BIN" ] || BIN=target/debug/stackinit
[ -x "$BIN" ] || { echo "build stackinit first (cargo build --release)"; exit 1; }
command -v tini >/dev/null || { echo "tini not installed (apt-get install tini)"; exit 1; }
BIN=$(realpath "$BIN")
TMP=$(mktemp -d /tmp/stackinit-bench-pid1.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
SCRIPT=$(realpath benches/pid1/orphans.py)

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

run_tini() {
    unshare --pid --fork --mount-proc tini -s -- python3 "$SCRIPT" 1000 "$1" >/dev/null
}

run_stackinit() {
    local out=$1 dir=$TMP/si.$RANDOM
    mkdir -p "$dir"
    cat >"$dir/c.toml" <<TOML
[init]
logs_dir = "$dir/logs"
control_socket = "$dir/c.sock"
[service.orphans]
command = ["python3", "$SCRIPT", "1000", "$out"]
oneshot = true
TOML
    STACKINIT_NO_REBOOT=1 unshare --pid --fork --mount-proc "$BIN" init --config "$dir/c.toml" >/dev/null 2>&1 &
    local p=$!
    pids+=("$p")
    for _ in $(seq 600); do [ -s "$out" ] && break; sleep 0.05; done
    kill -TERM "$(pgrep -P "$p" | head -1)" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

t_tini=(); t_si=()
for r in $(seq "$ROUNDS"); do
    run_tini "$TMP/tini.$r"; t_tini+=("$(cat "$TMP/tini.$r")")
    run_stackinit "$TMP/si.$r.out"; t_si+=("$(cat "$TMP/si.$r.out")")
done
mt=$(printf '%s\n' "${t_tini[@]}" | median)
ms=$(printf '%s\n' "${t_si[@]}" | median)

# RSS of stackinit as PID 1 of a namespace with the built-in demo stack.
dir=$TMP/demo; mkdir -p "$dir"
"$BIN" config --default | sed "s|^logs_dir = .*|logs_dir = \"$dir/logs\"|; s|^control_socket = .*|control_socket = \"$dir/c.sock\"|; s|unix:[^\"]*/demo.sock|unix:$dir/demo.sock|; s|127.0.0.1:8080|127.0.0.1:18080|" >"$dir/c.toml"
STACKINIT_NO_REBOOT=1 unshare --pid --fork --mount-proc "$BIN" init --config "$dir/c.toml" >/dev/null 2>&1 &
p=$!; pids+=("$p")
for _ in $(seq 200); do curl -fs http://127.0.0.1:18080/healthz >/dev/null 2>&1 && break; sleep 0.05; done
sleep 1
init_pid=$(pgrep -P "$p" | head -1)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$init_pid/status")
anon=$(awk '/RssAnon/ {print $2}' "/proc/$init_pid/status")
kill -TERM "$init_pid"; wait "$p" 2>/dev/null || true

printf '\nPID 1 benchmark, %s rounds, one run on this machine (`benches/pid1/run.sh`), binary %s\n\n' "$ROUNDS" "$BIN"
printf '| figure | stackinit | tini | tini ÷ stackinit |\n| --- | ---: | ---: | ---: |\n'
awk -v s="$ms" -v t="$mt" 'BEGIN {printf "| 1000 orphans: last created → all reaped, median (ms) | %.1f | %.1f | %.2f× |\n", s*1000, t*1000, t/s}'
printf '| RSS of PID 1 with the demo stack (proxy + 3 workers) | %s KiB (%s KiB private) | - | - |\n' "$rss" "$anon"
