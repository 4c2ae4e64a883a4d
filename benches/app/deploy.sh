#!/usr/bin/env bash
# Deploy under load: what a restart of the app costs the clients, the seed's way and stackinit's.
#
#   seed       nginx -> `gunicorn --workers 3` on one socket, run by supervisord (the lecture's stack);
#              the deploy is `supervisorctl restart app`
#   stackinit  its proxy -> 3 replicas of `gunicorn --workers 1`, a socket each; the deploy is
#              `stackinit restart app` (rolling, each new replica ready before the old one stops)
#
# Same app (the sample Django app), same gunicorn. wrk runs on / for the whole window; the deploy starts
# DEPLOY_AT seconds in. Reported: requests, failed requests (non-2xx and socket errors, from wrk), the
# seconds in which any request failed (from nginx's / the proxy's access log, 1 s resolution), and how long
# the deploy took (stackinit's: until all three replicas are new and ready).
#
# Usage: benches/app/deploy.sh [seconds] [connections]      (defaults 30, 4)
# Needs root (nginx workers and supervisord as root in a temp dir), wrk, nginx, supervisord, the venv
# (STACKINIT_TEST_VENV or .cache/venv), and a release build of stackinit (STACKINIT=path for another).
set -euo pipefail

DURATION=${1:-30}
CONNS=${2:-4}
DEPLOY_AT=5
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
APP=$ROOT/app
VENV=${STACKINIT_TEST_VENV:-$ROOT/.cache/venv}
BIN=${STACKINIT:-$ROOT/target/release/stackinit}
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "benches/app/deploy.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root"
for tool in wrk nginx supervisord supervisorctl curl python3; do command -v "$tool" >/dev/null || die "missing $tool"; done
[[ -x "$VENV/bin/gunicorn" ]] || die "no venv with gunicorn at $VENV (run scripts/test once)"
[[ -x "$BIN" ]] || die "missing $BIN (cargo build --release)"

