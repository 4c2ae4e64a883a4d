# Helpers shared by the app benchmarks (run.sh, deploy.sh); sourced after each defines `die`.

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
