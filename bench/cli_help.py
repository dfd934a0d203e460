"""Benchmark: wall time of `roomsync --help` (target ≤ 300 ms), beside its floor.

Runs the installed console script (falling back to `python -m agent`) repeatedly in fresh
processes and prints the figures; it is not a pass/fail test. The floor, measured in the same
run: `python -c pass` with the same interpreter, each run right after a `--help` (this machine
is shared and noisy: the ratio holds where a bare time drifts).

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
    subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=True)
    times, baseline, ratios = [], [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--help"], capture_output=True, check=True)
        t1 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=True)
        t2 = time.perf_counter()
        times.append((t1 - t0) * 1000)
        baseline.append((t2 - t1) * 1000)
        ratios.append((t1 - t0) / (t2 - t1))
    print(f"roomsync --help ({' '.join(cmd)}), {args.runs} runs, each beside its floor")
    print(
        f"  --help                 median {statistics.median(times):6.1f} ms   min {min(times):6.1f}   "
        f"max {max(times):6.1f}   (target <= 300 ms)"
    )
    print(
        f"  floor: python -c pass  median {statistics.median(baseline):6.1f} ms   min {min(baseline):6.1f}   "
        f"max {max(baseline):6.1f}"
    )
    print(
        f"  ratio --help / floor   median {statistics.median(ratios):6.2f} x    min {min(ratios):6.2f}   "
        f"max {max(ratios):6.2f}   (per run)"
    )


if __name__ == "__main__":
    main()
