#!/usr/bin/env python3
"""A lean, single-process WSGI server for sockets handed in by stackinit (or systemd).

    python3 stackinit_wsgi.py mysite.wsgi:application

Why: a gunicorn replica is a master plus a sync worker, and the master alone is about 29 MB next to a
25 MB worker. stackinit already does the master's job (it binds the socket, supervises, restarts), so
each replica can be one process that loads the app and serves its inherited socket. Standard library
only.

What it does:
- Serves the listening sockets passed as fds 3.. (LISTEN_FDS, only when LISTEN_PID is our pid), unix or
  TCP; `--bind unix:/path` or `--bind HOST:PORT` binds its own for manual runs.
- One request at a time, like a gunicorn sync worker, so a proxy that counts requests in flight per
  replica knows exactly which worker is free. HTTP/1.1 keep-alive: idle connections wait in the same
  selector as the listeners, so an idle kept-alive connection never blocks another client, and a slow
  request head (slowloris) is read without blocking either.
- Sends READY=1 to $NOTIFY_SOCKET after the app has been imported and loaded, so READY means the app
  really loaded (gunicorn's READY comes before its workers load the app). Pings WATCHDOG=1 at half of
  WATCHDOG_USEC when asked to.
- SIGTERM: stop accepting, finish the request in progress (and any already received), close, exit 0.
  Connections still queued on the socket wait there for the next replica, since stackinit holds it.
- Logs one line per request to stderr (`--no-access-log` turns that off).

Template mode (`--template`): load the app once, then fork ready workers on request. The template serves
no HTTP; its one inherited socket is where `stackinit fork-from SOCKET` (each replica's command) sends its
stdio, its LISTEN_FDS sockets and its environment. The template double-forks a worker that takes them
over and serves, and answers with the worker's pid; stackinit then supervises the worker as the replica
(MAINPID=). Replicas start, and restart, in milliseconds instead of re-importing the app, and share its
memory copy-on-write. The template must be restarted to load new code (`stackinit restart TEMPLATE`, then
`stackinit restart APP`).
"""
import argparse
import array
import fcntl
import gc
import importlib
import io
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

SERVER_SOFTWARE = "stackinit-wsgi"
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
HEAD_TIMEOUT = 30.0  # a request head that has started must be complete within this
IO_TIMEOUT = 60.0  # each body read and response write while a request is being served
KEEPALIVE_IDLE = 60.0  # idle kept-alive connections are closed after this
MAX_IDLE_CONNECTIONS = 256
MAX_DRAIN_BYTES = 1 << 20  # unread request body we read and discard to keep a connection alive
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authenticate", "proxy-authorization"}


def log(message):
    sys.stderr.write(f"stackinit_wsgi[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


class HttpError(Exception):
    """A request we answer with an error status and then close the connection."""

    def __init__(self, status, detail=""):
        super().__init__(detail)
        self.status = HTTPStatus(status)


class ClientGone(Exception):
    """The client closed the connection or timed out; nothing more can be sent."""


# ---------------------------------------------------------------------------------------------------
# sockets and notifications


def inherited_listeners():
    """The sockets of the sd_listen_fds protocol: fds 3..3+LISTEN_FDS-1, if LISTEN_PID is our pid."""
    count = os.environ.get("LISTEN_FDS")
    pid = os.environ.get("LISTEN_PID")
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)  # they are for us, not for processes the app may start
    if not count:
        return []
    if pid != str(os.getpid()):
        log(f"LISTEN_PID={pid!r} is not my pid {os.getpid()}: the LISTEN_FDS sockets are not for me")
        return []
    listeners = []
    for fd in range(3, 3 + int(count)):
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM:
            raise SystemExit(f"stackinit_wsgi: fd {fd} is not a stream socket")
        sock.set_inheritable(False)
        listeners.append(sock)
    return listeners


def bind_listener(address):
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    else:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    sock.listen(1024)
    return sock


