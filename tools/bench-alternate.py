#!/usr/bin/env python3
"""Times two SQLite images (e.g. built from two commits) against each other.

Usage: tools/bench-alternate.py OLD_IMAGE NEW_IMAGE [RUNS]

Runs each image RUNS times (default 31) with its default workload (5000
INSERTs), alternating which goes first, and prints the medians of the
`elapsed_s` each prints and their ratio new/old. `flexos bench sqlite`
compares configurations of one checkout; this compares builds of two.
"""
import statistics
import subprocess
import sys


def elapsed(image):
    out = subprocess.run([image], capture_output=True, text=True, timeout=120).stdout
    for line in out.splitlines():
        if line.startswith("elapsed_s:"):
            return float(line.split()[1])
    sys.exit(f"{image}: no elapsed_s in its output:\n{out}")


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    old, new = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) == 4 else 31
    o, n = [], []
    for i in range(runs):
        first, second = ((old, o), (new, n)) if i % 2 == 0 else ((new, n), (old, o))
        first[1].append(elapsed(first[0]))
        second[1].append(elapsed(second[0]))
    mo, mn = statistics.median(o), statistics.median(n)
    print(f"old median {mo * 1000:.2f} ms, new median {mn * 1000:.2f} ms, new/old {mn / mo:.3f} "
          f"(min {min(o) * 1000:.2f} / {min(n) * 1000:.2f} ms, {runs} runs each)")


if __name__ == "__main__":
    main()
