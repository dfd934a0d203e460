"""Benchmark: wall time of `roomsync --help` (target ≤ 300 ms).

Runs the installed console script (falling back to `python -m agent`) repeatedly in fresh
processes and prints the figures; it is not a pass/fail test.

    .venv/bin/python bench/cli_help.py [--runs 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    script = Path(sys.executable).parent / "roomsync"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "agent"]
    if not script.exists() and shutil.which("roomsync"):
        cmd = [shutil.which("roomsync")]
    subprocess.run([*cmd, "--help"], capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--help"], capture_output=True, check=True)
        times.append((time.perf_counter() - t0) * 1000)
    baseline = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=True)
        baseline.append((time.perf_counter() - t0) * 1000)
    print(f"roomsync --help ({' '.join(cmd)}), {args.runs} runs")
    print(
        f"  median {statistics.median(times):.1f} ms   min {min(times):.1f} ms   "
        f"max {max(times):.1f} ms   (target <= 300 ms)"
    )
    print(f"  bare interpreter start: median {statistics.median(baseline):.1f} ms")


if __name__ == "__main__":
    main()
