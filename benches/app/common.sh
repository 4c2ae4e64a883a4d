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
