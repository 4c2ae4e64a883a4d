#!/usr/bin/env python3
"""A tiny notify-type service for the watchdog test. Stdlib only.

    e2e_watchdog_service.py STARTS_FILE READY_DELAY_S PINGS

Appends its pid to STARTS_FILE (one line per start), waits READY_DELAY_S, sends READY=1 and a STATUS=
line to $NOTIFY_SOCKET, then WATCHDOG=1 PINGS times at a quarter of WATCHDOG_USEC, then stops pinging
but stays alive (a hung service), so only the watchdog can end it.
"""
import os
import socket
import sys
import time


def notify(message):
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def main():
    starts_file, delay, pings = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    with open(starts_file, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    if not usec:
        sys.exit("no WATCHDOG_USEC in the environment")
    time.sleep(delay)
    notify(f"READY=1\nSTATUS=pinging {pings} times")
    for i in range(pings):
        time.sleep(usec / 4e6)
        notify("WATCHDOG=1")
    notify("STATUS=hung: no more pings")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
