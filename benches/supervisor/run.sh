#!/usr/bin/env bash
# Supervisor benchmark (issue 2): stackinit against supervisord, same machine, same run.
#
#   benches/supervisor/run.sh            # uses target/release/stackinit, else target/debug/stackinit
#   STACKINIT=/path/to/stackinit benches/supervisor/run.sh
#   SERVICES=100 KILLS=20 IDLE=10 benches/supervisor/run.sh
#
# Each supervisor runs SERVICES programs (`/bin/sleep`) from its own config in a temp dir, and
# measure.py reports, per supervisor:
#   (a) crash -> restart: median of KILLS `kill -9` of one service, until a new process of it has
#       exec'd (watched in /proc: polling supervisord's API would wake its loop and hide its tick);
#   (b) RSS of the supervisor process (supervisord: its python process) with SERVICES services;
#   (c) time from launch to all SERVICES `running` by the supervisor's own account (its API polled
#       every 50 ms, so +-50 ms), with a start period of 0 s and of 1 s (the default of both
#       supervisord's startsecs and stackinit's start_secs);
#   (d) context switches of the idle supervisor (all threads) over IDLE seconds, as wakeups/s;
#   (e) median latency of 20 runs of `stackinit status` vs `supervisorctl status`;
# and, as the floor of (a), a shell loop that respawns `sleep` at once, timed the same way.
# stackinit's services get `backoff_reset = "1s"` and each kill comes after >= 1.1 s of uptime, so each
# kill is the crash of a stable process (immediate restart), as for supervisord's RUNNING programs.
#
# It cleans up everything it started (the supervisors and their services, by pid; the temp dir), also
# on failure or Ctrl-C. It needs `supervisor` (apt) and python3. Until stackinit's control socket
# exists, the stackinit figures that need its API are missing and the script fails (exit 1) after
# printing the rest.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SERVICES=${SERVICES:-100}
KILLS=${KILLS:-20}
IDLE=${IDLE:-10}

if [ -n "${STACKINIT:-}" ]; then
    BIN=$STACKINIT LABEL="$STACKINIT"
elif [ -x "$ROOT/target/release/stackinit" ]; then
    BIN=$ROOT/target/release/stackinit LABEL="release build"
elif [ -x "$ROOT/target/debug/stackinit" ]; then
    BIN=$ROOT/target/debug/stackinit LABEL="DEBUG build (run cargo build --release for real figures)"
else
    echo "run.sh: no stackinit binary: cargo build --release (or set STACKINIT=path)" >&2
    exit 2
fi
command -v supervisord >/dev/null || { echo "run.sh: supervisord not found: apt-get install supervisor" >&2; exit 2; }
command -v python3 >/dev/null || { echo "run.sh: python3 not found" >&2; exit 2; }

