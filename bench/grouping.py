"""Benchmark: group the units of one room into systems (issue [12/16]: 50,000 units in one
room in ≤ 1 s; it was quadratic: 1k 121 ms, 5k 2.9 s, 10k 10.3 s before).

The room holds a realistic mix, repeated: CollabOS bars with their Sight and mic pods as
children, Taps, Rally cameras with their hubs and mic pods, MeetUps, Scribes, room PCs and a
few units of other products. ``agent.systems.group_systems`` groups them as every snapshot,
``/v1/rooms`` and ``/v1/inventory`` does.

Beside each figure, a floor measured on the same units in the same run: sorting them in the
fixed order the grouping takes them in (``agent.systems._order``) — what any grouping must at
least do — so the ratio holds on a noisy machine where a bare time drifts. The time per unit
across sizes shows linearity. Prints figures; it is not a pass/fail test.

    .venv/bin/python bench/grouping.py [--sizes 1000,5000,10000,50000] [--runs 3]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.catalog import load_catalog
from agent.gcpause import paused_gc
from agent.model import Device, Transport
from agent.systems import _order, group_systems

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
_numbers = itertools.count(1)


def _unit(product: str, *, serial: bool = True, children: list[Device] | None = None) -> Device:
    n = next(_numbers)
    return Device(
        product=product,
        transport=Transport.USB,
        address=f"1-{n}",
        first_seen=NOW,
        last_seen=NOW,
        serial=f"S{n:011d}" if serial else None,
        serial_label_grade=serial,
        children=children or [],
    )


def _set() -> list[Device]:
    """One repetition of the mix: 20 top-level units."""
    bar = _unit("Rally Bar", children=[_unit("Sight"), _unit("Rally Mic Pod", serial=False)])
    return [
        bar,
        _unit("Tap"),
        _unit("Rally Bar Mini"),
        _unit("Rally Mic Pod", serial=False),
        _unit("Rally Camera"),
        _unit("Rally Display Hub"),
        _unit("Rally Table Hub"),
        _unit("Rally Mic Pod", serial=False),
        _unit("Tap"),
        _unit("Room PC"),
        _unit("MeetUp"),
        _unit("Tap"),
        _unit("Room PC"),
        _unit("Scribe", serial=False),
        _unit("Rally Camera", serial=False),
        _unit("Tap IP"),
        _unit("Brio", serial=False),
        _unit("Swytch"),
        _unit("Rally Bar Huddle"),
        _unit("MeetUp", serial=False),
    ]


def room_of(size: int) -> list[Device]:
    units: list[Device] = []
    while len(units) < size:
        units.extend(_set())
    return units[:size]


def best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        with paused_gc():
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000,50000", help="units in the room, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the best is shown)")
    args = parser.parse_args(argv)
    catalog = load_catalog()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"grouping one room's units into systems (best of {args.runs}; floor: sorting the same units)")
    print(f"{'units':>8} {'systems':>8} {'grouping ms':>12} {'floor ms':>9} {'ratio':>6} {'µs/unit':>8}")
    for size in sizes:
        units = room_of(size)
        systems, standalone = group_systems(units, catalog)
        grouping = best_of(args.runs, lambda units=units: group_systems(units, catalog))
        floor = best_of(args.runs, lambda units=units: sorted(units, key=_order))
        print(
            f"{size:>8} {len(systems):>8} {grouping * 1000:>12.1f} {floor * 1000:>9.1f} "
            f"{grouping / floor:>6.1f} {grouping / size * 1e6:>8.2f}"
        )
        assert sum(len(s.members) for s in systems) + len(standalone) >= size  # nothing lost
    print("target: 50,000 units in one room within 1 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
