"""The durable outbox (``agent/uploader/outbox.py``) over a real SQLite store: events
batched into messages, the pending snapshot replaced, the bound, parking, sequences and the
agent id across restarts, migration from schema 2, pruning, and clear errors on a locked or
full database that lose nothing."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.catalog import load_catalog
from agent.events import ChangeEvent, EventType
from agent.model import Room
from agent.store import DB_NAME, MIGRATIONS, SCHEMA_VERSION, Retention, Store, StoreError
from agent.uploader.delivery import Delivery, PortalSettings
from agent.uploader.outbox import Outbox, QueuedMessage, content_digest
from agent.uploader.protocol import (
    MAX_EVENTS_PER_MESSAGE,
    EventsMessage,
    InventoryMessage,
    parse_message,
)
from agent.uploader.snapshot import SnapshotContext, build_snapshot
from tests.small_disk import run_on_small_disk
from tests.usb_units import scan, unit
from tools.portal_standin import PortalStandIn

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]
CONTEXT = SnapshotContext(load_catalog(), (Room("oslo-4-12", "Fjord"),))


def builder(store: Store, outbox: Outbox):
    return lambda sequence, at, dropped: build_snapshot(store, CONTEXT, outbox.agent, sequence, at, dropped)


def decode(message: QueuedMessage) -> InventoryMessage | EventsMessage:
    """What the portal would read from the stored body."""
    assert message.body, "read the messages with_body=True"
    return parse_message(gzip.decompress(message.body))


def event_ids(message: QueuedMessage) -> list[str]:
    doc = decode(message)
    assert isinstance(doc, EventsMessage)
    return [str(e.id) for e in doc.events]


def stored_event_ids(store: Store) -> list[str]:
    return [e.id for e in store.events(limit=None)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state") as opened:
        yield opened


# --------------------------------------------------------------------------- events


def test_events_become_messages_of_at_most_1000_oldest_first(store: Store):
    assert scan(store, [unit(i, T0) for i in range(2500)], T0) == 2500
    outbox = Outbox(store)
    assert outbox.take_events(T0) == 2500
    messages = outbox.messages(with_body=True)
    assert [(m.kind, m.events, m.state, m.attempts) for m in messages] == [
        ("events", 1000, "pending", 0),
        ("events", 1000, "pending", 0),
        ("events", 500, "pending", 0),
    ]
    assert [m.sequence for m in messages] == [1, 2, 3]
    assert [decode(m).sequence for m in messages] == [1, 2, 3]
    assert len({m.key for m in messages}) == 3
    assert [i for m in messages for i in event_ids(m)] == stored_event_ids(store)
    assert outbox.take_events(T0) == 0  # the cursor moved with them
    stats = outbox.stats()
    assert (stats.pending, stats.events_queued, stats.events_waiting) == (3, 2500, 0)

    # 600 more join the 500 of the tail (never attempted), split at 1000.
    later = T0 + timedelta(minutes=5)
    assert scan(store, [unit(i, later) for i in range(3100)], later) == 600
    assert outbox.take_events(later) == 600
    after = outbox.messages(with_body=True)
    assert [m.events for m in after] == [1000, 1000, 1000, 100]
    assert [m.key for m in after[:2]] == [m.key for m in messages[:2]]  # full ones untouched
    assert after[2].key != messages[2].key and after[2].sequence == 4  # rebuilt: a new key and sequence
    assert [m.sequence for m in after] == [1, 2, 4, 5]
    assert all(len(event_ids(m)) <= MAX_EVENTS_PER_MESSAGE for m in after)
    assert [i for m in after for i in event_ids(m)] == stored_event_ids(store)


def test_events_join_the_tail_message_only_while_it_was_never_attempted(store: Store):
    scan(store, [unit(1, T0), unit(2, T0)], T0)
    outbox = Outbox(store)
    outbox.take_events(T0)
    [first] = outbox.messages()
    t1 = T0 + timedelta(minutes=5)
    scan(store, [unit(1, t1, firmware="2.0"), unit(2, t1)], t1)
    outbox.take_events(t1)
    [merged] = outbox.messages(with_body=True)
    assert merged.events == 3 and merged.key != first.key and merged.sequence > first.sequence
    assert merged.first_event == first.first_event
    assert [e.type for e in decode(merged).events] == [  # type: ignore[union-attr]
        EventType.DEVICE_ADDED,
        EventType.DEVICE_ADDED,
        EventType.FIRMWARE_CHANGED,
    ]

    assert outbox.begin_attempt(merged, t1)  # someone may have received it now: sealed
    t2 = T0 + timedelta(minutes=10)
    scan(store, [unit(1, t2, firmware="3.0"), unit(2, t2)], t2)
    outbox.take_events(t2)
    sealed, fresh = outbox.messages(with_body=True)
    assert (sealed.key, sealed.events, sealed.attempts, sealed.body) == (merged.key, 3, 1, merged.body)
    assert fresh.events == 1 and fresh.sequence > sealed.sequence
    assert event_ids(sealed) + event_ids(fresh) == stored_event_ids(store)


# --------------------------------------------------------------------------- snapshots


def test_a_snapshot_follows_its_events_and_replaces_the_pending_one(store: Store):
    scan(store, [unit(1, T0), unit(2, T0)], T0)
    outbox = Outbox(store)
    assert outbox.queue_snapshot(builder(store, outbox), T0)
    events, snapshot = outbox.messages(with_body=True)
    assert (events.kind, events.events, snapshot.kind) == ("events", 2, "inventory")
    assert snapshot.sequence > events.sequence
    doc = decode(snapshot)
    assert isinstance(doc, InventoryMessage) and doc.sequence == snapshot.sequence
    assert doc.generated_at == T0 and doc.agent.id == outbox.agent.id

    # Nothing was attempted: the pending snapshot goes, the new events join the events
    # message (rebuilt), the new snapshot follows them.
    t1 = T0 + timedelta(minutes=5)
    scan(store, [unit(1, t1, firmware="2.0"), unit(2, t1)], t1)
    assert outbox.queue_snapshot(builder(store, outbox), t1)
    merged, newest = outbox.messages(with_body=True)
    assert (merged.kind, merged.events, newest.kind) == ("events", 3, "inventory")
    assert event_ids(merged) == stored_event_ids(store)
    assert newest.key != snapshot.key and newest.sequence > merged.sequence > snapshot.sequence
    doc = decode(newest)
    assert isinstance(doc, InventoryMessage)
    assert sorted(d.firmware for p in doc.places for d in p.devices) == ["1.0", "2.0"]

    # Once the events message was attempted, new events queue behind it; still one snapshot.
    assert outbox.begin_attempt(merged, t1)
    t2 = T0 + timedelta(minutes=10)
    scan(store, [unit(1, t2, firmware="3.0"), unit(2, t2)], t2)
    assert outbox.queue_snapshot(builder(store, outbox), t2)
    messages = outbox.messages(with_body=True)
    assert [(m.kind, m.events) for m in messages] == [("events", 3), ("events", 1), ("inventory", 0)]
    assert messages[0].key == merged.key and messages[0].body == merged.body
    assert messages[2].sequence > messages[1].sequence > newest.sequence
    assert [i for m in messages[:2] for i in event_ids(m)] == stored_event_ids(store)


def test_events_of_a_skipped_snapshot_queue_behind_the_pending_one(store: Store):
    """A change and its undoing: events, but the snapshot says what the pending one says."""
    outbox = Outbox(store)
    build = builder(store, outbox)
    scan(store, [unit(1, T0)], T0)
    outbox.queue_snapshot(build, T0)
    before = outbox.messages(with_body=True)
    t1, t2 = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    scan(store, [unit(1, t1, firmware="2.0")], t1)
    scan(store, [unit(1, t2, firmware="1.0")], t2)
    assert not outbox.queue_snapshot(build, t2)
    messages = outbox.messages(with_body=True)
    assert messages[:2] == before  # the pending snapshot and the events before it untouched
    assert [(m.kind, m.events) for m in messages] == [("events", 1), ("inventory", 0), ("events", 2)]
    assert messages[2].sequence > messages[1].sequence
    assert outbox.stats().events_waiting == 0
    assert [i for m in (messages[0], messages[2]) for i in event_ids(m)] == stored_event_ids(store)


def test_an_identical_snapshot_is_skipped_until_the_interval_passed_or_forced(store: Store):
    outbox = Outbox(store, snapshot_interval=timedelta(hours=1))
    build = builder(store, outbox)
    scan(store, [unit(1, T0), unit(2, T0)], T0)
    assert outbox.snapshot_due(T0)
    assert outbox.queue_snapshot(build, T0)
    [_, queued] = outbox.messages(with_body=True)
    assert not outbox.snapshot_due(T0 + timedelta(minutes=59))

    # Seen again: only last_seen (and sequence, generated_at) would differ.
    t1 = T0 + timedelta(minutes=5)
    assert scan(store, [unit(1, t1), unit(2, t1)], t1) == 0
    assert content_digest(build(7, t1, 0)) == content_digest(build(8, T0, 0))
    assert build(7, t1, 0) != build(8, T0, 0)
    assert not outbox.queue_snapshot(build, t1)
    assert outbox.messages(with_body=True)[-1] == queued
    sequence = outbox.next_sequence()

    # The interval passed: queued again, changed or not.
    t2 = T0 + timedelta(hours=1)
    assert outbox.snapshot_due(t2)
    assert outbox.queue_snapshot(build, t2)
    [_, again] = outbox.messages(with_body=True)
    assert again.key != queued.key and again.sequence == sequence  # a skipped one reserved nothing
    assert decode(again).generated_at == t2
    assert not outbox.queue_snapshot(build, t2 + timedelta(minutes=1))
    assert outbox.queue_snapshot(build, t2 + timedelta(minutes=2), force=True)
    assert [m.kind for m in outbox.messages()] == ["events", "inventory"]


def test_a_parked_snapshot_is_kept_beside_the_newer_one(store: Store):
    outbox = Outbox(store)
    build = builder(store, outbox)
    scan(store, [unit(1, T0)], T0)
    outbox.queue_snapshot(build, T0)
    events, snapshot = outbox.messages()
    outbox.park(snapshot, 422, "HTTP 422: refused")
    t1 = T0 + timedelta(minutes=1)
    scan(store, [unit(1, t1, firmware="2.0")], t1)
    assert outbox.queue_snapshot(build, t1)
    t2 = T0 + timedelta(minutes=2)
    scan(store, [unit(1, t2, firmware="3.0")], t2)
    assert outbox.queue_snapshot(build, t2)
    kinds = [(m.kind, m.state, m.events, m.key == snapshot.key) for m in outbox.messages()]
    assert kinds == [
        ("events", "pending", 1, False),
        ("inventory", "parked", 0, True),
        ("events", "pending", 2, False),
        ("inventory", "pending", 0, False),
    ]
    parked = outbox.messages()[1]
    assert (parked.last_status, parked.last_error) == (422, "HTTP 422: refused")
    head = outbox.head()
    assert head is not None and head.key == events.key


# --------------------------------------------------------------------------- the bound


def sealed_events_messages(store: Store, outbox: Outbox, count: int, per: int) -> None:
    """``count`` events messages of ``per`` new units each, each attempted once (so that
    none absorbs the next)."""
    for k in range(count):
        at = T0 + timedelta(minutes=k)
        scan(store, [unit(i, at) for i in range((k + 1) * per)], at)
        outbox.take_events(at)
        outbox.begin_attempt(outbox.messages()[-1], at)


def test_the_bound_drops_the_oldest_events_messages_whole_and_counts_them(store: Store):
    roomy = Outbox(store)
    sealed_events_messages(store, roomy, 4, 20)
    at = T0 + timedelta(minutes=10)
    roomy.queue_snapshot(builder(store, roomy), at)
    m1, m2, m3, m4, snapshot = roomy.messages()
    assert [m.events for m in (m1, m2, m3, m4)] == [20, 20, 20, 20]

    # Room for the snapshot, m3, m4 and one more of m4's size: one new small message
    # pushes out m1 and m2 (whole, oldest first), nothing else.
    bounded = Outbox(store, max_bytes=snapshot.size + m3.size + 2 * m4.size)
    t1 = at + timedelta(minutes=1)
    scan(store, [unit(0, t1, firmware="2.0"), *(unit(i, t1) for i in range(1, 80))], t1)
    assert bounded.take_events(t1) == 1
    left = bounded.messages()
    assert [m.key for m in left[:3]] == [m3.key, m4.key, snapshot.key]
    assert [(m.kind, m.events) for m in left[3:]] == [("events", 1)]
    stats = bounded.stats()
    assert (stats.dropped_events, stats.dropped_messages) == (40, 2)
    assert stats.bytes <= bounded.max_bytes

    # The next snapshot tells the portal.
    assert bounded.queue_snapshot(builder(store, bounded), t1, force=True)
    last = bounded.messages(with_body=True)[-1]
    doc = decode(last)
    assert isinstance(doc, InventoryMessage) and doc.dropped_events == 40
    assert bounded.stats().dropped_events == 40  # that snapshot fitted: nothing more dropped

    # A bound below the snapshot's own size: every events message goes, parked ones too;
    # the snapshot stays.
    bounded.park(bounded.messages()[0], 400, "HTTP 400")
    tiny = Outbox(store, max_bytes=1)
    t2 = t1 + timedelta(minutes=1)
    scan(store, [unit(0, t2, firmware="3.0"), *(unit(i, t2) for i in range(1, 80))], t2)
    tiny.take_events(t2)
    [kept] = tiny.messages()
    assert (kept.kind, kept.key) == ("inventory", last.key)
    stats = tiny.stats()
    assert (stats.dropped_events, stats.dropped_messages) == (40 + 20 + 20 + 1 + 1, 2 + 4)
    assert stats.events_waiting == 0  # dropped on purpose, counted, not waiting forever
    assert tiny.queue_snapshot(builder(store, tiny), t2, force=True)
    doc = decode(tiny.messages(with_body=True)[-1])
    assert isinstance(doc, InventoryMessage) and doc.dropped_events == 82
    assert [m.kind for m in tiny.messages()] == ["inventory"]


def test_max_bytes_must_be_positive(store: Store):
    with pytest.raises(ValueError, match="max_bytes"):
        Outbox(store, max_bytes=0)


# --------------------------------------------------------------------------- parking


def test_unpark_puts_parked_messages_back_where_they_stood(store: Store):
    outbox = Outbox(store)
    sealed_events_messages(store, outbox, 2, 1)
    outbox.queue_snapshot(builder(store, outbox), T0 + timedelta(minutes=5))
    m1, m2, snapshot = outbox.messages()
    outbox.park(m1, 400, "HTTP 400 Bad Request: no")
    outbox.park(snapshot, 409, "HTTP 409 Conflict")
    head = outbox.head()
    assert head is not None and head.key == m2.key
    assert [(m.state, m.last_status) for m in outbox.messages()] == [
        ("parked", 400),
        ("pending", None),
        ("parked", 409),
    ]
    assert outbox.stats().parked == 2
    assert outbox.unpark([snapshot.id, 12345]) == 1
    assert outbox.unpark() == 1
    assert outbox.unpark() == 0
    head = outbox.head()
    assert head is not None and head.key == m1.key  # back first, before m2
    assert [m.state for m in outbox.messages()] == ["pending"] * 3
    assert [m.key for m in outbox.messages()] == [m1.key, m2.key, snapshot.key]


def test_a_delivered_message_leaves_and_the_portal_state_is_kept(store: Store):
    outbox = Outbox(store)
    scan(store, [unit(1, T0)], T0)
    outbox.take_events(T0)
    head = outbox.head()
    assert head is not None and head.body
    assert outbox.portal_state().state == "unknown"
    outbox.set_portal_state("retrying", "HTTP 503", T0)
    outbox.set_portal_state("retrying", "HTTP 502", T0 + timedelta(minutes=1))
    state = outbox.portal_state()
    assert (state.state, state.reason, state.since) == ("retrying", "HTTP 502", T0)  # since: first
    outbox.delivered(head, T0 + timedelta(minutes=2), 202)
    assert outbox.head() is None and outbox.stats().empty
    assert not outbox.begin_attempt(head, T0)  # gone: no attempt counted
    state = outbox.portal_state()
    assert (state.state, state.last_success) == ("ok", T0 + timedelta(minutes=2))


# --------------------------------------------------------------------------- across restarts


def test_agent_id_and_sequence_survive_a_restart(tmp_path: Path):
    with Store.open(tmp_path) as store:
        outbox = Outbox(store)
        agent_id = outbox.agent.id
        scan(store, [unit(1, T0)], T0)
        outbox.take_events(T0)
        [message] = outbox.messages()
        outbox.delivered(message, T0, 202)
        assert outbox.stats().empty
    with Store.open(tmp_path) as store:
        outbox = Outbox(store)
        assert outbox.agent.id == agent_id
        t1 = T0 + timedelta(hours=1)
        scan(store, [unit(1, t1), unit(2, t1)], t1)
        outbox.take_events(t1)
        [message] = outbox.messages(with_body=True)
        assert message.sequence == 2 and message.key != ""  # never 1 again
        assert decode(message).agent.id == agent_id
        named = Outbox(store, agent_id="site-oslo-pi-01", hostname="oslo-pi-01", version="9.9")
        assert (named.agent.id, named.agent.hostname, named.agent.version) == (
            "site-oslo-pi-01",
            "oslo-pi-01",
            "9.9",
        )
        assert named.next_sequence() == 3
    with Store.open(tmp_path) as store:
        assert Outbox(store).agent.id == agent_id  # a configured id does not overwrite the stored one


def write_v2_database(state_dir: Path, events: list[ChangeEvent]) -> None:
    """A state database as roomsync wrote it before schema 3 (no outbox), holding ``events``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(state_dir / DB_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for migration in MIGRATIONS[:2]:
        for statement in migration.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    device = unit(1, T0)
    db.execute(
        "INSERT INTO devices (identity, room, product, serial, first_seen, last_seen, data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            device.identity,
            device.room,
            device.product,
            device.serial,
            T0.isoformat(),
            T0.isoformat(),
            json.dumps(device.to_dict(), sort_keys=True),
        ),
    )
    db.execute(
        "INSERT INTO scans (finished_at, devices, errors, sources) VALUES (?, 1, 0, ?)",
        (T0.isoformat(), '["usb"]'),
    )
    for event in events:
        db.execute(
            "INSERT INTO events (id, scan_id, at, type, identity, serial, room, data) "
            "VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
            (
                event.id,
                event.at.isoformat(timespec="microseconds"),
                str(event.type),
                event.identity,
                event.serial,
                event.room,
                json.dumps(event.to_dict(), sort_keys=True),
            ),
        )
    db.close()


