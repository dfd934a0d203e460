"""Benchmark: 10,000 change events delivered with batching (target ≥ 2,000 events/s).

The events are real: two scans of 5,000 units stored by ``Store.record_scan`` (5,000
``device.added``, then 5,000 ``firmware.changed``), not yet taken by the outbox. Timed from
there to an empty outbox: ``Outbox.take_events`` (events into ``roomsync.events.v1``
messages of up to 1,000, serialised and gzipped, in one transaction) and ``Delivery.run``
(each message POSTed to the portal stand-in — a real aiohttp server on 127.0.0.1 in a process
of its own, which gunzips and validates every message before it answers — and marked
delivered). Prints events/s, messages sent and their sizes; it is not a pass/fail test.

Beside it, a floor measured on the same data in the same run, right after each run's delivery
(a ratio holds on a shared, noisy machine where a bare time drifts): ``json.dumps`` + gzip of
the dicts of the very messages that run queued (decoded from their stored bodies outside the
timing) and one POST of each of those bodies to the same stand-in over one aiohttp session,
which parses and validates them as it does the agent's.

    .venv/bin/python bench/outbox_throughput.py [--events 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from agent.catalog import load_catalog
from agent.log import configure
from agent.store import Store
from agent.uploader.delivery import Delivery, PortalSettings
from agent.uploader.outbox import Outbox
from bench.portal_push import PORTAL, T0, TOKEN, floor_body, make_inventory


async def floor_posts(url: str, bodies: list[bytes]) -> list[int]:
    """The floor's POSTs: each body once to the stand-in's events endpoint, one session."""
    statuses = []
    async with aiohttp.ClientSession(trust_env=False) as session:
        for body in bodies:
            headers = {
                "Authorization": f"Bearer {TOKEN}",
                "Idempotency-Key": str(uuid.uuid4()),
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "Accept": "application/json",
            }
            async with session.post(url + "/v1/events", data=body, headers=headers, compress=None) as reply:
                await reply.read()
                statuses.append(reply.status)
    return statuses


def start_portal(repo: Path) -> tuple[subprocess.Popen[str], str]:
    portal = subprocess.Popen(
        [sys.executable, "-c", PORTAL], cwd=repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert portal.stdout is not None
    url = portal.stdout.readline().strip()
    if not url.startswith("http://"):
        raise SystemExit(f"the portal stand-in did not start (exit {portal.wait(10)})")
    return portal, url


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000, help="an even number")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    configure("warning")
    catalog = load_catalog()
    units = args.events // 2
    devices, rooms = make_inventory(catalog, units, max(1, units // 10))
    later = T0 + timedelta(minutes=5)
    upgraded = [
        replace(d, firmware=f"{d.firmware}.1", first_seen=d.first_seen, last_seen=later) for d in devices
    ]
    repo = Path(__file__).resolve().parents[1]
    portal, url = start_portal(repo)
    rates, take_s, post_s, sizes, raw_counts, messages = [], [], [], [], [], 0
    floors, ratios = [], []
    try:
        for run in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                (root / "token").write_text(TOKEN + "\n")
                with Store.open(root / "state") as store:
                    sources = {"snmp", "mdns", "usb"}
                    stored = len(store.record_scan(devices, rooms, T0, sources_run=sources).events)
                    stored += len(store.record_scan(upgraded, rooms, later, sources_run=sources).events)
                    assert stored == args.events, f"{stored} events stored, not {args.events}"
                    outbox = Outbox(store, agent_id=f"bench-{run}", version="bench", hostname="bench-host")
                    delivery = Delivery(outbox, PortalSettings(url, root / "token"))
                    t0 = time.perf_counter()
                    taken = outbox.take_events(later)
                    t1 = time.perf_counter()
                    queued = outbox.messages(with_body=True)
                    result = asyncio.run(delivery.run(deadline=time.monotonic() + 60))
                    t2 = time.perf_counter()
                    assert taken == stored and result.events_delivered == stored, (taken, result)
                    assert outbox.stats().empty and not result.retries, result
            # The floor on this run's messages: their dicts, decoded outside the timing.
            dicts = [json.loads(gzip.decompress(m.body)) for m in queued]
            f0 = time.perf_counter()
            bodies = [floor_body(d) for d in dicts]
            statuses = asyncio.run(floor_posts(url, bodies))
            f1 = time.perf_counter()
            assert set(statuses) == {202}, statuses
            floors.append(f1 - f0)
            ratios.append((t2 - t0) / (f1 - f0))
            take_s.append(t1 - t0)
            post_s.append(t2 - t1)
            rates.append(stored / (t2 - t0))
            sizes += [m.size for m in queued]
            raw_counts += [m.events for m in queued]
            messages = result.delivered
    finally:
        assert portal.stdin is not None and portal.stdout is not None
        portal.stdin.close()
        recorded = portal.stdout.readline().split()
        portal.wait(10)
    print(
        f"outbox throughput bench: {args.events:,} events ({units:,} added, {units:,} firmware "
        f"changes), {args.runs} runs, stand-in answered {recorded[1]} requests (the floors' too)"
    )
    print(
        f"  events/s        median {statistics.median(rates):8,.0f}   min {min(rates):8,.0f}   "
        f"max {max(rates):8,.0f}   (target >= 2,000)"
    )
    print(
        f"  take_events     median {statistics.median(take_s) * 1000:7.1f} ms  (batch, serialise, "
        "gzip, store)"
    )
    print(f"  Delivery.run    median {statistics.median(post_s) * 1000:7.1f} ms  ({messages} POSTs)")
    whole = [t + p for t, p in zip(take_s, post_s, strict=True)]
    print(
        f"  take + deliver  median {statistics.median(whole) * 1000:7.1f} ms   "
        f"floor (json.dumps + gzip + the same POSTs) median {statistics.median(floors) * 1000:7.1f} ms"
    )
    print(
        f"  ratio to floor  median {statistics.median(ratios):7.2f} x    min {min(ratios):.2f}   "
        f"max {max(ratios):.2f}   (per run)"
    )
    print(
        f"  messages sent   {messages} per run, {statistics.median(raw_counts):.0f} events each "
        f"(median); gzip body median {statistics.median(sizes) / 1e3:.1f} kB, "
        f"max {max(sizes) / 1e3:.1f} kB"
    )


if __name__ == "__main__":
    main()