TMP=$(mktemp -d /tmp/stackinit-bench-supervisor.XXXXXX)
cleanup() {
    local pidfile pid
    for pidfile in "$TMP"/*.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        # Only a process that is still ours: its command line names our temp dir.
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$TMP"; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- configs ---------------------------------------------------------------------------------------
supervisord_config() { # DIR STARTSECS
    local dir=$1 startsecs=$2 i
    mkdir -p "$dir/logs"
    {
        printf '[unix_http_server]\nfile=%s/supervisor.sock\n\n' "$dir"
        printf '[supervisord]\nnodaemon=true\nuser=root\nlogfile=%s/supervisord.log\npidfile=%s/supervisord.pid\nchildlogdir=%s/logs\n\n' "$dir" "$dir" "$dir"
        printf '[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n'
        printf '[supervisorctl]\nserverurl=unix://%s/supervisor.sock\n\n' "$dir"
        for i in $(seq 0 $((SERVICES - 1))); do
            printf '[program:s%d]\ncommand=/bin/sleep %d\nautorestart=true\n' "$i" $((100000 + i))
            [ "$startsecs" = default ] || printf 'startsecs=%s\n' "$startsecs"
            printf '\n'
        done
    } >"$dir/supervisord.conf"
}

stackinit_config() { # DIR START_SECS
    local dir=$1 start_secs=$2 i
    mkdir -p "$dir"
    {
        printf '[init]\nlogs_dir = "%s/logs"\ncontrol_socket = "%s/control.sock"\n\n' "$dir" "$dir"
        for i in $(seq 0 $((SERVICES - 1))); do
            printf '[service.s%d]\ncommand = ["/bin/sleep", "%d"]\nbackoff_reset = "1s"\n' "$i" $((100000 + i))
            [ "$start_secs" = default ] || printf 'start_secs = "%s"\n' "$start_secs"
            printf '\n'
        done
    } >"$dir/stackinit.toml"
}

# ---- runs ------------------------------------------------------------------------------------------
measure() { # NAME KIND SOCKET ONLY STATUS_CMD -- ARGV...
    local name=$1 kind=$2 socket=$3 only=$4 status_cmd=$5
    shift 6
    echo "--- $name" >&2
    python3 "$HERE/measure.py" --kind "$kind" --socket "$socket" --services "$SERVICES" --kills "$KILLS" \
        --idle "$IDLE" --only "$only" --pidfile "$TMP/$name.pid" --log "$TMP/$name.log" \
        --status-cmd "$status_cmd" -- "$@" >"$TMP/$name.json" || {
        echo "run.sh: measuring $name failed; its log:" >&2
        tail -20 "$TMP/$name.log" >&2 || true
        echo '{"errors": ["measurement failed"]}' >"$TMP/$name.json"
    }
    cat "$TMP/$name.json" >&2
}

echo "supervisor benchmark: $SERVICES services, $KILLS kills, ${IDLE} s idle; stackinit: $LABEL; $(nproc) cores" >&2
supervisord --version >/dev/null 2>&1 && echo "supervisord $(supervisord --version)" >&2

supervisord_config "$TMP/sd0" 0
measure sd0 supervisord "$TMP/sd0/supervisor.sock" "" "supervisorctl -c $TMP/sd0/supervisord.conf status" \
    -- supervisord -n -c "$TMP/sd0/supervisord.conf"
supervisord_config "$TMP/sd1" default
measure sd1 supervisord "$TMP/sd1/supervisor.sock" "startup,rss" "" \
    -- supervisord -n -c "$TMP/sd1/supervisord.conf"
measure loop loop "" "restart" "" -- bash -c "while :; do /bin/sleep 100000; done # $TMP"
stackinit_config "$TMP/si0" 0s
measure si0 stackinit "$TMP/si0/control.sock" "" "$BIN --socket $TMP/si0/control.sock status" \
    -- "$BIN" run --config "$TMP/si0/stackinit.toml"
stackinit_config "$TMP/si1" default
measure si1 stackinit "$TMP/si1/control.sock" "startup,rss" "" \
    -- "$BIN" run --config "$TMP/si1/stackinit.toml"

# ---- the table -------------------------------------------------------------------------------------
python3 - "$TMP" "$SERVICES" "$KILLS" "$IDLE" "$LABEL" <<'EOF'
import json, sys
tmp, services, kills, idle, label = sys.argv[1:]
r = {n: json.load(open(f"{tmp}/{n}.json")) for n in ("sd0", "sd1", "si0", "si1", "loop")}

def fig(run, key, fmt):
    v = r[run].get(key)
    return None if v is None else fmt.format(v)

def ratio(si, sd):
    a, b = r[si[0]].get(si[1]), r[sd[0]].get(sd[1])
    if a is None or b is None:
        return "n/a"
    if a == 0:
        return "∞" if b > 0 else "1×"
    return f"{b / a:.1f}×" if b / a < 100 else f"{b / a:.0f}×"

rows = [
    (f"crash → new pid, median of {kills} `kill -9` (ms)", ("si0", "restart_ms"), ("sd0", "restart_ms"), "{:.1f}"),
    (f"RSS with {services} services (MiB)", ("si0", "rss_mib"), ("sd0", "rss_mib"), "{:.1f}"),
    (f"start → {services} running, start period 0 s (s)", ("si0", "startup_s"), ("sd0", "startup_s"), "{:.3f}"),
    (f"start → {services} running, start period 1 s, the default (s)", ("si1", "startup_s"), ("sd1", "startup_s"), "{:.3f}"),
    (f"idle wakeups (context switches/s over {idle} s)", ("si0", "wakeups_per_s"), ("sd0", "wakeups_per_s"), "{:.1f}"),
    ("`status` command, median of 20 (ms)", ("si0", "status_ms"), ("sd0", "status_ms"), "{:.1f}"),
]
print()
for title, si, sd, f in rows:
    print(f"{title}: stackinit {fig(*si, f) or 'n/a'}, supervisord {fig(*sd, f) or 'n/a'}, "
          f"ratio {ratio(si, sd)}")
floor = r["loop"].get("restart_ms")
if floor is not None:
    print(f"(measurement floor for crash → new pid: a shell loop respawning at once measures {floor:.1f} ms)")
print()
print(f"stackinit ({label}) vs supervisord, {services} services, one run on this machine "
      f"(`benches/supervisor/run.sh`):")
print()
print("| figure | stackinit | supervisord | supervisord ÷ stackinit |")
print("| --- | ---: | ---: | ---: |")
for title, si, sd, f in rows:
    print(f"| {title} | {fig(*si, f) or 'n/a'} | {fig(*sd, f) or 'n/a'} | {ratio(si, sd)} |")
errors = [f"{n}: {e}" for n in r for e in r[n].get("errors", [])]
missing = [t for t, si, sd, _ in rows if r[si[0]].get(si[1]) is None or r[sd[0]].get(sd[1]) is None]
if errors or missing:
    print()
    for e in errors:
        print(f"FAIL {e}")
    for t in missing:
        print(f"FAIL missing figure: {t}")
    sys.exit(1)
EOF
