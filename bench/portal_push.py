"""Benchmark: build + serialise + gzip + POST a 5,000-device snapshot to the portal stand-in
(target ≤ 300 ms).

The inventory is a real store: 5,000 units in 500 rooms (a Rally Bar or Rally Bar Mini over
SNMP, a Tap IP and a Tap Scheduler over mDNS, USB cameras, hubs, a Scribe, mic pods…, with
label-grade serials, firmware and components, a few health warnings) stored by
``Store.record_scan``, with entitlements for coverage verdicts (``--no-coverage`` leaves
them out). Each run is what ``roomsync push`` does for a snapshot: ``Outbox.queue_snapshot``
(``build_snapshot`` from the store + coverage, the content digest, serialise, gzip, the
outbox row) then ``Delivery.run`` (one POST to the stand-in: a real aiohttp server on
127.0.0.1 in a process of its own, as a portal would be, which gunzips and validates the
message with the pydantic models before it answers, so its parsing is inside the POST time;
the same parsing is timed alone and shown apart).

Prints median/min/max over the runs, broken down; it is not a pass/fail test.

    .venv/bin/python bench/portal_push.py [--devices 5000] [--rooms 500] [--runs 10] [--no-coverage]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.catalog import Catalog, load_catalog
from agent.entitlements import load_entitlements
from agent.log import configure
from agent.model import Device, HealthIssue, Room, SerialSource, Severity, Transport
from agent.store import Store
from agent.uploader.delivery import Delivery, PortalSettings
from agent.uploader.outbox import Outbox, content_digest
from agent.uploader.protocol import InventoryMessage, serialize
from agent.uploader.snapshot import SnapshotContext, build_snapshot
from bench.coverage import generate_rows, serial_of, write_csv

TOKEN = "bench-token"
#: The stand-in in a process of its own: prints its URL, serves until stdin closes, then
#: prints how many snapshots it recorded.
PORTAL = f"""
import sys
from tests.portal_standin import PortalStandIn
with PortalStandIn({TOKEN!r}) as portal:
    print(portal.url, flush=True)
    sys.stdin.read()
    print(len(portal.inventory), len(portal.requests), flush=True)
