#!/usr/bin/env python3
"""Smoke checks of the sample app and the test helpers, with no stackinit involved:

- Django's `migrate` and `collectstatic` work with paths from the environment;
- app/stackinit_wsgi.py serves the Django page on sockets passed as fds 3.. (a unix and a TCP one,
  through tests/support/listen_exec.py), says READY=1 on NOTIFY_SOCKET only after loading the app,
  keeps connections alive without letting an idle one block another client, answers 400 for a Host
  outside ALLOWED_HOSTS, refuses sockets whose LISTEN_PID is not its own, and on SIGTERM finishes the
  request in progress and exits 0;
- tests/support/fake_imds.py speaks IMDSv2 (token required).

Needs STACKINIT_TEST_VENV (the venv with Django, made by scripts/test). Prints one line per check and
ends with `N passed, M failed`; exits 1 if any failed. Everything it starts is killed by pid, and its
temp dir removed, whatever happens.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP = os.path.join(ROOT, "app")
SUPPORT = os.path.join(ROOT, "tests", "support")
EC2_HOST = "ec2-203-0-113-7.eu-west-1.compute.amazonaws.com"

results = []
children = []


def check(name):
    def wrap(fn):
        def run(*args):
            started = time.monotonic()
            try:
                fn(*args)
            except Exception:  # a failed check is reported, and the others still run
                results.append(False)
                print(f"FAIL {name} ({time.monotonic() - started:.2f}s)")
                traceback.print_exc(file=sys.stdout)
                return False
            results.append(True)
            print(f"ok   {name} ({time.monotonic() - started:.2f}s)")
            return True
        return run
    return wrap


def spawn(argv, **kwargs):
    proc = subprocess.Popen(argv, **kwargs)
    children.append(proc)
    return proc


def kill_children():
    for proc in children:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def http_raw(sock, host, path="/", method="GET", extra="", body=b""):
    """Send one request on an open socket and read one response (Content-Length or chunked)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)
    return read_response(sock, method)


def read_response(sock, method="GET"):
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed before a response head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if method == "HEAD" or status in (204, 304):
        return status, headers, b""
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            data = sock.recv(65536)
            if not data:
                raise AssertionError("connection closed mid-body")
            rest += data
        return status, headers, rest[:n]
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += sock.recv(65536)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            body += rest[:size]
            rest = rest[size + 2:]
            if size == 0:
                return status, headers, body
    while True:
        data = sock.recv(65536)
        if not data:
            return status, headers, rest
        rest += data