def test_a_v2_database_migrates_and_its_events_are_delivered(tmp_path: Path):
    device = unit(1, T0)
    events = [
        ChangeEvent(
            "0b7e1f5c-0000-4000-8000-000000000001",
            EventType.DEVICE_ADDED,
            T0,
            device.identity,
            device.product,
            device.serial,
            device.room,
            None,
            {"room": "oslo-4-12"},
        ),
        ChangeEvent(
            "0b7e1f5c-0000-4000-8000-000000000002",
            EventType.FIRMWARE_CHANGED,
            T0 + timedelta(minutes=1),
            device.identity,
            device.product,
            device.serial,
            device.room,
            {"firmware": "0.9"},
            {"firmware": "1.0"},
        ),
    ]
    write_v2_database(tmp_path, events)
    token = tmp_path / "token"
    token.write_text("v2-token\n")
    with Store.open(tmp_path) as store, PortalStandIn("v2-token") as portal:
        assert store.schema_version == SCHEMA_VERSION == 6
        outbox = Outbox(store)
        assert outbox.stats().events_waiting == 2  # cursor 0: everything v2 stored is still to send
        delivery = Delivery(outbox, PortalSettings(portal.url, token, timeout=5, backoff_cap=0.1))
        result = asyncio.run(delivery.run(deadline=time.monotonic() + 10))
        assert (result.stopped_because, result.events_delivered) == ("empty", 2)
        assert [str(e.id) for e in portal.events] == [e.id for e in events]
        assert [e.type for e in portal.events] == [EventType.DEVICE_ADDED, EventType.FIRMWARE_CHANGED]
        assert outbox.stats().empty


