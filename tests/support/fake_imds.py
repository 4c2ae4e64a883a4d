#!/usr/bin/env python3
"""A fake EC2 instance metadata service (IMDSv2 only) on loopback, for tests. Stdlib only.

    fake_imds.py [PORT] [--host 127.0.0.1] [--json FILE] [--set KEY=VALUE]... [--delay-ms N] [--user-data FILE]

PORT 0 (the default) picks a free port. The first line on stdout is the port, then stdout is
flushed; request logs go to stderr. SIGTERM or SIGINT stops it (exit 0).

Protocol, as the real IMDSv2:
- `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 1..21600` returns a token
  (text/plain); a missing or bad TTL is 400, a PUT carrying X-Forwarded-For is 403 (the real service
  refuses tokens to requests that went through a proxy).
- `GET /latest/meta-data/KEY` needs `X-aws-ec2-metadata-token` with a live token, else 401.
  `GET /latest/meta-data/` lists the keys. Unknown keys are 404.
- `GET /latest/user-data` (same token rule): the bytes of the `--user-data FILE`, read at each request (so a
  test can change them between boots), or 404 when there is no such option or file, as on an instance
  launched without user data.

Values, later sources winning: built-in defaults; `--json FILE` (an object of KEY: value);
environment variables `FAKE_IMDS_<KEY>` (upper case, `-` as `_`, e.g. FAKE_IMDS_LOCAL_IPV4);
`--set KEY=VALUE`. A key set to the empty string is absent (404), like public-ipv4 on a private
instance. `--delay-ms` delays every answer, to test the client's timeouts.
"""
import json
import os
import secrets
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULTS = {
    "instance-id": "i-0123456789abcdef0",
    "local-ipv4": "172.31.5.6",
    "local-hostname": "ip-172-31-5-6.eu-west-1.compute.internal",
    "public-ipv4": "203.0.113.7",
    "public-hostname": "ec2-203-0-113-7.eu-west-1.compute.amazonaws.com",
}
USER_DATA = None  # --user-data FILE
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL = 21600


def parse_args(argv):
    port, host, json_file, sets, delay_ms = 0, "127.0.0.1", None, [], 0
    global USER_DATA
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        if arg in ("--host", "--json", "--set", "--delay-ms", "--user-data"):
            if not args:
                sys.exit(f"fake_imds: {arg} needs a value")
            value = args.pop(0)
            if arg == "--user-data":
                USER_DATA = value
            elif arg == "--host":
                host = value
            elif arg == "--json":
                json_file = value
            elif arg == "--set":
                if "=" not in value:
                    sys.exit(f"fake_imds: --set wants KEY=VALUE, got {value!r}")
                sets.append(value.split("=", 1))
            else:
                delay_ms = int(value)
        elif arg.isdigit():
            port = int(arg)
        else:
            sys.exit(f"fake_imds: unexpected argument {arg!r}\n{__doc__}")
    return port, host, json_file, sets, delay_ms


def metadata_values(json_file, sets):
    values = dict(DEFAULTS)
    if json_file:
        with open(json_file, encoding="utf-8") as f:
            loaded = json.load(f)
        if not isinstance(loaded, dict):
            sys.exit(f"fake_imds: {json_file} must hold a JSON object")
        values.update({str(k): str(v) for k, v in loaded.items()})
    for key in list(values) + list(DEFAULTS):
        env = os.environ.get("FAKE_IMDS_" + key.upper().replace("-", "_"))
        if env is not None:
            values[key] = env
    for key, value in sets:
        values[key] = value
    return {k: v for k, v in values.items() if v != ""}


class Imds(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, values, delay_ms):
        super().__init__(address, Handler)
        self.values = values
        self.delay = delay_ms / 1000
        self.tokens = {}  # token -> expiry (monotonic)
        self.lock = threading.Lock()

    def issue(self, ttl):
        token = secrets.token_urlsafe(40)
        with self.lock:
            self.tokens[token] = time.monotonic() + ttl
        return token

    def valid(self, token):
        with self.lock:
            expiry = self.tokens.get(token or "")
        return expiry is not None and expiry > time.monotonic()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EC2ws"
    sys_version = ""

    def log_message(self, fmt, *args):
        sys.stderr.write("fake_imds: %s\n" % (fmt % args))

    def answer(self, status, body=""):
        if self.server.delay:
            time.sleep(self.server.delay)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def drain_body(self):
        length = self.headers.get("Content-Length")
        if length and length.isdigit():
            self.rfile.read(int(length))

    def do_PUT(self):
        self.drain_body()
        if self.path != "/latest/api/token":
            return self.answer(404, "Not Found")
        if self.headers.get("X-Forwarded-For") is not None:
            return self.answer(403, "Forbidden")
        ttl = self.headers.get(TTL_HEADER, "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL:
            return self.answer(400, "Bad Request")
        self.answer(200, self.server.issue(int(ttl)))

    def do_GET(self):
        prefix = "/latest/meta-data/"
        if self.path == "/latest/user-data":
            if not self.server.valid(self.headers.get(TOKEN_HEADER)):
                return self.answer(401, "Unauthorized")
            try:
                with open(USER_DATA or "", encoding="utf-8") as f:
                    return self.answer(200, f.read())
            except OSError:
                return self.answer(404, "Not Found")
        if not self.path.startswith(prefix):
            return self.answer(404, "Not Found")
        if not self.server.valid(self.headers.get(TOKEN_HEADER)):
            return self.answer(401, "Unauthorized")
        key = self.path[len(prefix):]
        if key == "":
            return self.answer(200, "\n".join(sorted(self.server.values)))
        value = self.server.values.get(key)
        if value is None:
            return self.answer(404, "Not Found")
        self.answer(200, value)

    do_HEAD = do_GET

    def do_POST(self):
        self.drain_body()
        self.answer(405, "Method Not Allowed")

    do_DELETE = do_POST


def main(argv):
    port, host, json_file, sets, delay_ms = parse_args(argv)
    server = Imds((host, port), metadata_values(json_file, sets), delay_ms)
    print(server.server_address[1], flush=True)

    def stop(*_):
        # shutdown() waits for serve_forever to return, so it must not run on the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
