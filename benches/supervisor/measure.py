#!/usr/bin/env python3
"""Measure one supervisor (stackinit or supervisord) running N services; print the figures as JSON.

Called by benches/supervisor/run.sh, which writes the configs. Stdlib only.

    measure.py --kind stackinit|supervisord --socket SOCK --services N [--kills 20] [--idle 10]
               [--settle 1.1] [--only startup,wakeups,rss,restart,status] --pidfile FILE --status-cmd "CMD ..." -- SUPERVISOR ARGV...

Order, so that no probe disturbs another: start the supervisor and time it to all N `running` (state
from its own API: supervisord's XML-RPC, stackinit's /v1/status), settle, count its context switches
(all threads) over --idle seconds with nothing talking to it, read its RSS, then kill -9 one service
--kills times and time each until a new process running its command appears (watched in /proc, so
the API is not polled meanwhile), then time --status-cmd 20 times. The
supervisor is stopped with SIGTERM (SIGKILL after 10 s) and any service process it leaves is killed
by pid. Figures that cannot be had are null with a reason in "errors".
"""
import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import xmlrpc.client

POLL_INTERVAL = 0.0002  # between /proc scans while timing a restart
# Between status polls while timing startup: an API call costs a Python supervisord several ms of its
# only thread, so polling faster would slow down what it measures. The figure is good to +- this.
STARTUP_POLL = 0.05


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=5):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def make_connection(self, host):
        return UnixHTTPConnection(self.path)


class SupervisordApi:
    def __init__(self, sock):
        self.rpc = xmlrpc.client.ServerProxy("http://localhost", transport=UnixTransport(sock))

    def all(self):
        return {p["name"]: (p["statename"].lower(), p["pid"] or None)
                for p in self.rpc.supervisor.getAllProcessInfo()}

    def one(self, name):
        p = self.rpc.supervisor.getProcessInfo(name)
        return p["statename"].lower(), p["pid"] or None


class StackinitApi:
    def __init__(self, sock):
        self.sock = sock
        self.conn = None

    def _get(self, path):
        for attempt in (1, 2):  # one retry on a fresh connection if a kept-alive one was closed
            if self.conn is None:
                self.conn = UnixHTTPConnection(self.sock)
            try:
                self.conn.request("GET", path)
                resp = self.conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {path}: HTTP {resp.status}: {body[:200]!r}")
                return json.loads(body)
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise

    def all(self):
        return {s["name"]: (s["state"], s.get("pid")) for s in self._get("/v1/status")["services"]}

    def one(self, name):
        return self.all().get(name, ("missing", None))


