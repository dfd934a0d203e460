"""The snapshot builder's coverage memo: the verdicts of a build that reuses it equal a
fresh evaluation, on the same day and on the next (a new day evaluates again)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from agent.catalog import load_catalog
from agent.coverage import Sighting, evaluate_all
from agent.entitlements import load_entitlements
from agent.model import Device, SerialSource, Transport
from agent.uploader.snapshot import SnapshotContext, verdicts_for

REPO = Path(__file__).resolve().parents[1]
DAY = date(2025, 6, 1)


def unit(serial: str, product: str) -> Device:
    from datetime import UTC, datetime

    seen = datetime(2025, 6, 1, tzinfo=UTC)
    return Device(
        product=product,
        transport=Transport.USB,
        address=f"1-{serial[-2:]}",
        first_seen=seen,
        last_seen=seen,
        serial=serial,
        serial_label_grade=True,
        serial_source=SerialSource.USB_DESCRIPTOR,
    )


def test_memoised_verdicts_equal_fresh_ones_and_a_new_day_is_evaluated_again() -> None:
    catalog = load_catalog()
    records = load_entitlements(REPO / "config" / "entitlements.example.csv")
    devices = [
        unit("2313FD1N08Z2", "Rally Bar"),
        unit("2104TP0007B3", "Tap"),
        unit("2206MU0042C9", "MeetUp"),
        unit("NOPE0001", "Scribe"),
    ]
    context = SnapshotContext(catalog, entitlements=records)

    def fresh(day: date) -> dict[str, dict]:
        scanned = {d.serial: Sighting(d.first_seen.date(), d.product) for d in devices if d.serial}  # W9
        found = evaluate_all(
            [(d.serial, d.product) for d in devices], records, catalog, day, sightings=scanned
        )
        return {d.serial: v.to_dict() for d, v in zip(devices, found, strict=True) if d.serial}

    for day in (DAY, DAY, DAY + timedelta(days=400), DAY + timedelta(days=400), DAY):
        got = {k: v.to_dict() for k, v in verdicts_for(devices, context, day).items()}
        assert got == fresh(day), day
    # The days chosen do give different verdicts, so a stale memo would have been caught.
    assert fresh(DAY) != fresh(DAY + timedelta(days=400))


def test_the_queued_snapshot_is_the_message_built_whole_and_an_unchanged_one_is_skipped(
    tmp_path: Path,
) -> None:
    """``queue_snapshot`` queues bytes made place by place (``snapshot_body``): they are what
    ``serialize(build_snapshot(...))`` gives, and their content digest is the one the outbox
    kept for a snapshot it was given whole (or by an older version), so an unchanged inventory
    is still skipped across the two."""
    import gzip
    import json
    from datetime import UTC, datetime

    from agent.model import Room
    from agent.store import Store
    from agent.uploader.outbox import Outbox, content_digest
    from agent.uploader.protocol import serialize
    from agent.uploader.snapshot import build_snapshot, queue_snapshot, snapshot_body

    catalog = load_catalog()
    records = load_entitlements(REPO / "config" / "entitlements.example.csv")
    rooms = (Room("oslo-4-12", name="Fjord"), Room("oslo-4-14", name="Empty"))
    context = SnapshotContext(catalog, rooms, records, today=DAY)
    at = datetime(2025, 6, 1, 9, tzinfo=UTC)
    devices = [unit("2313FD1N08Z2", "Rally Bar"), unit("2104TP0007B3", "Tap"), unit("NOPE0001", "Scribe")]
    for device in devices[:2]:
        device.room = "oslo-4-12"
    store = Store.open(tmp_path / "state")
    try:
        store.record_scan(devices, list(rooms), at, sources_run={"usb"})
        outbox = Outbox(store, agent_id="agent-1", hostname="pi")
        whole = build_snapshot(store, context, outbox.agent, 5, at, 2)
        assert snapshot_body(store, context, outbox.agent, 5, at, 2) == serialize(whole)
        assert whole.unassigned and len(whole.places) == 2  # every part of the body is there

        # Queued whole first: the place-by-place one of the same inventory says nothing new.
        assert outbox.queue_snapshot(
            lambda sequence, now, dropped: build_snapshot(
                store, context, outbox.agent, sequence, now, dropped
            ),
            at,
        )
        assert not queue_snapshot(outbox, store, context, at)
        assert queue_snapshot(outbox, store, context, at, force=True)
        head = outbox.messages(with_body=True)[-1]
        sent = build_snapshot(store, context, outbox.agent, head.sequence, at, 0)
        assert gzip.decompress(head.body) == serialize(sent)
        [[kept]] = store.read("SELECT value FROM meta WHERE key = 'last_snapshot'")
        assert json.loads(kept)["digest"] == content_digest(sent)
    finally:
        store.close()


def test_pieces_hashed_and_compressed_as_they_come_give_the_whole_bodys_digest_and_bytes(
    tmp_path: Path,
) -> None:
    """The outbox hashes and compresses a snapshot piece by piece (``digest_and_gzip``): the
    same content digest as the whole body's and the same gzip bytes, for the pieces
    ``snapshot_chunks`` cuts, and (the gzip) however the body is cut."""
    import random
    from datetime import UTC, datetime

    from agent.model import Room
    from agent.store import Store
    from agent.uploader.outbox import Outbox, body_digest, digest_and_gzip
    from agent.uploader.protocol import gzip_body
    from agent.uploader.snapshot import snapshot_chunks

    catalog = load_catalog()
    rooms = tuple(Room(f"oslo-4-{i:02d}", name=f"Room {i}") for i in range(12))
    context = SnapshotContext(catalog, rooms, None, today=DAY)
    at = datetime(2025, 6, 1, 9, tzinfo=UTC)
    devices = []
    for i in range(40):
        device = unit(f"2313FD{i:06d}", "Rally Bar" if i % 2 else "Tap")
        device.address = f"1-{i}"
        device.room = rooms[i % len(rooms)].id if i % 5 else None
        devices.append(device)
    with Store.open(tmp_path / "state") as store:
        store.record_scan(devices, list(rooms), at, sources_run={"usb"})
        outbox = Outbox(store, agent_id="agent-1", hostname="pi")
        pieces = list(snapshot_chunks(store, context, outbox.agent, 7, at, 0))
    body = b"".join(pieces)
    assert len(pieces) > 20 and b'"last_seen":' in body
    assert digest_and_gzip(iter(pieces)) == (body_digest(body), gzip_body(body))
    rng = random.Random(20261202)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 40)))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        assert digest_and_gzip(parts)[1] == gzip_body(body)


def test_pieces_that_fail_midway_leave_the_collector_on_and_the_generator_closed() -> None:
    import gc

    import pytest

    from agent.uploader.outbox import digest_and_gzip

    closed = []

    def pieces():
        try:
            yield b'{"places":['
            raise MemoryError("no room for the next place")
        finally:
            closed.append(True)

    assert gc.isenabled()
    with pytest.raises(MemoryError):
        digest_and_gzip(pieces())
    assert gc.isenabled() and closed == [True]


def _roomsyncs(thing: object) -> bool:
    """Whether ``thing`` is an object of one of roomsync's types, or one of its functions."""
    import types

    module = thing.__module__ if isinstance(thing, types.FunctionType) else type(thing).__module__
    return (module or "").startswith("agent.")