def unix_conn(path, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def main():
    venv = os.environ.get("STACKINIT_TEST_VENV")
    if not venv or not os.path.exists(os.path.join(venv, "bin", "python")):
        print("FAIL STACKINIT_TEST_VENV is not set to a venv with Django (run scripts/test)")
        return 1
    python = os.path.join(venv, "bin", "python")
    tmp = tempfile.mkdtemp(prefix="stackinit-app-check-")
    env = dict(os.environ)
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(key, None)
    env.update({
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "STACKINIT_DB_PATH": os.path.join(tmp, "db.sqlite3"),
        "STACKINIT_STATIC_ROOT": os.path.join(tmp, "staticfiles"),
        "STACKINIT_ALLOWED_HOSTS": f"{EC2_HOST},203.0.113.7,*",
        "STACKINIT_REPLICA": "2",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    try:
        run_checks(python, tmp, env)
    finally:
        kill_children()
        shutil.rmtree(tmp, ignore_errors=True)
    passed, failed = results.count(True), results.count(False)
    print(f"check_sample_app: {passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


def run_checks(python, tmp, env):
    @check("manage.py migrate creates the sqlite db at STACKINIT_DB_PATH")
    def migrate():
        out = subprocess.run([python, "manage.py", "migrate", "--noinput"], cwd=APP, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert os.path.getsize(env["STACKINIT_DB_PATH"]) > 0

    @check("manage.py collectstatic copies app/static into STACKINIT_STATIC_ROOT")
    def collectstatic():
        out = subprocess.run([python, "manage.py", "collectstatic", "--noinput"], cwd=APP, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        with open(os.path.join(env["STACKINIT_STATIC_ROOT"], "style.css")) as f:
            assert "body" in f.read()

    migrate()
    collectstatic()

    # stackinit_wsgi.py behind listen_exec.py: a unix socket and a TCP socket on port 0.
    notify_path = os.path.join(tmp, "notify.sock")
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_sock.bind(notify_path)
    notify_sock.settimeout(60)
    app_sock = os.path.join(tmp, "app.sock")
    wenv = dict(env, NOTIFY_SOCKET=notify_path)
    log_path = os.path.join(tmp, "wsgi.err")
    log_file = open(log_path, "w")
    server = spawn([sys.executable, os.path.join(SUPPORT, "listen_exec.py"), "--listen", f"unix:{app_sock}",
                    "--listen", "127.0.0.1:0", "--", python, os.path.join(APP, "stackinit_wsgi.py"),
                    "mysite.wsgi:application"], cwd=APP, env=wenv, stdout=subprocess.PIPE, stderr=log_file,
                   text=True)
    tcp_port = None
    for _ in range(2):
        line = server.stdout.readline().strip()
        if line.startswith("LISTEN 127.0.0.1:"):
            tcp_port = int(line.rsplit(":", 1)[1])

    def server_log():
        log_file.flush()
        with open(log_path) as f:
            return f.read()

    @check("READY=1 arrives on NOTIFY_SOCKET once the app is loaded")
    def ready():
        data, _ = notify_sock.recvfrom(4096)
        assert b"READY=1" in data.split(b"\n"), data
        assert f"MAINPID={server.pid}".encode() in data, (data, server.pid)
        assert "loaded mysite.wsgi:application" in server_log(), server_log()

    if not ready():
        print(server_log())
        return

    @check("GET / over the unix socket (fd 3): Django page with Host and replica; keep-alive")
    def get_unix():
        with unix_conn(app_sock) as s:
            for _ in range(3):
                status, headers, body = http_raw(s, EC2_HOST)
                assert status == 200, (status, body)
                text = body.decode()
                assert "Hello from Django" in text, text
                assert EC2_HOST in text and '<code class="replica">2</code>' in text, text
                assert "/static/style.css" in text, text
                assert headers.get("connection") != "close", headers

    @check("GET / over the TCP socket (fd 4) with an allowed IP Host")
    def get_tcp():
        assert tcp_port, "no TCP port printed by listen_exec.py"
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as s:
            status, _, body = http_raw(s, "203.0.113.7")
            assert status == 200 and b"Hello from Django" in body, (status, body)
            status, _, body = http_raw(s, "localhost:8080", method="HEAD")
            assert status == 200 and body == b"", (status, body)

    @check("Host outside ALLOWED_HOSTS gets 400, and '*' in STACKINIT_ALLOWED_HOSTS is ignored")
    def disallowed():
        with unix_conn(app_sock) as s:
            status, _, _ = http_raw(s, "evil.example.com")
            assert status == 400, status
        assert "ignoring '*'" in server_log()

    @check("an idle kept-alive connection does not block another client")
    def idle_no_block():
        with unix_conn(app_sock) as idle, unix_conn(app_sock, timeout=5) as other:
            assert http_raw(idle, EC2_HOST)[0] == 200
            started = time.monotonic()
            assert http_raw(other, EC2_HOST)[0] == 200
            assert time.monotonic() - started < 2
            assert http_raw(idle, EC2_HOST)[0] == 200

    @check("a POST body the app does not read is drained; pipelined requests are answered in order")
    def post_and_pipeline():
        with unix_conn(app_sock) as s:
            status, _, _ = http_raw(s, EC2_HOST, method="POST", body=b"x" * 100_000)
            assert status == 403, status  # CSRF: no token
            req = f"GET /slow/?ms=1 HTTP/1.1\r\nHost: {EC2_HOST}\r\n\r\n".encode()
            s.sendall(req + req.replace(b"ms=1", b"ms=2"))
            assert read_response(s)[2] == b"slept 1 ms\n"
            assert read_response(s)[2] == b"slept 2 ms\n"

    @check("chunked request body is accepted")
    def chunked():
        with unix_conn(app_sock) as s:
            s.sendall(f"POST / HTTP/1.1\r\nHost: {EC2_HOST}\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n0\r\n\r\n".encode())
            assert read_response(s)[0] == 403
            assert http_raw(s, EC2_HOST)[0] == 200  # the connection survived

    @check("bad requests: 400 for garbage, 431 for a huge head")
    def bad_requests():
        with unix_conn(app_sock) as s:
            s.sendall(b"NONSENSE\r\n\r\n")
            assert read_response(s)[0] == 400
        with unix_conn(app_sock) as s:
            s.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000)
            assert read_response(s)[0] == 431

    for fn in (get_unix, get_tcp, disallowed, idle_no_block, post_and_pipeline, chunked, bad_requests):
        fn()

    @check("SIGTERM during a request: the response completes, then exit 0")
    def graceful_term():
        with unix_conn(app_sock) as s:
            s.sendall(f"GET /slow/?ms=700 HTTP/1.1\r\nHost: {EC2_HOST}\r\n\r\n".encode())
            time.sleep(0.2)
            server.send_signal(signal.SIGTERM)
            status, headers, body = read_response(s)
            assert status == 200 and body == b"slept 700 ms\n", (status, body)
            assert headers.get("connection") == "close", headers
        assert server.wait(timeout=10) == 0, server.returncode
        assert "stopped" in server_log()

    graceful_term()

    @check("LISTEN_PID not ours: sockets ignored, clear error, exit 2")
    def wrong_pid():
        out = subprocess.run([python, os.path.join(APP, "stackinit_wsgi.py"), "mysite.wsgi:application"],
                             cwd=APP, env=dict(env, LISTEN_FDS="1", LISTEN_PID="1"), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2, (out.returncode, out.stderr)
        assert "LISTEN_PID='1' is not my pid" in out.stderr, out.stderr

    wrong_pid()

    @check("fake_imds.py: token via PUT, metadata needs it, values from --set/env")
    def imds():
        proc = spawn([sys.executable, os.path.join(SUPPORT, "fake_imds.py"), "0", "--set", "public-ipv4="],
                     env=dict(env, FAKE_IMDS_INSTANCE_ID="i-0abc"), stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True)
        port = int(proc.stdout.readline())
        base = f"http://127.0.0.1:{port}/latest"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def call(url, method="GET", headers=None):
            req = urllib.request.Request(url, method=method, headers=headers or {})
            try:
                with opener.open(req, timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, ""

        status, token = call(f"{base}/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        assert status == 200 and token, status
        auth = {"X-aws-ec2-metadata-token": token}
        assert call(f"{base}/meta-data/instance-id", headers=auth) == (200, "i-0abc")
        assert call(f"{base}/meta-data/local-ipv4", headers=auth)[0] == 200
        assert call(f"{base}/meta-data/public-ipv4", headers=auth)[0] == 404
        assert call(f"{base}/meta-data/instance-id")[0] == 401
        assert call(f"{base}/api/token", "PUT")[0] == 400
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0

    imds()
    json.dumps(results)


if __name__ == "__main__":
    sys.exit(main())