# --------------------------------------------------------------------------- pruning


def test_events_pruning_keeps_what_a_queued_message_still_carries(store: Store):
    keep_one_day = Retention(events_days=1)
    outbox = Outbox(store)
    scan(store, [unit(1, T0), unit(2, T0)], T0, keep_one_day)
    outbox.take_events(T0)
    [held] = outbox.messages()
    t1 = T0 + timedelta(days=3)
    scan(store, [unit(1, t1, firmware="2.0"), unit(2, t1)], t1, keep_one_day)
    # Old and taken, but a queued message (held, never delivered) still carries them.
    assert [e.type for e in store.events(limit=None)] == [
        EventType.DEVICE_ADDED,
        EventType.DEVICE_ADDED,
        EventType.FIRMWARE_CHANGED,
    ]
    outbox.delivered(held, t1, 202)
    t2 = T0 + timedelta(days=6)
    scan(store, [unit(1, t2, firmware="3.0"), unit(2, t2)], t2, keep_one_day)
    # The delivered ones go; the t1 event is old but not taken yet: it stays.
    assert [(e.type, e.at) for e in store.events(limit=None)] == [
        (EventType.FIRMWARE_CHANGED, t1),
        (EventType.FIRMWARE_CHANGED, t2),
    ]
    outbox.take_events(t2)
    [message] = outbox.messages(with_body=True)
    assert len(event_ids(message)) == 2


