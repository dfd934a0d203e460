"""Benchmark: a 5,000-unit snapshot push to the portal stand-in, beside its floor
(target: push <= 2x the floor; peak RSS of the push <= 80 MiB).

The inventory is a real store: 5,000 units in 500 rooms (a Rally Bar or Rally Bar Mini over
SNMP, a Tap IP and a Tap Scheduler over mDNS, USB cameras, hubs, a Scribe, mic pods…, with
label-grade serials, firmware and components, a few health warnings) stored by
``Store.record_scan``, with entitlements for coverage verdicts (``--no-coverage`` leaves
them out). Each run is what ``roomsync push`` does for a snapshot:
``agent.uploader.snapshot.queue_snapshot`` (the snapshot built from the store + coverage,
serialised, its content digest, gzip, the outbox row) then ``Delivery.run`` (one POST to the
stand-in: a real aiohttp server on 127.0.0.1 in a process of its own, as a portal would be,
which gunzips and validates the message with the pydantic models before it answers, so its
parsing is inside the POST time; the same parsing is timed alone and shown apart).

The floor, measured in the same run on the same data (this machine is shared and noisy: a
ratio holds where a bare time drifts): ``json.dumps`` + gzip of the very dicts that run's
snapshot carries (its body, decoded outside the timing) and one POST of those bytes to the
same stand-in (one aiohttp session, the same headers), which parses and validates them as it
does the push's. Each run times the push and then its floor.

Peak RSS is measured in a fresh process of its own (``--rss-child``): the agent's modules
imported, the store opened, catalog and entitlements loaded (idle), then one push as above,
which starts by reading the store's inventory (kept by the store: a daemon holds it already;
RSS after that read is shown too). The peak is the process's VmHWM over the push alone (reset
before it through ``/proc/self/clear_refs`` where the kernel allows).

Prints median/min/max over the runs, broken down; it is not a pass/fail test.

    .venv/bin/python bench/portal_push.py [--devices 5000] [--rooms 500] [--runs 10] [--no-coverage]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from agent.catalog import Catalog, load_catalog
from agent.entitlements import load_entitlements
from agent.log import configure
from agent.model import Device, HealthIssue, Room, SerialSource, Severity, Transport
from agent.store import Store
from agent.uploader.delivery import Delivery, PortalSettings
from agent.uploader.outbox import Outbox, body_digest
from agent.uploader.protocol import InventoryMessage, gzip_body, serialize
from agent.uploader.snapshot import SnapshotContext, build_snapshot, queue_snapshot
from bench.coverage import generate_rows, serial_of, write_csv

TOKEN = "bench-token"
#: The stand-in in a process of its own: prints its URL, serves until stdin closes, then
#: prints how many snapshots it recorded.
PORTAL = f"""
import sys
from tools.portal_standin import PortalStandIn
with PortalStandIn({TOKEN!r}) as portal:
    print(portal.url, flush=True)
    sys.stdin.read()
    print(len(portal.inventory), len(portal.requests), flush=True)
"""
MIB = 1024 * 1024
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


def floor_body(dicts: dict[str, Any]) -> bytes:
    """The floor's serialise + gzip: ``json.dumps`` of the snapshot's dicts, compact, as UTF-8."""
    data = json.dumps(dicts, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return gzip.compress(data, compresslevel=6, mtime=0)


async def floor_post(url: str, body: bytes) -> int:
    """The floor's POST: ``body`` once to the stand-in, with the headers the agent sends."""
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Idempotency-Key": str(uuid.uuid4()),
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Accept": "application/json",
    }
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.post(url + "/v1/inventory", data=body, headers=headers, compress=None) as reply,
    ):
        await reply.read()
        return reply.status


def line(name: str, values: list[float], note: str = "") -> str:
    ms = [v * 1000 for v in values]
    return (
        f"  {name:<30} median {statistics.median(ms):7.1f} ms   min {min(ms):7.1f}   max {max(ms):7.1f}{note}"
    )