def context_switches(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that just ended
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def children_of(pid):
    """Pids whose parent is `pid` (a /proc scan: this kernel has no /proc/PID/task/TID/children)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def pids():
    return {int(e) for e in os.listdir("/proc") if e.isdigit()}


def parent_and_cmdline(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None, None
    return int(stat[stat.rfind(")") + 2:].split()[1]), cmdline


def wait_for_child(parent, cmdline, seen, timeout):
    """A child of `parent` running `cmdline` (NUL-separated argv) that is not in `seen`; returns its pid.
    Pids that are something else are added to `seen`, except children of `parent` that have not
    exec'd yet (their cmdline is still the parent's)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        for pid in pids() - seen:
            ppid, cmd = parent_and_cmdline(pid)
            if ppid == parent and cmd == cmdline:
                return pid
            if ppid != parent:
                seen.add(pid)
        time.sleep(POLL_INTERVAL)
    raise SystemExit(f"no child of {parent} running {cmdline!r} within {timeout} s")


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["stackinit", "supervisord", "loop"], required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--services", type=int, default=100)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=1.1)
    ap.add_argument("--only", default="")
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--status-cmd", default="")
    ap.add_argument("--log", required=True)
    ap.add_argument("argv", nargs="+")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    want = (lambda figure: not only or figure in only)
    result = {"kind": args.kind, "errors": [], "startup_s": None, "rss_mib": None, "wakeups_per_s": None,
              "restart_ms": None, "restart_all_ms": None, "status_ms": None}

    log = open(args.log, "ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen(args.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    with open(args.pidfile, "w") as f:
        f.write(f"{proc.pid}\n")
    api = SupervisordApi(args.socket) if args.kind == "supervisord" else StackinitApi(args.socket)
    services = []
    if args.kind == "loop":
        # The floor of the restart measurement: a shell loop that respawns at once, timed the same way.
        try:
            wait_for_child(proc.pid, b"/bin/sleep\x00100000\x00", set(), 30)
            args.services = 1
            only = {"restart"}
            result["errors"] = []
            api = None
        except SystemExit:
            stop(proc, children_of(proc.pid))
            raise
    try:
        # (c) start -> all N running, by the supervisor's own account.
        deadline = time.monotonic() + 60
        api_ok = False
        while api is not None and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{args.kind} exited with {proc.returncode} during startup; see {args.log}")
            try:
                states = api.all()
                api_ok = True
            except (OSError, http.client.HTTPException, xmlrpc.client.Error, RuntimeError, ValueError):
                states = None
            if states is not None and sum(1 for s, _ in states.values() if s == "running") >= args.services:
                result["startup_s"] = time.perf_counter() - t0
                break
            if states is None and time.monotonic() > deadline - 50 and args.kind == "stackinit":
                # No control API after 10 s: fall back to counting service processes, for the
                # figures that need no API.
                running = sum(1 for k in children_of(proc.pid) if comm(k) == "sleep")
                if running >= args.services:
                    break
            time.sleep(STARTUP_POLL)
        else:
            if api is not None:
                raise SystemExit(f"{args.kind}: not all {args.services} services running within 60 s; "
                                 f"see {args.log}")
        if not api_ok and api is not None:
            result["errors"].append(f"no control API on {args.socket}: the startup and status figures need it")
        services = children_of(proc.pid)
        time.sleep(args.settle)

        # (d) idle wakeups: context switches of all its threads while nothing talks to it.
        if want("wakeups"):
            before = context_switches(proc.pid)
            time.sleep(args.idle)
            result["wakeups_per_s"] = (context_switches(proc.pid) - before) / args.idle

        # (b) RSS with N services.
        if want("rss"):
            result["rss_mib"] = rss_kib(proc.pid) / 1024

        # (a) crash -> restart: kill -9 s0's process, time until a new child of the supervisor has exec'd
        # s0's command. Watched in /proc, not through the API: a poll of supervisord's API wakes its
        # loop and reaps early, which would hide its one-second tick.
        if want("restart"):
            samples = []
            target = b"/bin/sleep\x00100000\x00"
            for _ in range(args.kills):
                pid = wait_for_child(proc.pid, target, set(), 30)
                # Up long enough that the crash counts as a crash of a stable process (stackinit's
                # backoff_reset is set to 1 s by run.sh), so every kill gets the immediate restart.
                time.sleep(args.settle)
                seen = pids()
                start = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                wait_for_child(proc.pid, target, seen, 30)
                samples.append((time.perf_counter() - start) * 1000)
            result["restart_ms"] = statistics.median(samples)
            result["restart_all_ms"] = [round(s, 2) for s in samples]

        # (e) status command latency.
        if want("status") and api_ok and args.status_cmd:
            cmd = args.status_cmd.split()
            samples = []
            for _ in range(20):
                start = time.perf_counter()
                out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
                samples.append((time.perf_counter() - start) * 1000)
                lines = out.stdout.count(b"\n")
                if lines < args.services:
                    raise SystemExit(f"{' '.join(cmd)} printed {lines} lines (exit {out.returncode}): "
                                     f"{out.stdout[:300]!r} {out.stderr[:300]!r}")
            result["status_ms"] = statistics.median(samples)
    finally:
        services = set(services) | set(children_of(proc.pid))
        stop(proc, services)
    print(json.dumps(result))


def stop(proc, services):
    """SIGTERM the supervisor (SIGKILL after 10 s), then kill -9 any of its services still alive."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in services:
        if alive(pid) and comm(pid) == "sleep":
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    main()