def test_events_not_yet_taken_are_never_pruned(store: Store):
    scan(store, [unit(1, T0)], T0, Retention(events_days=0))
    scan(store, [unit(1, T0 + timedelta(days=400))], T0 + timedelta(days=400), Retention(events_days=0))
    outbox = Outbox(store)
    assert outbox.take_events(T0) == 1


# --------------------------------------------------------------------------- store failures


def test_a_locked_database_is_a_clear_error_and_loses_nothing(tmp_path: Path):
    with Store.open(tmp_path, busy_timeout=0.2) as store:
        scan(store, [unit(1, T0), unit(2, T0)], T0)
        holder = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="is locked"):
                Outbox(store)  # the agent id is stored on first use
            outbox = Outbox(store, agent_id="site-a")
            with pytest.raises(StoreError, match="is locked by another process"):
                outbox.take_events(T0)
            with pytest.raises(StoreError, match="is locked"):
                outbox.queue_snapshot(builder(store, outbox), T0)
            assert outbox.head() is None  # reading still works (WAL)
            assert outbox.stats().events_waiting == 2
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert outbox.queue_snapshot(builder(store, outbox), T0)
        events, _ = outbox.messages(with_body=True)
        assert event_ids(events) == stored_event_ids(store)
        head = outbox.head()
        assert head is not None
        holder = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="is locked"):
                outbox.begin_attempt(head, T0)
            with pytest.raises(StoreError, match="is locked"):
                outbox.delivered(head, T0, 202)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert [m.attempts for m in outbox.messages()] == [0, 0]
        assert outbox.head() == head


