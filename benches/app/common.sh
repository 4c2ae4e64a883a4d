# Helpers shared by the app benchmarks (run.sh, deploy.sh, priority.sh); sourced after each defines `die`.

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Wait (up to 60 s) until http://127.0.0.1:PORT/PATH answers 200.
wait_ok() { # port, path
  for _ in $(seq 600); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1$2") == 200 ]] && return 0
    sleep 0.1
  done
  die "127.0.0.1:$1$2 never answered 200"
}

# The stacks a run measures: the seed always, then those of $2 (space-separated; all of $1 when empty),
# one line, separated by single spaces. (Built with echo in a loop, the list kept its newlines and
# `wanted` matched no name next to one: multi-stack runs started nothing.)
select_stacks() { # all, asked
  local picked=(seed) k
  for k in ${2:-$1}; do
    [[ $k == seed ]] || picked+=("$k")
  done
  printf '%s\n' "${picked[*]}"
}

# Whether stack $1 is in $SELECTED.
wanted() { [[ " $SELECTED " == *" $1 "* ]]; }

# A `stackinit run` stack named $1 in $TMP/$1 on port $2 (if `wanted`): its proxy in front of 3 replicas of
# the sample app ($APP) running command $3 (a TOML array), notify $4; $5 is TOML before [service.app] (a
# template service), $6 replaces the scale keys. Needs BIN, VENV, TMP, PIDS and SI_SOCKETS.
si_stack() { # name, port, command (TOML array), notify, [extra TOML before [service.app]], [scale TOML]
  wanted "$1" || return 0
  local dir=$TMP/$1
  mkdir -p "$dir"
  chmod 755 "$dir"
  cat > "$dir/stackinit.toml" <<CONF
[init]
logs_dir = "$dir/logs"
control_socket = "$dir/control.sock"
[init.imds]
enabled = false
${5:-}
[service.app]
command = $3
directory = "$APP"
environment = { DJANGO_SETTINGS_MODULE = "mysite.settings", STACKINIT_DB_PATH = "$TMP/db.sqlite3", STACKINIT_STATIC_ROOT = "$TMP/staticfiles", PYTHONDONTWRITEBYTECODE = "1" }
${6:-replicas = 3
max_in_flight = 1}
listen = "unix:$dir/app.sock"
notify = $4
readiness = { http = "/", expect = 200 }
stop_grace = "10s"
$([[ -n "${5:-}" ]] && echo 'after = ["app-template"]')

[proxy]
listen = ["127.0.0.1:$2"]

[[proxy.server]]
server_name = ["*.compute.amazonaws.com", "*.compute-1.amazonaws.com", "*.compute.internal", "*.ec2.internal"]
default = true
  [[proxy.server.location]]
  path = "/"
  upstream = "app"
CONF
  "$BIN" run --config "$dir/stackinit.toml" > "$dir/stdout" 2> "$dir/stderr" &
  PIDS+=($!)
  SI_SOCKETS+=("$dir/control.sock")
}

# The AMI's stack: 3 replicas forked from one warm `stackinit_wsgi.py --template` (`stackinit fork-from`).
si_forked_stack() { # port
  si_stack si-forked "$1" "[\"$BIN\", \"fork-from\", \"$TMP/si-forked/app-template.sock\"]" true "
[service.app-template]
command = [\"$VENV/bin/python\", \"$APP/stackinit_wsgi.py\", \"--template\", \"--no-access-log\", \"mysite.wsgi:application\"]
directory = \"$APP\"
environment = { DJANGO_SETTINGS_MODULE = \"mysite.settings\", STACKINIT_DB_PATH = \"$TMP/db.sqlite3\", STACKINIT_STATIC_ROOT = \"$TMP/staticfiles\", PYTHONDONTWRITEBYTECODE = \"1\" }
listen = \"unix:$TMP/si-forked/app-template.sock\"
notify = true
critical = false
"
}

# A temp dir $TMP (named after $1) for a bench of `stackinit run` stacks, removed at exit (kept with KEEP=1)
# after the stacks in SI_SOCKETS are shut down and the processes in PIDS killed. Call it from the script's
# own shell, not in $( ): it sets TMP, PIDS and SI_SOCKETS and the EXIT trap.
bench_dir() { # name
  TMP=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$TMP" # the stackinit proxy runs as nobody and must reach the app sockets
  PIDS=()
  SI_SOCKETS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for sock in "${SI_SOCKETS[@]}"; do "$BIN" --socket "$sock" shutdown >/dev/null 2>&1 || true; done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n "${KEEP:-}" ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