"""
T0 = datetime(2025, 6, 2, 8, 0, tzinfo=UTC)
SITES = ["oslo", "bergen", "london", "berlin", "paris", "warsaw", "zurich", "tokyo", "toronto", "austin"]

#: One room's units: (product, transport, source, USB product id). Every serial is
#: label-grade, so every unit has its own identity (a unit without one is known by where it
#: was seen: USB ports of 500 rooms' hosts would collide in one agent's inventory).
ROOM_UNITS = [
    ("Rally Bar", Transport.SNMP, "snmp", None),
    ("Tap IP", Transport.MDNS, "mdns", None),
    ("Tap Scheduler", Transport.MDNS, "mdns", None),
    ("Sight", Transport.USB, "usb", 0x087A),
    ("Rally Camera", Transport.USB, "usb", 0x0881),
    ("Rally Display Hub", Transport.USB, "usb", 0x0885),
    ("Rally Table Hub", Transport.USB, "usb", 0x088F),
    ("Scribe", Transport.USB, "usb", 0x08E2),
    ("Rally Mic Pod", Transport.USB, "usb", None),
    ("Swytch", Transport.USB, "usb", None),
]


def make_inventory(
    catalog: Catalog, devices: int, rooms: int, seed: int = 5000
) -> tuple[list[Device], list[Room]]:
    rng = random.Random(seed)
    places = [
        Room(
            id=f"{SITES[r % len(SITES)]}-{r // 40 + 1}-{r % 40 + 1:02d}",
            name=f"{SITES[r % len(SITES)].title()} {r // 40 + 1}.{r % 40 + 1:02d}",
            group=SITES[r % len(SITES)],
            location=f"{SITES[r % len(SITES)].title()} office, floor {r // 40 + 1}",
            seat_count=rng.choice([4, 6, 8, 10, 12, 16]),
        )
        for r in range(rooms)
    ]
    out = []
    for i in range(devices):
        room = places[i % rooms]
        product, transport, source, pid = ROOM_UNITS[(i // rooms) % len(ROOM_UNITS)]
        if product == "Rally Bar" and i % 3 == 0:
            product = "Rally Bar Mini"
        entry = catalog.product(product)
        host = i % rooms
        address = {
            Transport.SNMP: f"10.{host // 250}.{host % 250}.{10 + i % 7}",
            Transport.MDNS: f"10.{host // 250}.{host % 250}.{40 + i % 50}:443",
            Transport.USB: f"1-{1 + i % 8}.{1 + i % 4}",
        }[transport]
        issues = []
        if rng.random() < 0.03:
            issues.append(
                HealthIssue(
                    "peripheral-missing", "a peripheral the room expects is not connected", Severity.WARNING
                )
            )
        out.append(
            Device(
                product=product,
                transport=transport,
                address=address,
                first_seen=T0 - timedelta(days=400),
                last_seen=T0,
                room=room.id,
                sources=[source],
                category=entry.family,
                model=entry.model,
                serial=serial_of(i),
                serial_label_grade=True,
                serial_source=SerialSource.USB_DESCRIPTOR if transport is Transport.USB else None,
                firmware=f"1.{rng.randrange(8, 14)}.{rng.randrange(0, 400)}",
                firmware_source=source,
                components=(
                    {
                        "camera": f"2.{rng.randrange(0, 9)}.{rng.randrange(0, 90)}",
                        "audio": f"3.{rng.randrange(0, 9)}",
                        "zigbee": "1.0.17",
                    }
                    if entry.family == "collabos-bar"
                    else {}
                ),
                vendor_id=0x046D if pid else None,
                product_id=pid,
                vendor="Logitech",
                state=rng.choice(["online", "in-use", "idle"]) if transport is not Transport.USB else None,
                attributes={"usb_release": "1.00"} if transport is Transport.USB else {"sysName": f"rb-{i}"},
                health_issues=issues,
            )
        )
    return out, places


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def portal_parse(body: bytes) -> InventoryMessage:
    """What the stand-in does with the body before it answers (besides its checks)."""
    return InventoryMessage.model_validate_json(gzip.decompress(body))


def line(name: str, values: list[float], note: str = "") -> str:
    ms = [v * 1000 for v in values]
    return (
        f"  {name:<28} median {statistics.median(ms):7.1f} ms   min {min(ms):7.1f}   max {max(ms):7.1f}{note}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--rooms", type=int, default=500)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-coverage", action="store_true", help="no entitlements: coverage null")
    args = ap.parse_args()
    configure("warning")
    catalog = load_catalog()
    devices, rooms = make_inventory(catalog, args.devices, args.rooms)
    repo = Path(__file__).resolve().parents[1]
    portal = subprocess.Popen(
        [sys.executable, "-c", PORTAL], cwd=repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert portal.stdin is not None and portal.stdout is not None
    url = portal.stdout.readline().strip()
    if not url.startswith("http://"):
        raise SystemExit(f"the portal stand-in did not start (exit {portal.wait(10)})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "token").write_text(TOKEN + "\n")
        entitlements = None
        if not args.no_coverage:
            write_csv(generate_rows(args.devices), root / "entitlements.csv")
            entitlements = load_entitlements(root / "entitlements.csv")
        context = SnapshotContext(catalog, tuple(rooms), entitlements, today=date(2025, 6, 2))
        store = Store.open(root / "state")
        store.record_scan(devices, rooms, T0, sources_run={"snmp", "mdns", "usb"})
        outbox = Outbox(store, agent_id="bench-agent", version="bench", hostname="bench-host")
        outbox.take_events(T0)  # the 5,000 device.added events: delivered once, not timed
        settings = PortalSettings(url, root / "token")
        asyncio.run(Delivery(outbox, settings).run(deadline=time.monotonic() + 30))

        built: list[InventoryMessage] = []
        build_s: list[float] = []

        def build(sequence: int, at: datetime, dropped: int) -> InventoryMessage:
            seconds, message = timed(
                lambda: build_snapshot(store, context, outbox.agent, sequence, at, dropped)
            )
            build_s.append(seconds)
            assert isinstance(message, InventoryMessage)
            built[:] = [message]  # the last one only: the agent holds no more
            return message

        totals, queues, posts, parse = [], [], [], []
        raw = packed = 0
        for run in range(args.runs + 1):  # the first run warms up
            now = T0 + timedelta(minutes=run + 1)
            queue_s, queued = timed(partial(outbox.queue_snapshot, build, now, force=True))
            assert queued
            [head] = outbox.messages(with_body=True)
            run_once = Delivery(outbox, settings).run(deadline=time.monotonic() + 30)
            post_s, result = timed(partial(asyncio.run, run_once))
            assert getattr(result, "delivered", 0) == 1, result
            body = head.body
            parse_s, _ = timed(partial(portal_parse, body))
            if run:
                queues.append(queue_s)
                posts.append(post_s)
                parse.append(parse_s)
                totals.append(queue_s + post_s)
            raw, packed = len(serialize(built[-1])), len(body)
        message = built[-1]
        store.close()
        units = sum(len(p.devices) for p in message.places) + len(message.unassigned)
        covered = sum(1 for p in message.places for d in p.devices if d.coverage is not None)
        portal.stdin.close()
        recorded = portal.stdout.readline().split()
        portal.wait(10)
        assert int(recorded[0]) == args.runs + 1, recorded
        assert units == args.devices, f"{units} units in the snapshot, not {args.devices}"

    # The parts of queue_snapshot besides the build, timed alone on the last message.
    ser_s = [timed(lambda: serialize(message))[0] for _ in range(5)]
    data = serialize(message)
    gz_s = [timed(lambda: gzip.compress(data, 6, mtime=0))[0] for _ in range(5)]
    digest_s = [timed(lambda: content_digest(message))[0] for _ in range(5)]
    print(
        f"portal push bench: {units:,} units in {len(message.places)} rooms ({covered:,} with a "
        f"coverage verdict), {args.runs} runs after a warm-up"
    )
    print(f"  body: {raw / 1e6:.2f} MB JSON, {packed / 1e3:.0f} kB gzip ({raw / packed:.1f}x)")
    print(line("total (queue + POST)", totals, "   (target <= 300 ms)"))
    print(line("queue_snapshot", queues))
    print(line("  build_snapshot", build_s[1:]))
    print(line("  serialise (alone)", ser_s))
    print(line("  gzip -6 (alone)", gz_s))
    print(line("  content digest (alone)", digest_s))
    print(line("Delivery.run (one POST)", posts))
    print(line("  of which portal-side parse", parse, "   (gunzip + pydantic, the stand-in's work)"))


if __name__ == "__main__":
    main()
