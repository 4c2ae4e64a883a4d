#!/usr/bin/env bash
# The app benchmark of issue 5, all stacks in one run, reported as ratios against the seed stack.
#
# Workload: the sample Django app (app/), 3 sync workers/replicas, 1 request in 20 to /slow/?ms=50
# (sleeps 50 ms), the rest to / (fast). Two clients run at once against each stack:
#   - "mixed":  wrk -t2 -c$CONNS with benches/app/mixed.lua (the 19:1 mix), the bulk of the load;
#   - "probe":  benches/app/probe.py, $PROBE_CONNS keep-alive connection(s) sending GET / back to back, every
#               request's latency recorded (no coordinated-omission correction): the latency of fast
#               requests under the mixed load, cross-checked against the proxy's access log.
# rps is both clients together; the slow share actually sent is printed too. Every stack runs once per
# round, RUNS rounds (5 by default), and the summary gives the median and range over the rounds.
#
# Stacks:
#   seed        nginx (seed config: proxy_pass http://unix:..., Debian proxy_params, access log on)
#               -> gunicorn --workers 3 --bind unix:... (one shared socket)
#   si-shared   stackinit run: its proxy -> one service `gunicorn --workers 3` on one shared socket, as the seed
#               (the per-replica socket decision measured with everything else equal)
#   si-gunicorn stackinit run: its proxy -> 3 replicas of `gunicorn --workers 1` (no --bind: LISTEN_FDS),
#               one socket per replica, fewest-in-flight routing
#   si-lean     the same with app/stackinit_wsgi.py (one process per replica, no master)
#   si-forked   3 replicas forked from one `stackinit_wsgi.py --template` (`stackinit fork-from`), as the AMI runs
#   seed-nice   the seed with nginx at `worker_priority -5`, the priority stackinit's proxy gets as root:
#               what CPU priority alone buys the seed (the fast requests' tail on a saturated 2-core box is
#               mostly time slices lost to the CPU-bound workers)
# Then the RSS (and PSS) per replica of gunicorn-per-replica vs the lean server, after the load.
#
# Usage: [RUNS=5] benches/app/run.sh [seconds] [connections] [probe-connections]
# Needs: wrk, nginx, the venv (STACKINIT_TEST_VENV or .cache/venv, see scripts/test), and a release build
# of stackinit (built here if missing or older than the sources; that takes minutes on a busy machine).
# STACKINIT=path picks another binary; KEEP=1 keeps the temp dir (logs, wrk outputs); STACKS="si-forked" runs
# only those stackinit stacks (the seed always runs: every ratio is to it).
set -euo pipefail

DURATION=${1:-15}
CONNS=${2:-16}
PROBE_CONNS=${3:-1}
RUNS=${RUNS:-5}
WARMUP=3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
APP=$ROOT/app
VENV=${STACKINIT_TEST_VENV:-$ROOT/.cache/venv}
LUA=$ROOT/benches/app/mixed.lua
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "benches/app/run.sh: $*" >&2; exit 1; }
for tool in wrk nginx curl python3; do command -v "$tool" >/dev/null || die "missing $tool"; done
[[ -x "$VENV/bin/gunicorn" && -x "$VENV/bin/python" ]] ||
  die "no venv with gunicorn at $VENV (run scripts/test once, or set STACKINIT_TEST_VENV)"

BIN=${STACKINIT:-$ROOT/target/release/stackinit}
if [[ -z "${STACKINIT:-}" ]]; then
  newest_src=$(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -type f -newer "$BIN" 2>/dev/null | head -1 || true)
  if [[ ! -x "$BIN" || -n "$newest_src" ]]; then
    echo "building the release binary (cargo build --release; minutes on a busy machine)..." >&2
    (cd "$ROOT" && cargo build --release --quiet) || die "release build failed"
  fi
fi
[[ -x "$BIN" ]] || die "missing $BIN"

# shellcheck source=benches/app/common.sh
source "$ROOT/benches/app/common.sh"
bench_dir stackinit-app-bench
P_SEED=$(port); P_SEEDP=$(port); P_SIG=$(port); P_SIL=$(port); P_SIF=$(port); P_SIS=$(port)
ALL_STACKS="seed-nice si-shared si-gunicorn si-lean si-forked"
SELECTED=$(select_stacks "$ALL_STACKS" "${STACKS:-}")
for k in $SELECTED; do [[ " seed $ALL_STACKS " == *" $k "* ]] || die "unknown stack $k (have: seed $ALL_STACKS)"; done

DJANGO_ENV=(DJANGO_SETTINGS_MODULE=mysite.settings "STACKINIT_DB_PATH=$TMP/db.sqlite3"
  "STACKINIT_STATIC_ROOT=$TMP/staticfiles" PYTHONDONTWRITEBYTECODE=1)

