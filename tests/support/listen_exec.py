#!/usr/bin/env python3
"""Run a command with listening sockets passed the systemd way, as stackinit passes them.

    listen_exec.py [--listen unix:/path | --listen HOST:PORT | --fd N]... -- COMMAND [ARGS...]

Binds each --listen address (TCP port 0 picks a free port), takes each --fd as an already listening
socket inherited from the caller, moves them to fds 3.., sets LISTEN_FDS, LISTEN_FDNAMES and
LISTEN_PID (our own pid, which exec keeps), and execs COMMAND. Before exec it prints one line per
socket on stdout, `LISTEN <address>`, then flushes, so a test can learn the port it got.
A test helper: stdlib only.
"""
import fcntl
import os
import socket
import sys


def bind(address):
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        name = f"unix:{path}"
    else:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        bound = sock.getsockname()
        name = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
    sock.listen(128)
    return sock, name


def main(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    if not command or len(options) % 2:
        sys.exit(__doc__)
    fds, names = [], []
    for flag, value in zip(options[::2], options[1::2]):
        if flag == "--listen":
            sock, name = bind(value)
            fds.append(sock.detach())
        elif flag == "--fd":
            fds.append(int(value))
            name = f"fd:{value}"
        else:
            sys.exit(f"unknown option {flag}\n{__doc__}")
        names.append(name)
    # Copy the sockets above the target range first, so that moving them to 3.. never clobbers one.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + len(fds)) for fd in fds]
    for fd in fds:
        os.close(fd)
    for index, fd in enumerate(high):
        os.dup2(fd, 3 + index, inheritable=True)
        os.close(fd)
    for name in names:
        print(f"LISTEN {name}")
    sys.stdout.flush()
    os.environ["LISTEN_FDS"] = str(len(high))
    os.environ["LISTEN_FDNAMES"] = ":".join(f"s{i}" for i in range(len(high)))
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
