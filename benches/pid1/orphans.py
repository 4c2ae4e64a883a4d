#!/usr/bin/env python3
"""Make N orphans that exit at once, then time from the last one until PID 1 has reaped every one
(no Z left in /proc). Forking 2000 processes from Python takes seconds and is not what is measured.

Runs as a child of the PID 1 under test, in a PID namespace with its own /proc. Prints the seconds.
"""
import os
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
out = sys.argv[2] if len(sys.argv) > 2 else None


def zombies():
    count = 0
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(')') + 2] == 'Z':
            count += 1
    return count


t0 = time.monotonic()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os._exit(0)  # the grandchild: an orphan of PID 1 as soon as its parent exits
        os._exit(0)
    os.waitpid(pid, 0)
made = time.monotonic()
while zombies():
    time.sleep(0.0005)
done = time.monotonic()
line = f'{n} orphans: made in {made - t0:.4f} s, all reaped {done - made:.4f} s after the last\n'
if out:
    with open(out, 'w') as f:
        f.write(f'{done - made:.6f}\n')
sys.stdout.write(line)