def describe(sock):
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name or '?'}"
    return f"{name[0]}:{name[1]}"


# $NOTIFY_SOCKET, taken out of the environment at start: it is for us, not for processes the app starts.
NOTIFY_SOCKET = os.environ.pop("NOTIFY_SOCKET", None) if __name__ == "__main__" else None


def notify(message):
    """sd_notify: one datagram to $NOTIFY_SOCKET (a path, or an abstract name written with a leading @)."""
    address = NOTIFY_SOCKET
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as err:
        log(f"cannot notify {NOTIFY_SOCKET}: {err}")


def watchdog_interval():
    """Half of WATCHDOG_USEC in seconds, when the watchdog is meant for us; else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec), 1) / 2e6
    except ValueError:
        log(f"ignoring bad WATCHDOG_USEC={usec!r}")
        return None


def freeze_heap():
    """Once the app is loaded: collect, then move what is left to the permanent generation, which no collection
    scans. Else the first full collections traverse Django's whole import-time heap, 30-40 ms each (measured),
    while requests wait. gunicorn gets the same from gunicorn.conf.py."""
    gc.collect()
    gc.freeze()


def load_app(spec):
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attr or "application")
    if not callable(app):
        raise SystemExit(f"stackinit_wsgi: {spec} is not callable")
    return app


# ---------------------------------------------------------------------------------------------------
# one connection


class Connection:
    def __init__(self, sock, peer, listener):
        self.sock = sock
        self.peer = peer
        self.listener = listener
        self.buf = bytearray()
        self.last_active = time.monotonic()
        self.head_started = None  # when the first byte of a pending request head arrived
        sock.setblocking(False)

    def head_complete(self):
        return self.buf.find(b"\r\n\r\n") >= 0

    def deadline(self):
        if self.head_started is not None:
            return self.head_started + HEAD_TIMEOUT
        return self.last_active + KEEPALIVE_IDLE

    def recv_more(self):
        """Blocking (with the socket's timeout) read into the buffer, while serving a request."""
        try:
            data = self.sock.recv(65536)
        except OSError as err:
            raise ClientGone(str(err)) from err
        if not data:
            raise ClientGone("closed by peer")
        self.buf += data

    def take(self, size):
        while not self.buf:
            self.recv_more()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def take_line(self, limit=8192):
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[:end + 1])
                del self.buf[:end + 1]
                return line
            if len(self.buf) > limit:
                raise HttpError(400, "line too long in chunked body")
            self.recv_more()

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as err:
            raise ClientGone(str(err)) from err

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class RequestBody:
    """wsgi.input: the request body, framed by Content-Length or chunked transfer coding."""

    def __init__(self, conn, length=None, chunked=False):
        self.conn = conn
        self.remaining = length or 0  # bytes left in the body, or in the current chunk
        self.chunked = chunked
        self.done = not chunked and not length

    def _read_some(self, size):
        """Up to `size` bytes (size > 0), at least one unless the body is done."""
        if self.done:
            return b""
        if self.chunked and self.remaining == 0:
            line = self.conn.take_line()
            try:
                self.remaining = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(400, "bad chunk size") from None
            if self.remaining == 0:
                while self.conn.take_line() not in (b"\r\n", b"\n"):
                    pass  # trailers are ignored
                self.done = True
                return b""
        data = self.conn.take(min(size, self.remaining))
        self.remaining -= len(data)
        if self.remaining == 0:
            if self.chunked:
                if self.conn.take_line() not in (b"\r\n", b"\n"):
                    raise HttpError(400, "chunk not followed by CRLF")
            else:
                self.done = True
        return data

    def read(self, size=-1):
        if size is None or size < 0:
            parts = []
            while not self.done:
                parts.append(self._read_some(65536))
            return b"".join(parts)
        parts = []
        while size > 0 and not self.done:
            data = self._read_some(size)
            size -= len(data)
            parts.append(data)
        return b"".join(parts)

    def readline(self, size=-1):
        line = bytearray()
        while not self.done and (size is None or size < 0 or len(line) < size):
            byte = self.read(1)
            if not byte:
                break
            line += byte
            if byte == b"\n":
                break
        return bytes(line)

    def readlines(self, hint=-1):
        return list(iter(self.readline, b""))

    def __iter__(self):
        return iter(self.readline, b"")

    def drain(self):
        """Read and drop what the app left unread; False if that is too much to keep the connection."""
        dropped = 0
        while not self.done:
            dropped += len(self._read_some(65536))
            if dropped > MAX_DRAIN_BYTES:
                return False
        return True