def test_a_snapshot_and_glpi_documents_leave_no_reference_cycles(tmp_path: Path) -> None:
    """What a snapshot (or a GLPI round) makes is freed as it is let go: none of it waits for
    the cyclic collector, which a snapshot pauses, so that a site's units would otherwise
    stay in memory until the next collection (5,000 ``CoverageUnit`` a snapshot, from a
    closure that called itself)."""
    import gc
    from datetime import UTC, datetime

    from agent.model import Room
    from agent.store import Store
    from agent.uploader.glpi import GlpiHost, glpi_documents
    from agent.uploader.outbox import Outbox
    from agent.uploader.snapshot import queue_snapshot

    catalog = load_catalog()
    records = load_entitlements(REPO / "config" / "entitlements.example.csv")
    rooms = (Room("oslo-4-12", name="Fjord"),)
    context = SnapshotContext(catalog, rooms, records, today=DAY)
    at = datetime(2025, 6, 1, 9, tzinfo=UTC)
    bar = unit("2313FD1N08Z2", "Rally Bar")
    bar.room, bar.vendor = "oslo-4-12", "Logitech"
    bar.transport, bar.address = Transport.SNMP, "10.0.0.5"  # a document of its own, with components
    pod = unit("2210MP0001A1", "Rally Mic Pod")
    pod.children = [unit("2210MP0001A2", "Rally Mic Pod")]  # two levels under the bar
    bar.children = [pod]
    devices = [bar, unit("2104TP0007B3", "Tap"), unit("NOPE0001", "Scribe")]

    def both(minute: int) -> None:
        assert queue_snapshot(outbox, store, context, at + timedelta(minutes=minute), force=True)
        stored = store.devices()
        docs = glpi_documents(
            stored, rooms, verdicts_for(stored, context, DAY), agent_id="a", host=GlpiHost("pi"), version="1"
        )
        assert b"2210MP0001A2" in b"".join(doc.body for doc in docs[1:])

    with Store.open(tmp_path / "state") as store:
        store.record_scan(devices, list(rooms), at, sources_run={"usb"})
        outbox = Outbox(store, agent_id="agent-1", hostname="pi")
        both(1)  # first use: caches, adapters and imports made once
        gc.collect()
        flags = gc.get_debug()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            both(2)
            gc.collect()
            # What this test made: objects of roomsync's types, or its functions (a cycle of
            # some other thread's or library's is not this test's business).
            left = [type(o).__qualname__ for o in gc.garbage if _roomsyncs(o)]
        finally:
            gc.set_debug(flags)
            gc.garbage.clear()
    assert left == []