def _status_kib(field: str) -> int:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])
    raise SystemExit(f"no {field} in /proc/self/status")


def rss_child(state: Path, entitlements_csv: Path | None, url: str, token_file: Path, rooms: int) -> None:
    """One push in this fresh process; prints idle RSS and the push's peak as JSON."""
    configure("warning")
    catalog = load_catalog()
    places = tuple(make_inventory(catalog, 0, rooms)[1])
    entitlements = load_entitlements(entitlements_csv) if entitlements_csv else None
    context = SnapshotContext(catalog, places, entitlements, today=date(2025, 6, 2))
    store = Store.open(state)
    outbox = Outbox(store, agent_id="bench-agent", version="bench", hostname="bench-host")
    settings = PortalSettings(url, token_file)
    idle = _status_kib("VmRSS")
    try:  # "5" resets the peak (VmHWM) to the current RSS: the peak is then the push's own
        Path("/proc/self/clear_refs").write_text("5")
        reset = _status_kib("VmHWM") <= idle + 1024
    except OSError:
        reset = False
    before_peak = _status_kib("VmHWM")
    store.devices()  # the store's inventory, read once and kept (a daemon holds it already)
    loaded = _status_kib("VmRSS")
    now = datetime.now(UTC)
    assert queue_snapshot(outbox, store, context, now, force=True)
    result = asyncio.run(Delivery(outbox, settings).run(deadline=time.monotonic() + 30))
    assert getattr(result, "delivered", 0) == 1, result
    peak = _status_kib("VmHWM")
    after = _status_kib("VmRSS")
    store.close()
    figures = {"idle": idle, "loaded": loaded, "peak": peak, "after": after}
    print(json.dumps(figures | {"reset": reset, "setup_peak": before_peak}))


