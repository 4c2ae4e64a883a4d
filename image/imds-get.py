#!/usr/bin/python3
"""imds-get KEY: print one instance-metadata value (IMDSv2: a token first, then the GET).

    imds-get public-keys/0/openssh-key

Exit 0 with the value on stdout; 1 when IMDS has no such key (404); 2 when IMDS cannot be reached or
refuses. The endpoint is $STACKINIT_IMDS_ENDPOINT (what install.sh baked into the image), else the real
one, 169.254.169.254. Used by the firstboot job for what stackinit's own instance facts do not carry.
"""
import os
import sys
import urllib.error
import urllib.request

ENDPOINT = os.environ.get("STACKINIT_IMDS_ENDPOINT") or "http://169.254.169.254"
TIMEOUT = 10  # seconds: a stand-in IMDS (QEMU guestfwd spawning a program) is slow to answer
# Never through a proxy: IMDS refuses tokens to proxied requests, and a proxy has no business seeing them.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(method, path, headers):
    request = urllib.request.Request(ENDPOINT.rstrip("/") + path, method=method, headers=headers)
    with OPENER.open(request, timeout=TIMEOUT) as reply:
        return reply.read().decode()


def main(argv):
    if len(argv) != 1:
        sys.exit("usage: imds-get KEY")
    try:
        token = call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        value = call("GET", "/latest/meta-data/" + argv[0], {"X-aws-ec2-metadata-token": token})
    except urllib.error.HTTPError as err:
        print(f"imds-get: {argv[0]}: HTTP {err.code}", file=sys.stderr)
        return 1 if err.code == 404 else 2
    except (OSError, ValueError) as err:
        print(f"imds-get: {ENDPOINT}: {err}", file=sys.stderr)
        return 2
    print(value)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
