"""Benchmark: the crash test's figures — a scan-and-push loop SIGKILLed at random points
(default 50 times) and at every step's edges, restarted each time (target: events lost 0).

Runs ``tests/outbox_loop.py`` (``roomsync scan`` + ``roomsync push --once`` through the real
CLI, in a subprocess, against a changing fake sysfs tree) and the portal stand-in (a real
aiohttp server on 127.0.0.1 in this process), then compares what the stand-in holds with the
store's ``events`` table. Prints kills survived, where they landed, events stored and at the
portal, events lost, events carried by two messages, re-deliveries (a message sent again
after a kill, answered 200 and de-duplicated by its ``Idempotency-Key``) and whether the
portal's latest snapshot is the last one queued. Exit status 1 when anything was lost.

    .venv/bin/python bench/crash.py [--kills 50] [--seed N] [--max-delay 0.3] [--no-directed]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.uploader.outbox import content_digest
from tests.outbox_loop import TOKEN, run_crash, tally
from tools.portal_standin import PortalStandIn


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--kills", type=int, default=50, help="random kills (default 50)")
    ap.add_argument("--seed", type=int, help="the kill delays' seed (default: a fresh one, printed)")
    ap.add_argument(
        "--max-delay",
        type=float,
        default=0.3,
        metavar="S",
        help="a kill comes 0 to S seconds after the loop is ready (default 0.3)",
    )
    ap.add_argument("--no-directed", action="store_true", help="only the random kills")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every kill")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    with tempfile.TemporaryDirectory() as tmp, PortalStandIn(TOKEN) as portal:
        root = Path(tmp) / "loop"
        run = run_crash(
            root,
            portal.url,
            kills=args.kills,
            seed=seed,
            max_delay=args.max_delay,
            directed=not args.no_directed,
            log=print if args.verbose else lambda _: None,
        )
        figures = tally(root / "state", portal)
        latest = portal.latest_inventory
    last = figures.last_snapshot or {}
    latest_ok = (
        latest is not None
        and latest.sequence == last.get("sequence")
        and content_digest(latest) == last.get("digest")
    )
    in_order = figures.at_portal == figures.stored
    print(
        f"crash bench: seed {seed}, {run.kills} random kills (0-{args.max_delay * 1000:.0f} ms after "
        f"ready) + {len(run.directed)} directed, {run.iterations} iterations, {run.seconds:.1f} s"
    )
    print(f"  kills survived       {run.kills + len(run.directed)}")
    print("  random kills in      " + ", ".join(f"{k} {n}" for k, n in sorted(run.phases.items())))
    print(
        f"  events stored        {len(figures.stored)} ("
        + ", ".join(f"{k} {n}" for k, n in sorted(figures.types.items()))
        + ")"
    )
    print(f"  events at the portal {len(figures.at_portal)} (in the store's order: {in_order})")
    print(f"  events lost          {len(figures.lost)}   (target 0)")
    print(f"  in two messages      {len(figures.carried_twice)}")
    print(
        f"  re-deliveries        {figures.redelivered} (of {figures.requests} requests; "
        f"{figures.messages} messages accepted)"
    )
    print(f"  outbox left          {figures.pending} pending, {figures.dropped_events} dropped")
    print(
        f"  latest snapshot      sequence {latest.sequence if latest else None}, the last queued: {latest_ok}"
    )
    ok = not figures.lost and not figures.carried_twice and in_order and latest_ok and not figures.pending
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