def measure_rss(
    repo: Path, state: Path, entitlements_csv: Path | None, url: str, token_file: Path, rooms: int
) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", str(state), url, str(token_file)]
    cmd += [str(rooms), str(entitlements_csv) if entitlements_csv else ""]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the RSS child failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--rooms", type=int, default=500)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-coverage", action="store_true", help="no entitlements: coverage null")
    ap.add_argument("--rss-child", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        state, url, token_file, rooms, csv_path = args.rss_child
        rss_child(Path(state), Path(csv_path) if csv_path else None, url, Path(token_file), int(rooms))
        return
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
        csv_path = None
        if not args.no_coverage:
            csv_path = root / "entitlements.csv"
            write_csv(generate_rows(args.devices), csv_path)
            entitlements = load_entitlements(csv_path)
        context = SnapshotContext(catalog, tuple(rooms), entitlements, today=date(2025, 6, 2))
        store = Store.open(root / "state")
        store.record_scan(devices, rooms, T0, sources_run={"snmp", "mdns", "usb"})
        del devices
        outbox = Outbox(store, agent_id="bench-agent", version="bench", hostname="bench-host")
        outbox.take_events(T0)  # the 5,000 device.added events: delivered once, not timed
        settings = PortalSettings(url, root / "token")
        asyncio.run(Delivery(outbox, settings).run(deadline=time.monotonic() + 30))

        totals, queues, posts, parse = [], [], [], []
        floors, floor_ser, floor_posts, ratios = [], [], [], []
        raw = packed = 0
        body = b""
        for run in range(args.runs + 1):  # the first run warms up
            now = T0 + timedelta(minutes=run + 1)
            queue_s, queued = timed(partial(queue_snapshot, outbox, store, context, now, force=True))
            assert queued
            [head] = outbox.messages(with_body=True)
            run_once = Delivery(outbox, settings).run(deadline=time.monotonic() + 30)
            post_s, result = timed(partial(asyncio.run, run_once))
            assert getattr(result, "delivered", 0) == 1, result
            body = head.body
            parse_s, _ = timed(partial(portal_parse, body))
            # The floor on this run's snapshot: its dicts, decoded outside the timing.
            dicts = json.loads(gzip.decompress(body))
            dumps_s, floor_bytes = timed(partial(floor_body, dicts))
            assert isinstance(floor_bytes, bytes)
            fpost_s, status = timed(partial(asyncio.run, floor_post(url, floor_bytes)))
            assert status == 202, status
            del dicts
            if run:
                queues.append(queue_s)
                posts.append(post_s)
                parse.append(parse_s)
                totals.append(queue_s + post_s)
                floor_ser.append(dumps_s)
                floor_posts.append(fpost_s)
                floors.append(dumps_s + fpost_s)
                ratios.append((queue_s + post_s) / (dumps_s + fpost_s))
            raw, packed = len(gzip.decompress(body)), len(body)
        units = sum(len(p["devices"]) for p in json.loads(gzip.decompress(body))["places"])
        units += len(json.loads(gzip.decompress(body))["unassigned"])
        covered = sum(
            1 for p in json.loads(gzip.decompress(body))["places"] for d in p["devices"] if d["coverage"]
        )
        assert units == args.devices, f"{units} units in the snapshot, not {args.devices}"

        # The parts of a push besides the POST, timed alone on the same store.
        at = T0 + timedelta(minutes=args.runs + 2)
        build_s = []
        for _ in range(5):
            seconds, message = timed(partial(build_snapshot, store, context, outbox.agent, 99, at, 0))
            build_s.append(seconds)
        assert isinstance(message, InventoryMessage)
        ser_s = [timed(partial(serialize, message))[0] for _ in range(5)]
        data = serialize(message)
        del message
        gz_s = [timed(partial(gzip_body, data))[0] for _ in range(5)]
        digest_s = [timed(partial(body_digest, data))[0] for _ in range(5)]
        store.close()
        rss = measure_rss(repo, root / "state", csv_path, url, root / "token", args.rooms)
        portal.stdin.close()
        recorded = portal.stdout.readline().split()
        portal.wait(10)
        # warm-up + runs pushes and as many floor POSTs, the RSS child's push
        assert int(recorded[0]) == 2 * (args.runs + 1) + 1, recorded

    print(
        f"portal push bench: {units:,} units in {args.rooms} rooms ({covered:,} with a "
        f"coverage verdict), {args.runs} runs after a warm-up"
    )
    print(f"  body: {raw / 1e6:.2f} MB JSON, {packed / 1e3:.0f} kB gzip ({raw / packed:.1f}x)")
    print(line("push (queue + POST)", totals))
    print(line("floor (dumps+gzip + POST)", floors))
    print(
        f"  {'ratio push / floor':<30} median {statistics.median(ratios):7.2f} x    min {min(ratios):7.2f}"
        f"   max {max(ratios):7.2f}   (per run; target <= 2.0)"
    )
    print(line("queue_snapshot", queues))
    print(line("Delivery.run (one POST)", posts))
    print(line("  portal-side parse (alone)", parse, "   (gunzip + pydantic, the stand-in's work)"))
    print(line("floor: json.dumps + gzip", floor_ser))
    print(line("floor: one POST", floor_posts))
    print("  alone, on the same store:")
    print(line("  build_snapshot (a model)", build_s))
    print(line("  serialise", ser_s))
    print(line("  gzip -6", gz_s))
    print(line("  content digest of the bytes", digest_s))
    idle, peak = rss["idle"] / 1024, rss["peak"] / 1024
    setup = rss["setup_peak"] / 1024
    unreset = "" if rss["reset"] else f"; not reset before the push (setup peak {setup:.1f})"
    print(
        f"  RSS (fresh process, one push): idle {idle:.1f} MiB, peak during the push {peak:.1f} MiB "
        f"(+{peak - idle:.1f}; target <= 80 MiB); the store's inventory read {rss['loaded'] / 1024:.1f}, "
        f"after {rss['after'] / 1024:.1f} MiB" + unreset
    )


if __name__ == "__main__":
    main()