# ---- the seed stack: nginx -> gunicorn --workers 3 on one unix socket ----------------------------------
mkdir -p "$TMP/seed/logs"
(cd "$APP" && exec env "${DJANGO_ENV[@]}" "$VENV/bin/gunicorn" --workers 3 --bind "unix:$TMP/seed/gunicorn.sock" \
  --pid "$TMP/seed/gunicorn.pid" mysite.wsgi:application) 2> "$TMP/seed/logs/gunicorn.err" &
SEED_GUNICORN=$!
PIDS+=("$SEED_GUNICORN")
NGINX_USER=""
[[ $(id -u) == 0 ]] && NGINX_USER="user root;" # workers as nobody could not enter the temp dir
cat > "$TMP/seed/nginx.conf" <<CONF
daemon off;
master_process on;
$NGINX_USER
worker_processes auto;
pid $TMP/seed/nginx.pid;
error_log $TMP/seed/logs/error.log;
events { worker_connections 4096; }
http {
  client_body_temp_path $TMP/seed/cb; proxy_temp_path $TMP/seed/pt; fastcgi_temp_path $TMP/seed/ft;
  uwsgi_temp_path $TMP/seed/ut; scgi_temp_path $TMP/seed/st;
  access_log $TMP/seed/logs/access.log;
  server {
    listen 127.0.0.1:$P_SEED default_server;
    server_name *.compute.amazonaws.com;
    location / {
      proxy_pass http://unix:$TMP/seed/gunicorn.sock;
      proxy_set_header Host \$http_host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
CONF
nginx -p "$TMP/seed" -c "$TMP/seed/nginx.conf" &
PIDS+=($!)
# The same nginx at stackinit's proxy priority (nice -5 as root), to show what priority alone buys the seed.
mkdir -p "$TMP/seedp/logs"
sed -e "s|listen 127.0.0.1:$P_SEED |listen 127.0.0.1:$P_SEEDP |" -e "s|pid $TMP/seed/nginx.pid;|pid $TMP/seedp/nginx.pid;\nworker_priority -5;|" \
  -e "s|$TMP/seed/logs/|$TMP/seedp/logs/|g" "$TMP/seed/nginx.conf" > "$TMP/seedp/nginx.conf"
nginx -p "$TMP/seedp" -c "$TMP/seedp/nginx.conf" &
PIDS+=($!)

# ---- stackinit stacks --------------------------------------------------------------------------------
# The socket decision in isolation: the same proxy in front of the seed's `gunicorn --workers 3` on one shared
# socket (one service, no replicas), so the kernel, not the proxy, picks the worker.
si_stack si-shared "$P_SIS" "[\"$VENV/bin/gunicorn\", \"--workers\", \"3\", \"mysite.wsgi:application\"]" false "" "max_in_flight = 3"
si_stack si-gunicorn "$P_SIG" "[\"$VENV/bin/gunicorn\", \"--workers\", \"1\", \"mysite.wsgi:application\"]" false
si_stack si-lean "$P_SIL" "[\"$VENV/bin/python\", \"$APP/stackinit_wsgi.py\", \"--no-access-log\", \"mysite.wsgi:application\"]" true
si_forked_stack "$P_SIF"

declare -A PORT=([seed]=$P_SEED [seed-nice]=$P_SEEDP [si-shared]=$P_SIS [si-gunicorn]=$P_SIG [si-lean]=$P_SIL [si-forked]=$P_SIF)
for k in $SELECTED; do if [[ $k == si-* ]]; then wait_ok "${PORT[$k]}" /healthz; fi; done
for k in $SELECTED; do wait_ok "${PORT[$k]}" /; done

# ---- load ---------------------------------------------------------------------------------------------
# The probe (benches/app/probe.py) records each fast request's own latency on one keep-alive connection per
# probe client, back to back: no coordinated-omission correction, unlike wrk's percentiles, whose synthetic
# samples turned one real 150 ms response into ~75 and penalised the faster stack. On one box the probe
# also waits for a CPU behind the CPU-bound workers; as root it runs at nice -10 in its own session with
# its autogroup at -10 too (a process's nice alone does nothing against other sessions under
# kernel.sched_autogroup_enabled=1), like a client on another machine. PROBE_NICE= turns that off.
PROBE_NICE=${PROBE_NICE-$([[ $(id -u) == 0 ]] && echo -10)}
RESULTS=$TMP/results
: > "$RESULTS"
declare -A LOGSTART
run() { # run number, label, port
  local n=$1 k=$2 url=http://127.0.0.1:$3 tag=$TMP/$2.$1 pids=() i
  # warm up every replica, then measure both clients over the same window
  wrk -t2 -c"$CONNS" -d"${WARMUP}s" -s "$LUA" "$url/" >/dev/null
  [[ $k == si-* ]] && LOGSTART[$k]=$(wc -l < "$TMP/$k/logs/access.log")
  wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$LUA" "$url/" > "$tag.mixed" &
  local mixed=$!
  for ((i = 0; i < PROBE_CONNS; i++)); do
    python3 "$ROOT/benches/app/probe.py" "127.0.0.1:$3" / "$DURATION" "$tag.probe.$i" ${PROBE_NICE:+--nice "$PROBE_NICE"} &
    pids+=($!)
  done
  wait "$mixed" "${pids[@]}"
  local m_req m_rps count p50 p99 p999 max
  m_req=$(awk '/requests in/ {print $1}' "$tag.mixed")
  m_rps=$(awk '/Requests\/sec/ {print $2}' "$tag.mixed")
  read -r count p50 p99 p999 max < <(python3 "$ROOT/benches/app/latency.py" probe "$tag".probe.*)
  local rps
  rps=$(python3 -c "print(f'{$m_rps + $count / $DURATION:.0f}')")
  echo "$n $k $rps $p50 $p99 $p999 $max" >> "$RESULTS"
  local errors bad before last
  errors=$(awk '/Non-2xx|Socket errors/' "$tag.mixed" | tr '\n' ' ')
  bad=$(cat "$tag".probe.* | awk '$3 != 200' | wc -l)
  read -r before last < <(python3 "$ROOT/benches/app/latency.py" ends "$tag".probe.*)
  printf '%-4s %-12s %7s %8s %8s %8s %8s %6s %9s %9s  %s\n' "$n" "$k" "$rps" "$p50" "$p99" "$p999" "$max" \
    "$(python3 -c "print(f'{($m_req // 20) / ($m_req + $count) * 100:.1f}%')")" "$before" "$last" \
    "$([[ -n $errors || $bad != 0 ]] && echo "errors: $errors probe non-200: $bad")"
  if [[ $k == si-* ]]; then
    # Cross-check: the same requests as the proxy timed them ($request_time), and the largest upstream and
    # queue times among them.
    read -r count p50 p99 p999 max up queue < <(python3 "$ROOT/benches/app/latency.py" log "$TMP/$k/logs/access.log" "${LOGSTART[$k]}")
    printf '%-4s %-12s %7s %8s %8s %8s %8s   (proxy log: %s probe requests; largest upstream %s ms, queue %s ms)\n' \
      "" "" "" "$p50" "$p99" "$p999" "$max" "$count" "$up" "$queue"
  fi
}
echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $RUNS runs of every stack; mixed: wrk -t2 -c$CONNS -d${DURATION}s -s mixed.lua;" \
  "probe: $PROBE_CONNS x probe.py${PROBE_NICE:+ --nice $PROBE_NICE} -d${DURATION}s on /; stackinit: $BIN" >&2
# max<end: the slowest probe request before the last 0.5 s; max@end: in the last 0.5 s, when wrk stops.
printf '%-4s %-12s %7s %8s %8s %8s %8s %6s %9s %9s\n' run stack rps p50 p99 p99.9 max slow 'max<end' 'max@end'
for ((r = 1; r <= RUNS; r++)); do
  for k in $SELECTED; do run "$r" "$k" "${PORT[$k]}"; done
done
echo
echo "fast requests (the probe's own latencies, ms): median (min–max) over $RUNS runs; ratios per run to the seed's"
python3 "$ROOT/benches/app/latency.py" summary "$RESULTS"
echo "load after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
[[ -n "${KEEP:-}" ]] && cp "$RESULTS" "$TMP/results.kept"

# ---- memory per replica --------------------------------------------------------------------------------
mem() { # pids... -> "rss_kib pss_kib" summed
  local rss=0 pss=0 p
  for p in "$@"; do
    rss=$(( rss + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status") ))
    pss=$(( pss + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup") ))
  done
  echo "$rss $pss"
}
replica_pids() { # control socket -> the pid of each app@N
  "$BIN" --socket "$1" status --json | python3 -c \
    'import json,sys; print(" ".join(str(s["pid"]) for s in json.load(sys.stdin)["services"] if s["service"]=="app"))'
}
echo
echo "memory per replica (after the load; MiB):"
printf '%-12s %8s %8s %s\n' stack rss pss processes
for k in $SELECTED; do
  [[ $k == si-* ]] || continue
  tot_rss=0; tot_pss=0; procs=0
  for pid in $(replica_pids "$TMP/$k/control.sock"); do
    group=("$pid" $(pgrep -P "$pid" || true))
    read -r r p < <(mem "${group[@]}")
    tot_rss=$((tot_rss + r)); tot_pss=$((tot_pss + p)); procs=$((procs + ${#group[@]}))
  done
  printf '%-12s %8.1f %8.1f %s\n' "$k" "$(bc -l <<<"$tot_rss/3/1024")" "$(bc -l <<<"$tot_pss/3/1024")" "$procs processes for 3 replicas"
done
seed_group=("$SEED_GUNICORN" $(pgrep -P "$SEED_GUNICORN" || true))
read -r r p < <(mem "${seed_group[@]}")
printf '%-12s %8.1f %8.1f %s\n' seed "$(bc -l <<<"$r/3/1024")" "$(bc -l <<<"$p/3/1024")" "${#seed_group[@]} processes (1 master + 3 workers), per worker"
