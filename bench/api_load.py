"""Benchmark: a local user flooding the daemon's API (issue [13/16]). Prints figures; it is not
a pass/fail test (tests/test_api_load.py holds the issue's "done when" as a test).

A real daemon over a state directory of ``--units`` stored units, with systemd's default limit
of 1,024 file descriptors and ``WatchdogSec=30`` (``WATCHDOG_USEC=30000000``), its USB source
re-scanning an empty tree every ``--scan-interval`` seconds (each stored scan makes the
cached answers stale), while ``--clients`` threads ask ``/v1/inventory`` and ``/v1/rooms`` in
turn as fast as they are answered and ``--half-open`` connections hold half a request each
(tests/api_load.py). Targets: no pause of ``WATCHDOG=1`` over 5 s, ``/healthz`` within 1 s
throughout, the daemon ready afterwards.

Floor: the same ``/healthz`` prober against the same daemon, idle, just before the flood (the
HTTP round trip on a fresh connection, with nothing competing).

    .venv/bin/python bench/api_load.py [--units 2000] [--clients 30] [--seconds 30] [--half-open 900]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.api_load import run_load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--half-open", type=int, default=900)
    ap.add_argument("--scan-interval", type=float, default=5.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="roomsync-bench-load-"))
    try:
        r = run_load(
            work,
            units=args.units,
            clients=args.clients,
            seconds=args.seconds,
            half_open=args.half_open,
            scan_interval=args.scan_interval,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"daemon over {r.units} stored units, {args.clients} clients on /v1/inventory + /v1/rooms, "
        f"{r.half_open_held} half-open connections, {r.seconds:g} s, 1,024 fds"
    )
    print(f"  WATCHDOG=1: {r.watchdog_pings} pings, longest pause {r.watchdog_gap:.2f} s   (target <= 5 s)")
    if r.health_times:
        print(
            f"  /healthz: {len(r.health_times)} answered, median {r.health_median * 1000:.1f} ms, "
            f"worst {r.health_worst * 1000:.1f} ms, {len(r.health_failures)} failed   (target <= 1 s)   "
            f"floor (idle, before the flood) {r.health_floor * 1000:.1f} ms"
        )
    for failure in r.health_failures[:5]:
        print(f"    failed: {failure}")
    print(
        f"  flood: {r.answers} answers ({r.answer_bytes / 1e6:.1f} MB), {r.refused} refused or dropped; "
        f"{r.scans} scans stored meanwhile"
    )
    print(f"  half-open: {r.half_open_closed_by_daemon} of {r.half_open_held} closed by the daemon")
    ready = f"{r.ready_after:.2f} s" if r.ready_after is not None else "NOT ready"
    print(
        f"  afterwards: alive {r.alive}, ready after {ready}; log {r.log_lines} lines, {r.log_bytes:,} bytes"
    )


if __name__ == "__main__":
    main()