TMP=$(mktemp -d /tmp/stackinit-deploy-bench.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
  "$BIN" --socket "$TMP/si/control.sock" shutdown >/dev/null 2>&1 || true
  supervisorctl -c "$TMP/seed/supervisord.conf" shutdown >/dev/null 2>&1 || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n "${KEEP:-}" ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# shellcheck source=benches/app/common.sh
source "$ROOT/benches/app/common.sh"
P_SEED=$(port); P_SI=$(port)
ENV_TOML="{ DJANGO_SETTINGS_MODULE = \"mysite.settings\", STACKINIT_DB_PATH = \"$TMP/db.sqlite3\", STACKINIT_STATIC_ROOT = \"$TMP/static\", PYTHONDONTWRITEBYTECODE = \"1\" }"
(cd "$APP" && env DJANGO_SETTINGS_MODULE=mysite.settings STACKINIT_DB_PATH="$TMP/db.sqlite3" \
  "$VENV/bin/python" manage.py migrate --noinput >/dev/null)

# ---- seed: supervisord runs gunicorn; nginx in front -----------------------------------------------------
mkdir -p "$TMP/seed/logs"
cat > "$TMP/seed/supervisord.conf" <<CONF
[unix_http_server]
file=$TMP/seed/supervisor.sock
[supervisord]
nodaemon=true
user=root
logfile=$TMP/seed/supervisord.log
pidfile=$TMP/seed/supervisord.pid
childlogdir=$TMP/seed/logs
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://$TMP/seed/supervisor.sock
[program:app]
command=$VENV/bin/gunicorn --workers 3 --bind unix:$TMP/seed/gunicorn.sock mysite.wsgi:application
directory=$APP
environment=DJANGO_SETTINGS_MODULE="mysite.settings",STACKINIT_DB_PATH="$TMP/db.sqlite3",PYTHONDONTWRITEBYTECODE="1"
autorestart=true
stopwaitsecs=40
stdout_logfile=$TMP/seed/logs/app.out.log
stderr_logfile=$TMP/seed/logs/app.err.log
CONF
supervisord -c "$TMP/seed/supervisord.conf" &
PIDS+=($!)
cat > "$TMP/seed/nginx.conf" <<CONF
daemon off;
user root;
worker_processes auto;
pid $TMP/seed/nginx.pid;
error_log $TMP/seed/logs/error.log;
events { worker_connections 1024; }
http {
  client_body_temp_path $TMP/seed/cb; proxy_temp_path $TMP/seed/pt; fastcgi_temp_path $TMP/seed/ft;
  uwsgi_temp_path $TMP/seed/ut; scgi_temp_path $TMP/seed/st;
  access_log $TMP/seed/logs/access.log;
  server {
    listen 127.0.0.1:$P_SEED default_server;
    location / { proxy_pass http://unix:$TMP/seed/gunicorn.sock; proxy_set_header Host \$http_host; }
  }
}
CONF
nginx -p "$TMP/seed" -c "$TMP/seed/nginx.conf" &
PIDS+=($!)

# ---- stackinit: 3 gunicorn replicas behind its proxy ----------------------------------------------------
mkdir -p "$TMP/si"
cat > "$TMP/si/stackinit.toml" <<CONF
[init]
logs_dir = "$TMP/si/logs"
control_socket = "$TMP/si/control.sock"
[init.imds]
enabled = false
[service.app]
command = ["$VENV/bin/gunicorn", "--workers", "1", "mysite.wsgi:application"]
directory = "$APP"
environment = $ENV_TOML
replicas = 3
max_in_flight = 1
listen = "unix:$TMP/si/app.sock"
readiness = { http = "/", expect = 200, period = "1s" }
stop_grace = "40s"
[proxy]
listen = ["127.0.0.1:$P_SI"]
[[proxy.server]]
server_name = ["*.compute.amazonaws.com"]
default = true
  [[proxy.server.location]]
  path = "/"
  upstream = "app"
CONF
"$BIN" run --config "$TMP/si/stackinit.toml" > "$TMP/si/stdout" 2> "$TMP/si/stderr" &
PIDS+=($!)

wait_ok "$P_SEED" /
wait_ok "$P_SI" /healthz
wait_ok "$P_SI" /

# Seconds (of the access log's 1 s resolution) from START on in which some request failed (not 2xx).
failing_seconds() { # access-log start-epoch
  python3 - "$1" "$2" <<'PY'
import re, sys, datetime
start = float(sys.argv[2])
bad = set()
for line in open(sys.argv[1]):
    m = re.search(r'\[(\d+/\w+/\d+:\d+:\d+:\d+) ([-+]\d{4})\] "[^"]*" (\d{3})', line)
    if not m:
        continue
    t = datetime.datetime.strptime(m.group(1) + " " + m.group(2), "%d/%b/%Y:%H:%M:%S %z").timestamp()
    if t >= start - 1 and not m.group(3).startswith("2"):
        bad.add(t)
print(len(bad))
PY
}

declare -A REQ FAILED GAP TOOK START
run() { # label port deploy-command...
  local label=$1 port=$2; shift 2
  START[$label]=$(date +%s)
  wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/" > "$TMP/$label.wrk" &
  local load=$!
  sleep "$DEPLOY_AT"
  local t0=$SECONDS
  "$@" > "$TMP/$label.deploy" 2>&1
  TOOK[$label]=$((SECONDS - t0))
  wait "$load"
  REQ[$label]=$(awk '/requests in/ {print $1}' "$TMP/$label.wrk")
  local non2xx errors
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$TMP/$label.wrk"); non2xx=${non2xx:-0}
  errors=$(awk -F'[ ,]+' '/Socket errors/ {s=0; for (i=1;i<=NF;i++) if ($i ~ /^[0-9]+$/) s+=$i; print s}' "$TMP/$label.wrk"); errors=${errors:-0}
  FAILED[$label]=$((non2xx + errors))
}

# The seed: supervisorctl restart waits for the program to stop and to be RUNNING again (startsecs, 1 s).
run seed "$P_SEED" supervisorctl -c "$TMP/seed/supervisord.conf" restart app
GAP[seed]=$(failing_seconds "$TMP/seed/logs/access.log" "${START[seed]}")

# stackinit: the rolling restart returns at once; it is done when all three replicas have new pids and are ready.
app_pids() { # -> "p1 p2 p3" once all three replicas are ready, else "busy"
  "$BIN" --socket "$TMP/si/control.sock" status --json | python3 -c '
import json, sys
apps = [s for s in json.load(sys.stdin)["services"] if s["service"] == "app"]
ok = len(apps) == 3 and all(s["ready"] for s in apps)
print(" ".join(str(s["pid"]) for s in apps) if ok else "busy")'
}
rolled() {
  local before now
  before=$(app_pids)
  "$BIN" --socket "$TMP/si/control.sock" restart app
  for _ in $(seq 1200); do
    now=$(app_pids)
    if [[ $now != busy ]] && ! grep -qwF -f <(tr ' ' '\n' <<<"$before") <<<"$now"; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}
run stackinit "$P_SI" rolled
GAP[stackinit]=$(failing_seconds "$TMP/si/logs/access.log" "${START[stackinit]}")

echo "$(nproc) cores; wrk -t1 -c$CONNS -d${DURATION}s on /, the deploy $DEPLOY_AT s in"
printf '%-10s %9s %8s %24s %12s\n' stack requests failed "seconds with failures" "deploy took"
for k in seed stackinit; do
  printf '%-10s %9s %8s %24s %10s s\n' "$k" "${REQ[$k]}" "${FAILED[$k]}" "${GAP[$k]}" "${TOOK[$k]}"
done