# ---------------------------------------------------------------------------------------------------
# one request


def parse_head(head):
    """Request line and headers of one request head (bytes, without the blank line)."""
    lines = head.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("latin-1").split(" ")
    except ValueError:
        raise HttpError(400, "bad request line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505 if version.startswith("HTTP/") else 400, "bad version")
    if not method.isalpha() or not target:
        raise HttpError(400, "bad request line")
    headers = []
    for raw in lines[1:]:
        if raw[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete header folding")
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise HttpError(400, "bad header line")
        headers.append((name.lower(), value.strip()))
    if len(headers) > MAX_HEADERS:
        raise HttpError(431, "too many headers")
    return method, target, version, headers


def build_environ(conn, method, target, version, headers):
    if target.startswith(("http://", "https://")):
        # absolute-form: keep only the path
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    path, _, query = target.partition("?")
    if conn.listener.family == socket.AF_UNIX:
        server_name, server_port, remote = "localhost", "80", ""
    else:
        server_name, server_port = conn.listener.getsockname()[:2]
        remote = conn.peer[0] if conn.peer else ""
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": str(server_name),
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": version,
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "REMOTE_ADDR": remote,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for name, value in headers:
        if "_" in name:
            continue  # X_Forwarded_For would collide with X-Forwarded-For: drop it, as gunicorn does
        if name == "content-type":
            key = "CONTENT_TYPE"
        elif name == "content-length":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        if key in environ:
            environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
        else:
            environ[key] = value
    return environ


def body_framing(headers):
    """(content_length, chunked) from the request headers; rejects ambiguous framing (smuggling)."""
    lengths = {v for n, v in headers if n == "content-length"}
    codings = [v.lower() for n, v in headers if n == "transfer-encoding"]
    if codings:
        if lengths:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if codings != ["chunked"]:
            raise HttpError(501, "unsupported transfer coding")
        return None, True
    if len(lengths) > 1:
        raise HttpError(400, "conflicting Content-Length")
    if lengths:
        value = lengths.pop()
        if not value.isdigit():
            raise HttpError(400, "bad Content-Length")
        return int(value), False
    return None, False


_date_cache = [0, ""]


def http_date():
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]


class Exchange:
    """Runs the app for one request and writes its response with the right framing."""

    def __init__(self, conn, method, version, environ, closing, stopping):
        self.conn = conn
        self.stopping = stopping  # callable: has a SIGTERM arrived meanwhile?
        self.method = method
        self.version = version
        self.environ = environ
        self.keep_alive = not closing
        self.status = None
        self.headers = None
        self.sent_headers = False
        self.framing = None
        self.length_left = None
        self.bytes_out = 0

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.sent_headers:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        self.status = status
        self.headers = list(headers)
        return self.write

    def _send_headers(self, first_chunk, only_chunk):
        code = int(self.status[:3])
        out = []
        length = None
        for name, value in self.headers:
            lower = name.lower()
            if lower == "connection" and "close" in value.lower():
                self.keep_alive = False
            if lower in HOP_BY_HOP:
                continue
            if lower == "content-length":
                length = int(value)
            out.append(f"{name}: {value}\r\n")
        no_body = self.method == "HEAD" or code in (204, 304) or code < 200
        if length is not None:
            self.framing, self.length_left = "length", length
        elif no_body:
            self.framing = "none"
        elif only_chunk:
            # The whole body is already here: say how long it is instead of chunking it.
            self.framing, self.length_left = "length", len(first_chunk)
            out.append(f"Content-Length: {len(first_chunk)}\r\n")
        elif self.version == "HTTP/1.1":
            self.framing = "chunked"
            out.append("Transfer-Encoding: chunked\r\n")
        else:
            self.framing = "close"
            self.keep_alive = False
        if self.version == "HTTP/1.0" or self.stopping():
            self.keep_alive = False
        out.append(f"Date: {http_date()}\r\n")
        if not self.keep_alive:
            out.append("Connection: close\r\n")
        head = f"HTTP/1.1 {self.status}\r\n{''.join(out)}\r\n".encode("latin-1")
        self.sent_headers = True
        return head

    def _frame(self, data):
        if self.method == "HEAD" or self.framing == "none":
            return b""
        if self.framing == "chunked":
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if self.framing == "length":
            if len(data) > self.length_left:
                data = data[:self.length_left]  # the app sent more than it announced
                self.keep_alive = False
            self.length_left -= len(data)
        return data

    def write(self, data, only_chunk=False):
        if self.status is None:
            raise AssertionError("write() before start_response()")
        head = b"" if self.sent_headers else self._send_headers(data, only_chunk)
        body = self._frame(data)
        self.bytes_out += len(body)
        if head or body:
            self.conn.send(head + body)

    def finish(self):
        if not self.sent_headers:
            self.write(b"", only_chunk=True)
        if self.framing == "chunked":
            self.conn.send(b"0\r\n\r\n")
        elif self.framing == "length" and self.length_left and self.method != "HEAD":
            self.keep_alive = False  # shorter than announced: the client can only tell by the close
        elif self.framing == "close":
            self.keep_alive = False

    def run(self, app):
        result = app(self.environ, self.start_response)
        try:
            if isinstance(result, (list, tuple)) and len(result) == 1:
                self.write(result[0], only_chunk=True)
            else:
                for data in result:
                    if data:
                        self.write(data)
            self.finish()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


def error_response(status, keep_alive=False):
    status = HTTPStatus(status)
    body = f"{status.value} {status.phrase}\n".encode()
    connection = "" if keep_alive else "Connection: close\r\n"
    return (f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nDate: {http_date()}\r\n{connection}\r\n").encode() + body


# ---------------------------------------------------------------------------------------------------
# the server loop


class Server:
    def __init__(self, app, listeners, access_log=True):
        self.app = app
        self.listeners = listeners
        self.access_log = access_log
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.idle = set()  # connections in the selector, waiting for (the rest of) a request head
        self.ready = deque()  # connections with a complete request head, in arrival order
        self.watchdog = watchdog_interval()
        self.next_watchdog = time.monotonic()
        self._wakeup_r, wakeup_w = socket.socketpair()
        self._wakeup_w = wakeup_w  # kept referenced: the signal machinery writes to its fd
        for sock in (self._wakeup_r, wakeup_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(wakeup_w.fileno(), warn_on_full_buffer=False)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, "wakeup")
        for sock in listeners:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, sock)

    def stop(self, *_):
        self.stopping = True

    def run(self):
        while not self.stopping:
            for key, _ in self.selector.select(0 if self.ready else self._timeout()):
                if key.data == "wakeup":
                    self._drain_wakeup()
                elif isinstance(key.data, Connection):
                    self._on_readable(key.data)
                else:
                    self._accept(key.data)
            self._expire()
            self._ping_watchdog()
            if self.ready and not self.stopping:
                self._serve(self.ready.popleft())
        # Requests already received are answered; everything else is closed.
        while self.ready:
            self._serve(self.ready.popleft())
        for conn in list(self.idle):
            self._forget(conn)

    def _timeout(self):
        deadlines = [c.deadline() for c in self.idle]
        if self.watchdog:
            deadlines.append(self.next_watchdog)
        if not deadlines:
            return None  # nothing to time: sleep until a socket or signal wakes us
        return max(0.0, min(deadlines) - time.monotonic())

    def _drain_wakeup(self):
        try:
            while self._wakeup_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _accept(self, listener):
        try:
            sock, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # another replica sharing this socket took it
        except OSError as err:
            log(f"accept on {describe(listener)}: {err}")
            return
        conn = Connection(sock, peer, listener)
        if len(self.idle) >= MAX_IDLE_CONNECTIONS:
            self._forget(min(self.idle, key=lambda c: c.last_active))
        self.idle.add(conn)
        self.selector.register(sock, selectors.EVENT_READ, conn)

    def _on_readable(self, conn):
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._forget(conn)
            return
        if conn.head_started is None:
            conn.head_started = time.monotonic()
        conn.buf += data
        self._check_head(conn)

    def _check_head(self, conn):
        while conn.buf[:2] == b"\r\n":
            del conn.buf[:2]  # blank lines before a request line are allowed (RFC 9112 2.2)
        if conn.head_complete():
            self.idle.discard(conn)
            self.selector.unregister(conn.sock)
            self.ready.append(conn)
        elif len(conn.buf) > MAX_HEAD_BYTES:
            self._reject(conn, 431)
        elif not conn.buf:
            conn.head_started = None

    def _expire(self):
        now = time.monotonic()
        for conn in [c for c in self.idle if c.deadline() <= now]:
            if conn.head_started is not None:
                self._reject(conn, 408)
            else:
                self._forget(conn)

    def _ping_watchdog(self):
        if self.watchdog and time.monotonic() >= self.next_watchdog:
            notify("WATCHDOG=1")
            self.next_watchdog = time.monotonic() + self.watchdog

    def _forget(self, conn):
        if conn in self.idle:
            self.idle.discard(conn)
            self.selector.unregister(conn.sock)
        conn.close()

    def _reject(self, conn, status):
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(1.0)
            conn.sock.sendall(error_response(status))
        except OSError:
            pass
        self._forget(conn)

    def _serve(self, conn):
        conn.sock.settimeout(IO_TIMEOUT)
        keep = False
        try:
            keep = self._one_request(conn)
        except ClientGone:
            pass
        if keep and not self.stopping:
            conn.sock.setblocking(False)
            conn.last_active = time.monotonic()
            conn.head_started = None
            self.idle.add(conn)
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
            if conn.buf:
                conn.head_started = conn.last_active
                self._check_head(conn)  # a pipelined request already arrived
        else:
            conn.close()

    def _one_request(self, conn):
        """Answer one request; True if the connection can carry another."""
        started = time.monotonic()
        end = conn.buf.find(b"\r\n\r\n")
        head = bytes(conn.buf[:end])
        del conn.buf[:end + 4]
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        try:
            method, target, version, headers = parse_head(head)
            length, chunked = body_framing(headers)
        except HttpError as err:
            conn.send(error_response(err.status))
            self._log(conn, request_line, err.status.value, 0, started)
            return False
        if version == "HTTP/1.1" and any(n == "expect" and v.lower() == "100-continue" for n, v in headers):
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        closing = self.stopping or any(n == "connection" and "close" in v.lower() for n, v in headers)
        environ = build_environ(conn, method, target, version, headers)
        body = RequestBody(conn, length, chunked)
        environ["wsgi.input"] = body
        exchange = Exchange(conn, method, version, environ, closing, lambda: self.stopping)
        try:
            exchange.run(self.app)
        except ClientGone:
            raise
        except HttpError as err:  # a malformed body, found while the app read it
            if not exchange.sent_headers:
                conn.send(error_response(err.status))
            self._log(conn, request_line, err.status.value, 0, started)
            return False
        except Exception:  # the app failed: 500 if we still can, else cut the response short
            traceback.print_exc(file=sys.stderr)
            if not exchange.sent_headers:
                conn.send(error_response(500))
            self._log(conn, request_line, 500, exchange.bytes_out, started)
            return False
        keep = exchange.keep_alive and not self.stopping
        if keep:
            try:
                keep = body.drain()
            except HttpError:
                keep = False
        status = int(exchange.status[:3]) if exchange.status else 0
        self._log(conn, request_line, status, exchange.bytes_out, started)
        return keep

    def _log(self, conn, request_line, status, size, started):
        if not self.access_log:
            return
        peer = conn.peer[0] if isinstance(conn.peer, tuple) and conn.peer else "unix"
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        elapsed = time.monotonic() - started
        sys.stderr.write(f'{peer} - - [{stamp}] "{request_line}" {status} {size} {elapsed:.6f}\n')


# ---------------------------------------------------------------------------------------------------
# template mode


def receive_request(conn):
    """The fds (SCM_RIGHTS on the first bytes) and the one-line JSON request that `stackinit fork-from` sends."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(64 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - (len(payload) % fds.itemsize)])
    data = bytearray(data)
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError("request cut short")
        data += chunk
    return list(fds), json.loads(data.split(b"\n", 1)[0])


def become_worker(app, fds, request, access_log, close_first, handover):
    """In the forked worker: take over the replica's fds, environment and directory, then serve. Never returns."""
    global NOTIFY_SOCKET
    code = 1
    try:
        # Its process group is the middle process's new one (see fork_worker), which stackinit signals on stop.
        for sock in close_first:
            sock.close()
        # Move the received fds above the target range first, so no dup2 clobbers a later source.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, len(fds) + 3) for fd in fds]
        for fd in fds:
            os.close(fd)
        for target, fd in enumerate(high):
            os.dup2(fd, target, inheritable=target < 3)
            os.close(fd)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        env = request.get("env") or {}
        os.environ.clear()
        os.environ.update(env)
        os.environ["LISTEN_PID"] = str(os.getpid())
        NOTIFY_SOCKET = os.environ.pop("NOTIFY_SOCKET", None)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        stop_requested = []
        signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
        listeners = inherited_listeners()
        if not listeners:
            log("forked worker: no LISTEN_FDS socket came with the request")
            os._exit(2)
        server = Server(app, listeners, access_log=access_log)
        signal.signal(signal.SIGTERM, server.stop)
        if stop_requested:
            os._exit(0)
        # `stackinit fork-from` reports MAINPID= and READY=1, then says "go" on the connection. If it dies
        # before that, stackinit never learnt this pid: serving would leave an untracked worker behind.
        handover.settimeout(30.0)
        try:
            go = handover.recv(16)
        except OSError:
            go = b""
        handover.close()
        if not go.startswith(b"go"):
            log("the replica's fork-from exited before handing over; not serving")
            os._exit(0)
        log(f"forked worker for replica {os.environ.get('STACKINIT_REPLICA', '?')}; serving "
            + ", ".join(describe(s) for s in listeners))
        server.run()
        code = 0
    except BaseException:  # noqa: BLE001 - the worker must never fall back into the template's loop
        traceback.print_exc(file=sys.stderr)
    finally:
        os._exit(code)


def fork_worker(app, fds, request, access_log, control, conn):
    """Double fork, so the worker is re-parented to stackinit; returns the worker's pid."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            # A new session before the worker exists: the worker is never in the template's process group,
            # which stackinit would otherwise signal (SIGKILL to the group) when the worker's replica stops.
            os.setsid()
            worker = os.fork()
            if worker == 0:
                os.close(w)
                become_worker(app, fds, request, access_log, [control], conn)
            os.write(w, str(worker).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(middle, 0)  # once the middle process is gone, the worker is stackinit's child
    return int(answer)


def warm_up(app, path):
    """Serve one GET in-process before forking, so what the first request loads lazily (templates, URL
    resolvers, more modules) is loaded once in the template and shared, not paid by every new worker."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "localhost",
               "REMOTE_ADDR": "127.0.0.1", "wsgi.version": (1, 0), "wsgi.input": io.BytesIO(),
               "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http", "wsgi.multithread": False,
               "wsgi.multiprocess": True, "wsgi.run_once": False}
    status = []
    try:
        result = app(environ, lambda s, headers, exc_info=None: status.append(s))
        try:
            for _ in result:
                pass
        finally:
            if hasattr(result, "close"):
                result.close()  # Django closes its database connections here: none may cross the fork
        log(f"warm-up GET {path}: {status[0] if status else 'no status'}")
    except Exception as err:  # noqa: BLE001 - a failed warm-up only costs the first request its head start
        log(f"warm-up GET {path} failed: {err}")


