#!/usr/bin/env python3
"""A fake EC2 instance metadata service (IMDSv2) for one guest connection, on stdin/stdout.

QEMU's user-mode network runs it once per guest connection to the forwarded address
(`-netdev user,guestfwd=tcp:10.0.2.100:80-cmd:python3 image_imds.py FACTS.json LOG`), so each VM of
the image boot tests gets its own instance facts with nothing listening on the host at all.

    image_imds.py FACTS_JSON [LOG]

FACTS_JSON maps metadata keys (instance-id, local-ipv4, local-hostname, public-ipv4, public-hostname)
to values, and "user-data" to the launch's user data (`GET /latest/user-data`). IMDSv2 only: `PUT /latest/api/token` with X-aws-ec2-metadata-token-ttl-seconds gives a token;
`GET /latest/meta-data/KEY` needs it (401 without). Serves keep-alive requests until the guest closes.
Each request is appended to LOG as "METHOD PATH STATUS".
"""
import json
import sys

TOKEN = "fake-imds-token"


def read_head(stream):
    lines = []
    while True:
        line = stream.readline()
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return lines
        lines.append(line.decode("latin-1").rstrip("\r\n"))


def main():
    facts = json.load(open(sys.argv[1]))
    log = open(sys.argv[2], "a") if len(sys.argv) > 2 else None
    rfile, wfile = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = read_head(rfile)
        if not head:
            return
        method, path = head[0].split()[:2]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length:
            rfile.read(length)
        if method == "PUT" and path == "/latest/api/token":
            if "x-aws-ec2-metadata-token-ttl-seconds" in headers:
                status, body = 200, TOKEN
            else:
                status, body = 400, "missing X-aws-ec2-metadata-token-ttl-seconds"
        elif method == "GET" and path == "/latest/user-data":
            # EC2 answers 404 when the launch had no user data.
            if headers.get("x-aws-ec2-metadata-token") != TOKEN:
                status, body = 401, "IMDSv2 token required"
            elif "user-data" in facts:
                status, body = 200, facts["user-data"]
            else:
                status, body = 404, "not found"
        elif method == "GET" and path.startswith("/latest/meta-data/"):
            key = path[len("/latest/meta-data/"):]
            if headers.get("x-aws-ec2-metadata-token") != TOKEN:
                status, body = 401, "IMDSv2 token required"
            elif key in facts:
                status, body = 200, str(facts[key])
            else:
                status, body = 404, "not found"
        else:
            status, body = 404, "not found"
        if log:
            log.write(f"{method} {path} {status}\n")
            log.flush()
        data = body.encode()
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}[status]
        wfile.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data
        )
        wfile.flush()
        if headers.get("connection", "").lower() == "close":
            return


if __name__ == "__main__":
    main()