def snapshot_state(outbox: Outbox) -> list[tuple[str, int, bytes, str]]:
    return [(m.key, m.sequence, m.body, m.state) for m in outbox.messages(with_body=True)]


def test_a_full_database_refuses_the_snapshot_keeps_the_queue_and_recovers(store: Store):
    """The database may not grow (``PRAGMA max_page_count``: SQLite's own "database or
    disk is full"); the real full disk is the next test."""
    outbox = Outbox(store)
    build = builder(store, outbox)
    scan(store, [unit(i, T0) for i in range(50)], T0)
    outbox.queue_snapshot(build, T0)
    t1 = T0 + timedelta(hours=1)
    # Firmware strings gzip cannot shrink much: the new snapshot (~8 KB) needs pages of its own
    # (else it may fit where the pending one it replaces was, and nothing is refused).
    noise = ["".join(hashlib.sha512(f"{i}.{n}".encode()).hexdigest() for n in range(4)) for i in range(50)]
    scan(store, [unit(i, t1, firmware=f"2.0+{noise[i]}") for i in range(50)], t1)
    before, sequence = snapshot_state(outbox), outbox.next_sequence()
    db = store._db  # this connection's limit: the test's stand-in for a full disk
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    try:
        with pytest.raises(
            StoreError,
            match=r"the disk is full .*nothing was lost, the previous state is "
            r"intact; free space",
        ):
            outbox.queue_snapshot(build, t1)
        assert snapshot_state(outbox) == before
        assert outbox.next_sequence() == sequence
        assert outbox.stats().events_waiting == 50  # not taken: still in the store, still to send
    finally:
        db.execute("PRAGMA max_page_count = 1073741823")
    assert outbox.queue_snapshot(build, t1)
    messages = outbox.messages(with_body=True)
    assert [(m.kind, m.events) for m in messages] == [("events", 100), ("inventory", 0)]
    assert messages[-1].sequence == sequence + 1
    assert event_ids(messages[0]) == stored_event_ids(store)


