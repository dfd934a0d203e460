"""One queue per output in the durable outbox (schema v6, ``agent/uploader/outbox.py``) over a
real SQLite store: a v5 store's queue becomes the portal's, sequences and cursors are each
output's own, an output configured later starts from now, each queue has its own bound and
counters, events are pruned only once every output took them, and GLPI's queue holds one
document per unit, queued again only when it changed (or on the resend schedule)."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import zlib
from datetime import timedelta
from pathlib import Path

import pytest

from agent.store import DB_NAME, MIGRATIONS, Retention, Store
from agent.uploader.outbox import Outbox, discard_output, queued_outputs
from agent.uploader.protocol import EventsMessage, parse_message
from tests.test_outbox import T0, builder
from tests.usb_units import scan, unit


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "state") as opened:
        yield opened


def v5_store_with_a_queued_message(state: Path) -> None:
    """A schema-5 store (as roomsync wrote it before outputs) holding one queued portal
    message, its sequence and cursor in ``meta``."""
    state.mkdir()
    db = sqlite3.connect(state / DB_NAME)
    for migration in MIGRATIONS[:5]:
        for statement in migration.split(";"):
            if statement.strip():
                db.execute(statement)
    db.execute(
        "INSERT INTO outbox (kind, key, sequence, created_at, body, size, events, first_event, "
        "last_event, state, attempts, last_error) VALUES ('inventory', 'key-1', 7, "
        "'2026-11-01T09:00:00.000000+00:00', ?, 3, 0, NULL, NULL, 'parked', 2, 'HTTP 400')",
        (b"abc",),
    )
    # A message since delivered: its id is never to be given again.
    db.execute(
        "INSERT INTO outbox (kind, key, sequence, created_at, body, size, events, state) VALUES "
        "('events', 'key-2', 8, '2026-11-01T09:00:00.000000+00:00', x'00', 1, 1, 'pending')"
    )
    db.execute("DELETE FROM outbox WHERE key = 'key-2'")
    db.execute("INSERT INTO meta (key, value) VALUES ('sequence', '8'), ('events_cursor', '0')")
    db.execute("PRAGMA user_version = 5")
    db.commit()
    db.close()


def test_a_v5_queue_becomes_the_portals_and_sequences_go_on(tmp_path: Path) -> None:
    state = tmp_path / "state"
    v5_store_with_a_queued_message(state)
    with Store.open(state) as store:
        portal, mqtt = Outbox(store), Outbox(store, output="mqtt")
        [kept] = portal.messages(with_body=True)
        assert (kept.output, kept.key, kept.sequence, kept.state, kept.attempts, kept.body) == (
            "portal",
            "key-1",
            7,
            "parked",
            2,
            b"abc",
        )
        assert mqtt.messages() == [] and queued_outputs(store) == ["portal"]
        assert portal.next_sequence() == 9 and mqtt.next_sequence() == 1
        assert portal.unpark() == 1 and portal.head() is not None and mqtt.head() is None
        # Ids go on from the old table's counter (AUTOINCREMENT: never reused).
        assert mqtt.queue_snapshot(builder(store, mqtt), T0)
        assert [m.id for m in mqtt.messages()] == [3]


def test_each_output_has_its_own_sequences_cursor_and_state(store: Store) -> None:
    scan(store, [unit(i, T0) for i in range(3)], T0)  # three "added" events before MQTT existed
    portal, mqtt = Outbox(store), Outbox(store, output="mqtt")
    assert portal.take_events(T0) == 3
    # An output configured later starts from now: its snapshot says the state.
    assert mqtt.take_events(T0) == 0 and mqtt.stats().events_waiting == 0
    later = T0 + timedelta(minutes=1)
    scan(store, [unit(i, later, firmware="2.0") for i in range(3)], later)
    assert mqtt.stats().events_waiting == 3 and portal.stats().events_waiting == 3
    assert mqtt.queue_snapshot(builder(store, mqtt), later)
    assert portal.queue_snapshot(builder(store, portal), later)
    assert [(m.kind, m.sequence, m.events) for m in mqtt.messages()] == [
        ("events", 1, 3),
        ("inventory", 2, 0),
    ]
    # The portal's never-attempted events message took the new ones in (under sequence 2).
    assert [(m.kind, m.sequence, m.events) for m in portal.messages()] == [
        ("events", 2, 6),
        ("inventory", 3, 0),
    ]
    # Delivering one output's head leaves the other's queue as it was.
    head = mqtt.head()
    assert head is not None and head.output == "mqtt"
    assert mqtt.begin_attempt(head, later)
    mqtt.delivered(head, later, "PUBACK")
    assert mqtt.stats().state.state == "ok" and mqtt.stats().state.reason == "PUBACK"
    assert portal.stats().state.state == "unknown" and len(portal.messages()) == 2
    portal.set_state("unhealthy", "HTTP 401", later)
    assert mqtt.stats().state.state == "ok"
    assert mqtt.stats().to_dict()["delivery"]["state"] == "ok" and "portal" not in mqtt.stats().to_dict()
    assert portal.stats().to_dict()["portal"]["state"] == "unhealthy"
    # Each events message carries its own output's sequence.
    [events] = [m for m in portal.messages(with_body=True) if m.sequence == 2]
    doc = parse_message(gzip.decompress(events.body))
    assert isinstance(doc, EventsMessage) and doc.sequence == 2


def test_each_output_has_its_own_bound_and_counts_what_it_dropped(store: Store) -> None:
    mqtt = Outbox(store, output="mqtt", max_bytes=1)
    portal = Outbox(store)
    mqtt.take_events(T0)  # starts its cursor
    for minute in range(1, 4):
        at = T0 + timedelta(minutes=minute)
        scan(store, [unit(i, at, firmware=f"{minute}.0") for i in range(50)], at)
        mqtt.take_events(at)
        # a message attempted once is never joined by later events
        head = mqtt.head()
        if head is not None:
            mqtt.begin_attempt(head, at)
    stats = mqtt.stats()
    assert stats.dropped_messages >= 2 and stats.dropped_events >= 100
    assert portal.stats().dropped_events == 0 and portal.take_events(T0) > 0
    assert portal.dropped_events() == 0
    # The snapshot carries the output's own count.
    at = T0 + timedelta(minutes=9)
    assert mqtt.queue_snapshot(builder(store, mqtt), at)
    [snapshot] = [m for m in mqtt.messages(with_body=True) if m.kind == "inventory"]
    assert json.loads(gzip.decompress(snapshot.body))["dropped_events"] == stats.dropped_events


def test_events_are_pruned_only_once_every_output_took_them(store: Store) -> None:
    retention = Retention(events_days=1)
    portal, mqtt = Outbox(store), Outbox(store, output="mqtt")
    mqtt.take_events(T0)
    scan(store, [unit(i, T0) for i in range(5)], T0)
    portal.take_events(T0)
    for message in portal.messages():  # the portal delivered them
        portal.delivered(message, T0, 202)
    later = T0 + timedelta(days=3)
    scan(store, [unit(i, later) for i in range(5)], later, retention)
    assert len(store.events(limit=None)) == 5  # MQTT has not taken them yet
    assert mqtt.take_events(later) == 5
    for message in mqtt.messages():
        mqtt.delivered(message, later, "PUBACK")
    scan(
        store, [unit(i, later + timedelta(hours=1)) for i in range(5)], later + timedelta(hours=1), retention
    )
    assert store.events(limit=None) == []


def docs(*pairs: tuple[str, str]) -> list[tuple[str, str, bytes]]:
    return [(item, text, zlib.compress(text.encode())) for item, text in pairs]


def test_glpi_queues_a_document_only_when_it_changed_and_all_on_the_schedule(store: Store) -> None:
    glpi = Outbox(store, output="glpi", snapshot_interval=timedelta(hours=24))
    assert glpi.queue_documents(docs(("host", "a"), ("bar-1", "b")), T0) == 2
    assert glpi.queue_documents(docs(("host", "a"), ("bar-1", "b")), T0 + timedelta(hours=1)) == 0
    # One changed: only it is queued, in place of its pending predecessor.
    assert glpi.queue_documents(docs(("host", "a"), ("bar-1", "c")), T0 + timedelta(hours=2)) == 1
    queued = glpi.messages(with_body=True)
    assert [(m.item, zlib.decompress(m.body)) for m in queued] == [("host", b"a"), ("bar-1", b"c")]
    assert [m.sequence for m in queued] == [1, 3] and {m.kind for m in queued} == {"glpi"}
    # Delivered, unchanged: nothing; the resend schedule passed: all of them; force: all.
    for message in queued:
        glpi.delivered(message, T0, 200)
    assert glpi.queue_documents(docs(("host", "a"), ("bar-1", "c")), T0 + timedelta(hours=3)) == 0
    assert glpi.queue_documents(docs(("host", "a"), ("bar-1", "c")), T0 + timedelta(hours=25)) == 2
    assert (
        glpi.queue_documents(docs(("host", "a"), ("bar-1", "c")), T0 + timedelta(hours=26), force=True) == 2
    )
    assert len(glpi.messages()) == 2  # each replaced its pending predecessor
    # GLPI's queue takes no events, and no other queue sees its documents.
    scan(store, [unit(1, T0)], T0)
    assert glpi.take_events(T0) == 0 and glpi.stats().events_waiting == 0
    assert Outbox(store).messages() == []


def test_glpi_documents_dropped_by_the_bound_are_queued_again_next_round(store: Store) -> None:
    glpi = Outbox(store, output="glpi", max_bytes=400)
    bodies = [(f"unit-{i}", os.urandom(300).hex()) for i in range(3)]  # ~300 bytes each, compressed
    glpi.queue_documents(docs(*bodies), T0)
    stats = glpi.stats()
    assert stats.bytes <= 400 and stats.dropped_messages >= 1 and stats.dropped_events == 0
    delivered = set()
    for minute in range(1, 4):  # each round: deliver what is queued, queue again
        for message in glpi.messages():
            delivered.add(message.item)
            glpi.delivered(message, T0, 200)
        # What the bound dropped is not "known": an unchanged round queues it again.
        queued = glpi.queue_documents(docs(*bodies), T0 + timedelta(minutes=minute))
        assert queued == len({item for item, _ in bodies} - delivered) or queued == 0
    assert delivered == {item for item, _ in bodies} and glpi.messages() == []


def test_an_unknown_output_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown output"):
        Outbox(store, output="smtp")


def test_a_newer_glpi_document_replaces_a_parked_one_of_its_unit(store: Store) -> None:
    glpi = Outbox(store, output="glpi")
    glpi.queue_documents(docs(("bar-1", "v1"), ("host", "h")), T0)
    first = glpi.head()
    assert first is not None and first.item == "bar-1"
    glpi.park(first, 500, "JSON does not validate")
    glpi.queue_documents(docs(("bar-1", "v2"), ("host", "h")), T0 + timedelta(minutes=1))
    queued = glpi.messages(with_body=True)
    # v1 can never reach GLPI after v2 (push --retry-parked would have sent it).
    assert [(m.item, m.state, zlib.decompress(m.body)) for m in queued] == [
        ("host", "pending", b"h"),
        ("bar-1", "pending", b"v2"),
    ]
    assert glpi.unpark() == 0


def test_discarding_an_output_drops_its_queue_and_lets_events_be_pruned(store: Store) -> None:
    retention = Retention(events_days=1)
    portal, mqtt = Outbox(store), Outbox(store, output="mqtt")
    mqtt.take_events(T0)
    scan(store, [unit(i, T0) for i in range(4)], T0)
    portal.take_events(T0)
    for message in portal.messages():
        portal.delivered(message, T0, 202)
    mqtt.take_events(T0)  # queued for MQTT, never delivered: the output was taken out
    later = T0 + timedelta(days=3)
    scan(store, [unit(i, later) for i in range(4)], later, retention)
    assert len(store.events(limit=None)) == 4  # held for the MQTT queue
    with pytest.raises(ValueError, match="portal"):
        discard_output(store, "portal")
    assert discard_output(store, "mqtt") == 1
    assert mqtt.messages() == [] and queued_outputs(store) == []
    assert mqtt.stats().events_waiting == 0 and mqtt.next_sequence() == 1  # a fresh start
    scan(store, [unit(i, later) for i in range(4)], later + timedelta(hours=1), retention)
    assert store.events(limit=None) == []
