#!/usr/bin/env python3
"""The fast-request probe of benches/app/run.sh: each request's own latency, nothing synthetic.

    probe.py HOST:PORT PATH SECONDS OUT [--nice N]

One keep-alive HTTP/1.1 connection sends GET PATH back to back for SECONDS, and writes one line per
request to OUT: `<start, ns since the epoch> <latency µs> <status>`. The latency runs from just before
the request is written to the last byte of the response. Unlike wrk's percentiles there is no
coordinated-omission correction: a 150 ms response is one sample of 150 ms, not ~75 synthetic ones,
so the tail says what a client saw, request by request (and can be matched with the proxy's access log
by time; the User-Agent is `probe`).

`--nice N` (as root) puts the probe in its own session and sets that session's autogroup to nice N too:
with kernel.sched_autogroup_enabled=1 a process's nice alone does nothing against other sessions' CPU-bound
workers, and the probe stands in for a client on another machine, which would not wait for their CPU.
"""
import argparse
import os
import socket
import sys
import time


def raise_priority(nice):
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError as err:
        print(f"probe: autogroup nice not set: {err}", file=sys.stderr)
    os.setpriority(os.PRIO_PROCESS, 0, nice)


def read_response(sock, buf):
    """Read one response (a Content-Length or chunked body); return (status, the bytes left over, whether the
    server closes the connection after it)."""
    def fill(buf):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        return buf + chunk

    while b"\r\n\r\n" not in buf:
        buf = fill(buf)
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    if not chunked:
        while len(rest) < length:
            rest = fill(rest)
        return status, rest[length:], close
    while True:  # chunks, then the last (empty) chunk and the blank line after it (no trailers sent here)
        while b"\r\n" not in rest:
            rest = fill(rest)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(rest) < size + 2:
            rest = fill(rest)
        rest = rest[size + 2:]
        if size == 0:
            return status, rest, close


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("path")
    parser.add_argument("seconds", type=float)
    parser.add_argument("out")
    parser.add_argument("--nice", type=int)
    args = parser.parse_args()
    if args.nice is not None:
        raise_priority(args.nice)
    host, _, port = args.address.rpartition(":")
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.address}\r\nUser-Agent: probe\r\n"
               "Accept: */*\r\n\r\n").encode()
    samples = []
    clock, wall = time.perf_counter_ns, time.time_ns
    def connect():
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    # A server may end a keep-alive connection (nginx after `keepalive_requests`, 1000): the probe then
    # connects again before the next request, outside its clock.
    sock, buf = connect(), b""
    end = clock() + int(args.seconds * 1e9)
    while clock() < end:
        started_wall, started = wall(), clock()
        sock.sendall(request)
        status, buf, close = read_response(sock, buf)
        samples.append((started_wall, (clock() - started) // 1000, status))
        if close:
            sock.close()
            sock, buf = connect(), b""
    sock.close()
    with open(args.out, "w") as out:
        out.writelines(f"{w} {us} {s}\n" for w, us, s in samples)


if __name__ == "__main__":
    main()