def exit_now(*_):
    """SIGTERM in the template: raising from the handler ends the blocking accept() at once."""
    raise SystemExit(0)


def template_main(args):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    listeners = inherited_listeners()
    if len(listeners) != 1 or listeners[0].family != socket.AF_UNIX:
        log("--template needs exactly one unix socket from stackinit (listen = \"unix:/run/...\")")
        return 2
    control = listeners[0]
    sys.path.insert(0, os.getcwd())
    app = load_app(args.app)
    if args.warm_up:
        warm_up(app, args.warm_up)
    # Forked workers inherit a frozen heap: no collection in them scans it (no 30-40 ms pauses) or touches
    # its pages (they stay shared with the template).
    freeze_heap()
    if stop:
        return 0
    control.settimeout(None)
    signal.signal(signal.SIGTERM, exit_now)
    log(f"loaded {args.app}; forking workers on {describe(control)}")
    notify(f"READY=1\nSTATUS=template: {args.app} loaded")
    forked = 0
    while True:
        conn, _ = control.accept()
        fds = []
        try:
            conn.settimeout(10.0)
            fds, request = receive_request(conn)
            if len(fds) < 4:
                raise ValueError(f"expected stdio and at least one socket, got {len(fds)} fds")
            pid = fork_worker(app, fds, request, not args.no_access_log, control, conn)
            forked += 1
            conn.sendall(f"{pid}\n".encode())
            notify(f"STATUS=template: {args.app} loaded; {forked} workers forked")
        except Exception as err:  # noqa: BLE001 - a bad request must not end the template
            log(f"fork request failed: {err}")
            try:
                conn.sendall(f"error: {err}\n".encode())
            except OSError:
                pass
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            conn.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", help="MODULE:CALLABLE, e.g. mysite.wsgi:application")
    parser.add_argument("--bind", action="append", default=[],
                        help="also listen on unix:/path or HOST:PORT (for runs without a supervisor)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log each request to stderr")
    parser.add_argument("--template", action="store_true",
                        help="load the app once and fork workers for `stackinit fork-from` on the inherited socket")
    parser.add_argument("--warm-up", metavar="PATH",
                        help="with --template: serve one GET PATH in-process before forking (e.g. /)")
    args = parser.parse_args(argv)
    if args.template:
        return template_main(args)

    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))

    listeners = inherited_listeners() + [bind_listener(a) for a in args.bind]
    if not listeners:
        log("no socket to serve: expected LISTEN_FDS/LISTEN_PID from stackinit, or --bind")
        return 2
    # Like gunicorn: the working directory is importable, so `mysite.wsgi` resolves from /srv/app.
    sys.path.insert(0, os.getcwd())
    app = load_app(args.app)
    freeze_heap()

    server = Server(app, listeners, access_log=not args.no_access_log)
    signal.signal(signal.SIGTERM, server.stop)
    if stop_requested:
        return 0
    names = ", ".join(describe(s) for s in listeners)
    log(f"loaded {args.app}; serving {names}")
    notify(f"READY=1\nSTATUS=serving {names}\nMAINPID={os.getpid()}")
    server.run()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
