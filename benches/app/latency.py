#!/usr/bin/env python3
"""Numbers for benches/app/run.sh, from the probe's per-request files and the proxy's access log.

    latency.py probe FILE...            -> "count p50 p99 p99.9 max" (ms) of the probe's own latencies
    latency.py ends FILE...             -> "max-before max-last" (ms): the slowest probe request that started
                                           in the last 0.5 s of the run (when wrk stops and drops its
                                           connections) and the slowest before that
    latency.py log ACCESS_LOG FROM      -> the same from the proxy's $request_time for the probe's lines
                                           (User-Agent `probe`) after line FROM, then the largest
                                           upstream_time and queue_time among them
    latency.py summary RESULTS [BASE]   -> median and range over the runs, per stack (RESULTS: one line
                                           per stack and run: run stack rps p50 p99 p99.9 max), and the
                                           ratios to stack BASE (default: seed) in the same run

Percentiles are nearest-rank over every request; nothing is corrected or synthesised.
"""
import statistics
import sys


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # nearest rank, ceil(n * q / 100)
    return sorted_values[int(rank) - 1]


def describe(ms):
    ms = sorted(ms)
    return f"{len(ms)} {percentile(ms, 50):.2f} {percentile(ms, 99):.2f} {percentile(ms, 99.9):.2f} {ms[-1] if ms else float('nan'):.2f}"


def probe(files):
    ms = []
    for name in files:
        with open(name) as f:
            ms.extend(int(line.split()[1]) / 1000 for line in f if line.strip())
    print(describe(ms))


def ends(files, last_ns=500_000_000):
    samples = []
    for name in files:
        with open(name) as f:
            samples.extend((int(w), int(us) / 1000) for w, us, _ in (line.split() for line in f if line.strip()))
    if not samples:
        print("nan nan")
        return
    cut = max(w for w, _ in samples) - last_ns
    before = [ms for w, ms in samples if w < cut]
    last = [ms for w, ms in samples if w >= cut]
    print(f"{max(before, default=0):.2f} {max(last, default=0):.2f}")


def log(path, start):
    request, upstream, queue = [], [], []
    with open(path, errors="replace") as f:
        for i, line in enumerate(f):
            if i < start or '"probe"' not in line:
                continue
            fields = line.split()
            request.append(float(fields[-3]) * 1000)
            if fields[-2] != "-":
                upstream.append(float(fields[-2]) * 1000)
            if fields[-1] != "-":
                queue.append(float(fields[-1]) * 1000)
    print(describe(request), f"{max(upstream, default=0):.0f} {max(queue, default=0):.0f}")


def summary(path, base="seed"):
    runs = {}
    with open(path) as f:
        for line in f:
            run, stack, *values = line.split()
            runs.setdefault(stack, []).append((int(run), [float(v) for v in values]))
    seed = {run: v for run, v in runs.get(base, [])}
    names = ["rps", "p50", "p99", "p99.9", "max"]

    def spread(values, fmt):
        return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"

    print(f"{'stack':<12} {'rps':>18} {'fast p50 ms':>18} {'fast p99 ms':>18} {'fast p99.9 ms':>20}"
          f" {'fast max ms':>20} {'rps/' + base:>18} {'p99/' + base:>18}")
    for stack, rows in runs.items():
        cols = [[v[i] for _, v in rows] for i in range(len(names))]
        rps_ratio = [v[0] / seed[r][0] for r, v in rows if r in seed]
        p99_ratio = [v[2] / seed[r][2] for r, v in rows if r in seed]
        print(f"{stack:<12} {spread(cols[0], '{:.0f}'):>18} {spread(cols[1], '{:.2f}'):>18}"
              f" {spread(cols[2], '{:.2f}'):>18} {spread(cols[3], '{:.1f}'):>20} {spread(cols[4], '{:.1f}'):>20}"
              f" {spread(rps_ratio, '{:.2f}'):>18} {spread(p99_ratio, '{:.2f}'):>18}")


def main():
    what, args = sys.argv[1], sys.argv[2:]
    if what == "probe":
        probe(args)
    elif what == "ends":
        ends(args)
    elif what == "log":
        log(args[0], int(args[1]))
    elif what == "summary":
        summary(*args[:2])
    else:
        sys.exit(f"latency.py: unknown command {what}")


if __name__ == "__main__":
    main()