FULL_DISK_SCRIPT = r"""
import json, os, sqlite3, subprocess, sys
from datetime import UTC, datetime, timedelta
from agent.catalog import load_catalog
from agent.model import Device, Transport
from agent.store import DB_NAME, Store, StoreError
from agent.uploader.outbox import Outbox
from agent.uploader.snapshot import SnapshotContext, build_snapshot

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
def unit(i, at, fw):
    return Device(product="Rally Bar", transport=Transport.USB, address=f"1-{i}", first_seen=at, last_seen=at,
                  room="oslo-4-12", serial=f"S{i:05d}", serial_label_grade=True, sources=["usb"], firmware=fw)

mount = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount], check=True)
state = os.path.join(mount, "state")
out = {}
store = Store.open(state)
outbox = Outbox(store, agent_id="site-a")
context = SnapshotContext(load_catalog())
build = lambda seq, at, dropped: build_snapshot(store, context, outbox.agent, seq, at, dropped)
store.record_scan([unit(i, T0, "1.0") for i in range(200)], [], T0, sources_run={"usb"})
outbox.queue_snapshot(build, T0)
t1 = T0 + timedelta(hours=1)
store.record_scan([unit(i, t1, "2.0") for i in range(200)], [], t1, sources_run={"usb"})
def queue(o):
    return [(m.key, m.sequence, m.body.hex(), m.state) for m in o.messages(with_body=True)]
before = queue(outbox)
# An empty WAL: whatever the snapshot writes needs new space.
checkpoint = sqlite3.connect(os.path.join(state, DB_NAME))
checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
checkpoint.close()
filler = os.path.join(mount, "filler")
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
for size in (1 << 20, 1 << 12, 1):
    try:
        while True:
            os.write(fd, b"\0" * size)
    except OSError as exc:
        out["fill"] = exc.strerror
os.close(fd)
try:
    out["full"] = outbox.queue_snapshot(build, t1)
except StoreError as exc:
    out["full"] = str(exc)
out["same_connection_intact"] = queue(outbox) == before
out["waiting"] = outbox.stats().events_waiting
with Store.open(state) as other:
    out["new_connection_intact"] = queue(Outbox(other, agent_id="site-a")) == before
os.unlink(filler)
out["after_free"] = outbox.queue_snapshot(build, t1)
out["kinds"] = [(m.kind, m.events) for m in outbox.messages()]
out["waiting_after"] = outbox.stats().events_waiting
store.close()
db = sqlite3.connect(os.path.join(state, DB_NAME))
out["integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
db.close()
print(json.dumps(out))
"""


def test_a_full_disk_refuses_the_snapshot_keeps_the_queue_and_recovers(tmp_path: Path):
    """On a real 4 MB tmpfs, mounted in a private mount namespace (needs root)."""
    out = run_on_small_disk(tmp_path, FULL_DISK_SCRIPT)
    assert out["fill"] == "No space left on device"
    assert isinstance(out["full"], str), out
    assert "the disk is full" in out["full"] and "nothing was lost" in out["full"]
    assert out["same_connection_intact"] and out["new_connection_intact"]
    assert out["waiting"] == 200
    assert out["after_free"] is True
    assert out["kinds"] == [["events", 400], ["inventory", 0]]
    assert out["waiting_after"] == 0
    assert out["integrity"] == "ok"
