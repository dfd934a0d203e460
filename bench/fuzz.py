"""The long fuzz run: every test of ``tests/fuzz/`` with a large example budget.

CI runs ``tests/fuzz/`` with a small, fixed, derandomized budget per test (hypothesis profile
``roomsync-fuzz-ci``, see ``tests/fuzz/__init__.py``). This script runs the same tests with
``FUZZ_EXAMPLES=N`` set, which selects the profile ``roomsync-fuzz-long``: ``N`` examples per
test, a fresh random seed per run, the same per-example deadline (a hang fails). It prints,
per test, the outcome, the examples run (explicit ``@example`` cases and shrinking included)
and the time taken, then the totals per area. Not a pass/fail benchmark of speed: its exit
status is pytest's (0 when no test failed).

    .venv/bin/python bench/fuzz.py                    # 2,000 examples per test
    .venv/bin/python bench/fuzz.py --examples 20000   # overnight
    .venv/bin/python bench/fuzz.py -k device_info --examples 50000
    .venv/bin/python bench/fuzz.py --seed 1234        # repeat an earlier run's examples

The same tests by hand: ``FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/fuzz -q``.

When a test fails, hypothesis prints the smallest falsifying input and a
``@reproduce_failure`` line; the seed of the run is printed at the top. Fix the parser, then
keep the input as an ``@example(...)`` on the test (or a plain test) so CI checks it for good.
Tests that mutate the recorded Rally Bar session skip when ``../shared`` is absent.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXAMPLES_ENV = "FUZZ_EXAMPLES"  # tests/fuzz/__init__.py reads it (no ROOMSYNC_ prefix: see there)


class _Reports:
    """A pytest plugin collecting each test's outcome and call time."""

    def __init__(self) -> None:
        self.outcome: dict[str, str] = {}
        self.seconds: dict[str, float] = defaultdict(float)
        self.reason: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        key = _key(report.nodeid)
        self.seconds[key] += report.duration if report.when == "call" else 0.0
        if report.when == "call" or report.outcome != "passed":
            self.outcome[key] = report.outcome
            if report.skipped and isinstance(report.longrepr, tuple):
                self.reason[key] = str(report.longrepr[2])
        else:
            self.outcome.setdefault(key, "passed")


def _key(nodeid: str) -> str:
    """``tests/fuzz/test_fuzz_sync.py::test_x`` → ``test_fuzz_sync::test_x`` (the key
    tests/fuzz uses to count examples)."""
    path, _, name = nodeid.partition("::")
    return f"{Path(path).stem}::{name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=2000, help="examples per test (default 2000)")
    parser.add_argument(
        "--seed", type=int, default=None, help="hypothesis seed (default: a random one, printed)"
    )
    parser.add_argument(
        "-k", dest="keyword", default=None, help="only tests matching this pytest -k expression"
    )
    parser.add_argument(
        "--timeout", type=int, default=3600, help="pytest-timeout per test, seconds (default 3600)"
    )
    parser.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failing test")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error("--examples must be at least 1")
    seed = args.seed if args.seed is not None else random.randrange(2**32)

    os.environ[EXAMPLES_ENV] = str(args.examples)
    import pytest  # after the variable is set: tests/fuzz reads it when collected

    pytest_args = [
        str(ROOT / "tests" / "fuzz"),
        "--rootdir",
        str(ROOT),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--timeout={args.timeout}",
        f"--hypothesis-seed={seed}",
    ]
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    if args.exitfirst:
        pytest_args.append("-x")
    print(f"fuzz: {args.examples} examples per test, hypothesis seed {seed}", flush=True)
    reports = _Reports()
    started = time.perf_counter()
    status = int(pytest.main(pytest_args, plugins=[reports]))
    wall = time.perf_counter() - started

    from tests.fuzz import EXAMPLES_RUN

    rows = sorted(reports.outcome)
    width = max((len(r) for r in rows), default=10)
    print()
    print(f"{'test':<{width}}  {'outcome':<8} {'examples':>9} {'seconds':>8} {'ex/s':>8}")
    areas: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for key in rows:
        count, seconds = EXAMPLES_RUN.get(key, 0), reports.seconds[key]
        rate = f"{count / seconds:8.0f}" if seconds > 0 and count else f"{'-':>8}"
        note = f"  ({reports.reason[key]})" if key in reports.reason else ""
        print(f"{key:<{width}}  {reports.outcome[key]:<8} {count:>9} {seconds:>8.1f} {rate}{note}")
        area = areas[key.split("::")[0].removeprefix("test_fuzz_")]
        area[0] += count
        area[1] += seconds
    print()
    print(f"{'area':<12} {'examples':>9} {'seconds':>8}")
    for name, (count, seconds) in sorted(areas.items()):
        print(f"{name:<12} {int(count):>9} {seconds:>8.1f}")
    print(
        f"{'total':<12} {sum(int(a[0]) for a in areas.values()):>9} {wall:>8.1f}  "
        f"(wall clock, seed {seed}, exit status {status})"
    )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
