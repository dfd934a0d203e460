"""The SQLite store: round trips, merges, migrations and clear errors (real SQLite files)."""

from __future__ import annotations

import itertools
import json
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.events import EventType
from agent.model import Device, HealthIssue, Room, SerialSource, Severity, Transport
from agent.store import DB_NAME, MIGRATIONS, SCHEMA_VERSION, Retention, Store, StoreError
from tests.small_disk import run_on_small_disk
from tests.sysfs import add_device

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]


def bar(seen: datetime, *, room: str | None = "oslo-4-12", firmware: str = "1.9.556") -> Device:
    sight = Device(
        product="Sight",
        transport=Transport.USB,
        address="2-1.1",
        first_seen=seen,
        last_seen=seen,
        serial="2325LZ51XY58",
        serial_label_grade=True,
        serial_source=SerialSource.SYNC_INTERFACE,
        category="collabos-peripheral",
    )
    return Device(
        product="Rally Bar",
        transport=Transport.USB,
        address="2-1.1",
        first_seen=seen,
        last_seen=seen,
        room=room,
        serial="2313FD1N08Z2",
        serial_label_grade=True,
        serial_source=SerialSource.SYNC_INTERFACE,
        firmware=firmware,
        vendor_id=0x046D,
        product_id=0x089B,
        category="collabos-bar",
        components={"audio": "2.3"},
        health_issues=[HealthIssue("peripheral-missing", "mic pod missing", Severity.WARNING)],
        children=[sight],
        sources=["usb"],
        attributes={"usb_release": "0020"},
    )


def test_device_round_trip_through_the_store(tmp_path: Path):
    original = bar(T0)
    with Store.open(tmp_path) as store:
        store.record_scan([original], [Room("oslo-4-12", "Fjord")], T0)
        [back] = store.devices()
        # The stored unit is the reading, plus what merging adds: its channel, where each
        # fact came from, and the identity of its record.
        stored = back.to_dict()
        assert [s["source"] for s in stored.pop("seen_by")] == ["usb"]
        assert {f: p["source"] for f, p in stored.pop("provenance").items()} == dict.fromkeys(
            ["address", "health", "model", "serial", "firmware"], "usb"
        )
        assert stored.pop("identity_assigned") is True
        expected = original.to_dict()
        for key in ("seen_by", "provenance", "identity_assigned"):
            expected.pop(key)
        # A unit read through the bar was seen by the bar's channel, at its own address.
        [child] = stored["children"]
        assert [(s["source"], s["address"]) for s in child.pop("seen_by")] == [("usb", child["address"])]
        for child in expected["children"]:
            child.pop("seen_by")
        assert stored == expected
        assert store.rooms() == [Room("oslo-4-12", "Fjord")]
        assert store.last_scan() == T0
    assert (tmp_path / DB_NAME).exists()


def test_later_scan_updates_facts_and_keeps_first_seen(tmp_path: Path):
    later = T0 + timedelta(days=3)
    with Store.open(tmp_path) as store:
        store.record_scan([bar(T0)], [], T0)
        store.record_scan([bar(later, firmware="1.10.0")], [], later)
        [device] = store.devices()
    assert (device.first_seen, device.last_seen, device.firmware) == (T0, later, "1.10.0")


def test_a_scan_that_misses_a_unit_does_not_forget_it(tmp_path: Path):
    with Store.open(tmp_path) as store:
        store.record_scan([bar(T0)], [], T0)
        store.record_scan([], [], T0 + timedelta(hours=1))
        assert [d.serial for d in store.devices()] == ["2313FD1N08Z2"]


def test_schema_version_and_newer_schema_refused(tmp_path: Path):
    with Store.open(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this roomsync understands"):
        Store.open(tmp_path)


def test_corrupt_database_is_a_clear_error(tmp_path: Path):
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match=r"is corrupt .*move it aside"):
        Store.open(tmp_path)


def test_locked_database_is_a_clear_error(tmp_path: Path):
    Store.open(tmp_path).close()
    holder = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with Store.open(tmp_path, busy_timeout=0.2) as store, pytest.raises(StoreError, match="is locked"):
            store.record_scan([bar(T0)], [], T0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Store.open(tmp_path) as store:
        assert store.devices() == []  # the refused scan left nothing half-written


def test_state_directory_that_cannot_be_created(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the state directory"):
        Store.open(blocker / "state")


def test_scan_stores_and_no_store_skips(tmp_path: Path):
    sysfs = tmp_path / "sys"
    add_device(sysfs, "2-1.1", 0x046D, 0x089B, serial="2313FD1N08Z2", product="Logi Rally Bar")
    config = tmp_path / "agent.toml"
    config.write_text('[room]\nid = "oslo-4-12"\n')
    base = [
        sys.executable,
        "-m",
        "agent",
        "scan",
        "--config",
        str(config),
        "--sysfs-root",
        str(sysfs),
        "--json",
    ]
    skipped = subprocess.run(
        [*base, "--state-dir", str(tmp_path / "none"), "--no-store"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert skipped.returncode == 0 and not (tmp_path / "none").exists()
    stored = subprocess.run(
        [*base, "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=60
    )
    assert stored.returncode == 0, stored.stderr
    with Store.open(tmp_path / "state") as store:
        [device] = store.devices()
    assert (device.serial, device.room) == ("2313FD1N08Z2", "oslo-4-12")
    assert json.loads(stored.stdout)["devices"][0]["identity"] == device.identity


def test_unwritable_state_is_one_error_and_the_scan_still_prints(tmp_path: Path):
    sysfs = tmp_path / "sys"
    add_device(sysfs, "2-1.1", 0x046D, 0x089B, serial="2313FD1N08Z2", product="Logi Rally Bar")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / DB_NAME).write_bytes(b"garbage" * 500)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "scan",
            "--sysfs-root",
            str(sysfs),
            "--json",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = json.loads(result.stdout)
    assert result.returncode == 1
    assert [d["serial"] for d in out["devices"]] == ["2313FD1N08Z2"]
    assert out["errors"][0]["source"] == "store" and "corrupt" in out["errors"][0]["message"]


# --------------------------------------------------------------------------- schema v2: events, history


def ids() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(numbers):012d}"


def unit(
    serial: str,
    seen: datetime,
    *,
    room: str | None = "oslo-4-12",
    source: str = "usb",
    firmware: str | None = "1.0",
) -> Device:
    return Device(
        product="Rally Bar",
        transport=Transport(source),
        address=f"{source}-{serial}",
        first_seen=seen,
        last_seen=seen,
        room=room,
        serial=serial,
        serial_label_grade=True,
        firmware=firmware,
        sources=[source],
        category="collabos-bar",
    )


def write_v1_database(state_dir: Path, device: Device, finished_at: datetime) -> None:
    """A state database as roomsync wrote it before schema 2: migration 1 only, rows as the
    v1 record_scan wrote them."""
    state_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(state_dir / DB_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO devices (identity, room, product, serial, first_seen, last_seen, data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            device.identity,
            device.room,
            device.product,
            device.serial,
            device.first_seen.isoformat(),
            device.last_seen.isoformat(),
            json.dumps(device.to_dict(), sort_keys=True),
        ),
    )
    db.execute(
        "INSERT INTO rooms (id, data) VALUES (?, ?)",
        ("oslo-4-12", json.dumps(Room("oslo-4-12", "Fjord").to_dict())),
    )
    db.execute(
        "INSERT INTO scans (finished_at, devices, errors) VALUES (?, 1, 0)", (finished_at.isoformat(),)
    )
    db.close()


def test_a_v1_database_migrates_to_the_latest_and_keeps_its_data(tmp_path: Path):
    original = bar(T0)
    write_v1_database(tmp_path, original, T0)
    with Store.open(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION == 6
        # The unit keeps the identity v1 stored it under (now said to be its record's).
        [device] = store.devices()
        assert device.assigned_identity == original.identity
        assert {**device.to_dict(), "identity_assigned": False} == original.to_dict()
        assert store.rooms() == [Room("oslo-4-12", "Fjord")]
        assert store.last_scan() == T0
        assert store.events() == []
        assert store.tracked()[original.identity].missed == 0  # sightings taken from the stored device
        later = T0 + timedelta(hours=1)
        record = store.record_scan([bar(later)], [], later, sources_run={"usb"})
        assert record.events == ()  # a unit v1 knew is not added again
        assert store.devices()[0].first_seen == T0
        for hour in range(2, 5):
            record = store.record_scan([], [], T0 + timedelta(hours=hour), sources_run={"usb"})
        assert [e.type for e in record.events] == [EventType.DEVICE_REMOVED]
    with Store.open(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION and store.devices() == []


def test_a_migration_that_fails_leaves_the_previous_schema(tmp_path: Path):
    write_v1_database(tmp_path, bar(T0), T0)
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("CREATE TABLE history (x)")  # migration 2 cannot create its table
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="history already exists"):
        Store.open(tmp_path)
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert [r[1] for r in db.execute("PRAGMA table_info(devices)")] == [
        "identity",
        "room",
        "product",
        "serial",
        "first_seen",
        "last_seen",
        "data",
    ]
    db.close()


def test_events_are_stored_with_the_scan_in_order(tmp_path: Path):
    new_id = ids()
    times = [T0 + timedelta(hours=h) for h in range(4)]
    scans = [
        [unit("A1", times[0]), unit("B2", times[0])],
        [unit("A1", times[1], room="bergen-1"), unit("B2", times[1], firmware="1.1")],
        [unit("A1", times[2], room="bergen-1")],
        [unit("A1", times[3], room="bergen-1"), unit("C3", times[3], source="snmp")],
    ]
    with Store.open(tmp_path) as store:
        records = [
            store.record_scan(found, [], at, sources_run={"usb"}, remove_after=1, new_id=new_id)
            for found, at in zip(scans, times, strict=True)
        ]
        produced = [e for r in records for e in r.events]
        assert [(e.type, e.serial) for e in produced] == [
            (EventType.DEVICE_ADDED, "A1"),
            (EventType.DEVICE_ADDED, "B2"),
            (EventType.DEVICE_MOVED, "A1"),
            (EventType.FIRMWARE_CHANGED, "B2"),
            (EventType.DEVICE_REMOVED, "B2"),
            (EventType.DEVICE_ADDED, "C3"),
        ]
        assert [r.scan_id for r in records] == [1, 2, 3, 4]
    with Store.open(tmp_path) as store:
        assert store.events() == produced
        assert store.events(since=times[1]) == produced[2:]
        assert store.events(since=times[1].astimezone(timezone(timedelta(hours=2)))) == produced[2:]
        assert store.events(since=times[3] + timedelta(seconds=1)) == []
        assert store.events(limit=2) == produced[-2:]
        assert store.events(since=times[0], limit=None) == produced


def test_a_unit_removed_leaves_the_inventory_and_stays_readable(tmp_path: Path):
    with Store.open(tmp_path) as store:
        store.record_scan([bar(T0)], [], T0)
        for hour in (1, 2):
            assert store.record_scan([], [], T0 + timedelta(hours=hour), sources_run={"usb"}).events == ()
        assert store.tracked()[bar(T0).identity].missed == 2
    with Store.open(tmp_path) as store:  # the missed count survives a restart
        [event] = store.record_scan([], [], T0 + timedelta(hours=3), sources_run={"usb"}).events
        assert event.type is EventType.DEVICE_REMOVED
        assert store.devices() == [] and store.tracked() == {}
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("SELECT count(*) FROM sightings").fetchone() == (0,)  # what removed units knew goes
    db.close()
    with Store.open(tmp_path) as store:
        assert [d.serial for d in store.devices(removed=True)] == ["2313FD1N08Z2"]
        back = T0 + timedelta(days=5)
        [event] = store.record_scan([bar(back)], [], back).events
        assert event.type is EventType.DEVICE_ADDED
        [device] = store.devices()
        assert (device.first_seen, device.last_seen) == (T0, back)
        assert store.devices(removed=True) == []


def test_a_scan_of_other_sources_leaves_usb_units_alone(tmp_path: Path):
    with Store.open(tmp_path) as store:
        store.record_scan([bar(T0)], [], T0, sources_run={"usb", "snmp"})
        for hour in range(1, 6):
            assert store.record_scan(
                [unit("C3", T0, source="snmp")], [], T0 + timedelta(hours=hour), sources_run={"snmp"}
            ).events[:1] != (EventType.DEVICE_REMOVED,)
        assert store.tracked()[bar(T0).identity].missed == 0
        assert [e.type for e in store.events()] == [EventType.DEVICE_ADDED, EventType.DEVICE_ADDED]


def test_a_serial_conflict_is_stored_once_across_restarts(tmp_path: Path):
    with Store.open(tmp_path) as store:
        store.record_scan([unit("A1", T0, room="oslo-4-12")], [], T0, sources_run={"usb"})
    for hour in (1, 2, 3):
        with Store.open(tmp_path) as store:
            at = T0 + timedelta(hours=hour)
            found, scope = (
                ([unit("A1", at, room="bergen-1", source="snmp")], {"snmp"})
                if hour % 2
                else ([unit("A1", at)], {"usb"})
            )
            store.record_scan(found, [], at, sources_run=scope)
    with Store.open(tmp_path) as store:
        assert [e.type for e in store.events()] == [EventType.DEVICE_ADDED, EventType.SERIAL_CONFLICT]
        assert [d.room for d in store.devices()] == ["oslo-4-12"]


def test_history_keeps_the_newest_scans(tmp_path: Path):
    keep = Retention(history_days=None, history_scans=2)
    with Store.open(tmp_path) as store:
        for hour in range(5):
            at = T0 + timedelta(hours=hour)
            store.record_scan([bar(at, firmware=f"1.{hour}"), unit("A1", at)], [], at, retention=keep)
        history = store.history()
        # A1 never changed after the first scan: its readings are not history again, and that
        # scan is no longer among the newest two that changed something.
        assert [(scan, d.serial, d.firmware) for scan, d in history] == [
            (4, "2313FD1N08Z2", "1.3"),
            (5, "2313FD1N08Z2", "1.4"),
        ]
        assert [scan for scan, _ in store.history(bar(T0).identity)] == [4, 5]
        assert len(store.events()) == 2 + 4  # events are not history: they stay


def test_history_keeps_the_recent_days(tmp_path: Path):
    oslo = timezone(timedelta(hours=1))
    keep = Retention(history_days=1.5, history_scans=None)
    with Store.open(tmp_path) as store:
        for day in range(4):
            at = (T0 + timedelta(days=day)).astimezone(oslo if day % 2 else UTC)
            store.record_scan([bar(at, firmware=f"1.{day}")], [], at, retention=keep)
        assert [scan for scan, _ in store.history()] == [3, 4]
        store.record_scan([bar(T0)], [], T0 + timedelta(days=3, hours=1), retention=Retention(None, None))
        assert [scan for scan, _ in store.history()] == [3, 4, 5]
        store.record_scan([], [], T0 + timedelta(days=3, hours=2), retention=Retention(0, None))
        assert store.history() == []


def test_retention_must_not_be_negative():
    with pytest.raises(ValueError, match="history_scans must not be negative"):
        Retention(history_scans=-1)


def test_corrupt_pages_are_a_clear_error(tmp_path: Path):
    with Store.open(tmp_path) as store:
        store.record_scan([bar(T0), *(unit(f"S{i}", T0) for i in range(50))], [], T0)
    data = (tmp_path / DB_NAME).read_bytes()
    (tmp_path / DB_NAME).write_bytes(data[:4096] + bytes(range(256)) * ((len(data) - 4096) // 256))
    with pytest.raises(StoreError, match=r"is corrupt .*move it aside"), Store.open(tmp_path) as store:
        store.devices()


def test_an_unreadable_row_is_a_clear_error_and_refuses_the_scan(tmp_path: Path):
    with Store.open(tmp_path) as store:
        store.record_scan([bar(T0)], [], T0)
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE devices SET data = '{\"product\": '")
    db.commit()
    db.close()
    with Store.open(tmp_path) as store:
        with pytest.raises(StoreError, match=r"is corrupt \(a device row cannot be read"):
            store.devices()
        with pytest.raises(StoreError, match="is corrupt"):
            store.record_scan([bar(T0)], [], T0 + timedelta(hours=1))
        assert store.last_scan() == T0 and store.events() != []
        repair = sqlite3.connect(tmp_path / DB_NAME, timeout=0.2)
        repair.execute("UPDATE devices SET data = ?", (json.dumps(bar(T0).to_dict()),))
        repair.commit()
        repair.close()
        later = T0 + timedelta(hours=2)
        store.record_scan([bar(later)], [], later)  # the same open store goes on once repaired
        assert store.last_scan() == later


def test_a_scan_that_fails_midway_leaves_nothing_of_itself(tmp_path: Path):
    """The scan's inventory rows are written before its events; an event that cannot be
    stored (here: an id already used) takes the whole scan back."""

    def everything(store: Store) -> tuple[object, ...]:
        return store.devices(), store.tracked(), store.events(), store.history(), store.last_scan()

    with Store.open(tmp_path) as store:
        store.record_scan([bar(T0)], [], T0, new_id=lambda: "same-id")
        before = everything(store)
        later = T0 + timedelta(hours=1)
        with pytest.raises(StoreError, match=r"UNIQUE constraint failed: events\.id"):
            store.record_scan(
                [bar(later, room="bergen-1"), unit("A1", later)],
                [Room("bergen-1")],
                later,
                new_id=lambda: "same-id",
            )
        assert everything(store) == before
        assert store.rooms() == []
        assert len(store.record_scan([bar(later, room="bergen-1")], [], later).events) == 1


def test_a_locked_database_refuses_the_whole_scan(tmp_path: Path):
    with Store.open(tmp_path) as store:
        store.record_scan([bar(T0)], [], T0)
    holder = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with Store.open(tmp_path, busy_timeout=0.2) as store, pytest.raises(StoreError, match="is locked"):
            store.record_scan([bar(T0, room="bergen-1")], [], T0 + timedelta(hours=1))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Store.open(tmp_path) as store:
        assert store.last_scan() == T0
        assert [e.type for e in store.events()] == [EventType.DEVICE_ADDED]
        assert [d.room for d in store.devices()] == ["oslo-4-12"]


# --------------------------------------------------------------------------- full disk


FULL_DISK_SCRIPT = r"""
import json, os, sqlite3, subprocess, sys
from datetime import UTC, datetime, timedelta
from agent.model import Device, Transport
from agent.store import DB_NAME, Store, StoreError

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
def unit(i, at):
    return Device(product="Rally Bar", transport=Transport.USB, address=f"1-{i}", first_seen=at, last_seen=at,
                  room="oslo-4-12", serial=f"S{i:05d}", serial_label_grade=True, sources=["usb"],
                  attributes={"padding": "x" * 2000})

mount = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount], check=True)
out = {}
store = Store.open(os.path.join(mount, "state"))
store.record_scan([unit(0, T0)], [], T0, sources_run={"usb"})
filler = os.path.join(mount, "filler")
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
for size in (1 << 20, 1 << 12, 1):
    try:
        while True:
            os.write(fd, b"\0" * size)
    except OSError as exc:
        out["fill"] = exc.strerror
os.close(fd)
big = [unit(i, T0 + timedelta(hours=1)) for i in range(400)]
try:
    store.record_scan(big, [], T0 + timedelta(hours=1), sources_run={"usb"})
    out["full"] = None
except StoreError as exc:
    out["full"] = str(exc)
def state(s):
    return {"devices": [d.serial for d in s.devices()], "events": [str(e.type) for e in s.events()],
            "last_scan": s.last_scan().isoformat()}
out["after_full_same_connection"] = state(store)
with Store.open(os.path.join(mount, "state")) as other:
    out["after_full_new_connection"] = state(other)
os.unlink(filler)
record = store.record_scan(big, [], T0 + timedelta(hours=2), sources_run={"usb"})
out["after_free"] = {"events": len(record.events), "devices": len(store.devices()),
                     "last_scan": store.last_scan().isoformat()}
store.close()
db = sqlite3.connect(os.path.join(mount, "state", DB_NAME))
out["integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
db.close()
print(json.dumps(out))
"""


def test_a_full_disk_refuses_the_scan_keeps_the_state_and_recovers(tmp_path: Path):
    """On a real 4 MB tmpfs, mounted in a private mount namespace (needs root)."""
    out = run_on_small_disk(tmp_path, FULL_DISK_SCRIPT)
    assert out["fill"] == "No space left on device"
    message = out["full"]
    assert message is not None
    assert re.search(
        r"the disk is full .*nothing was lost, the previous state is intact; free space", message
    )
    before = {"devices": ["S00000"], "events": ["device.added"], "last_scan": T0.isoformat()}
    assert out["after_full_same_connection"] == out["after_full_new_connection"] == before
    assert out["after_free"] == {
        "events": 399,
        "devices": 400,
        "last_scan": (T0 + timedelta(hours=2)).isoformat(),
    }
    assert out["integrity"] == "ok"


# --------------------------------------------------------------------------- kill -9


def crash_scan(k: int) -> tuple[list[Device], set[str], datetime]:
    """Scan number ``k`` of a deterministic run: units come and go, move, update and change
    health; every third scan runs USB only."""
    at = T0 + timedelta(minutes=k)
    found = []
    for i in range(12):
        if (k + i) % 5 == 0 or (i >= 10 and (k // 5 + i) % 3 == 0):  # the last two go for 5 scans
            continue
        source = "usb" if i < 8 else "snmp"
        if source == "snmp" and k % 3 == 0:
            continue
        room = f"room-{(k // 7 + i) % 3}" if i % 4 == 0 else "oslo-4-12"
        device = unit(f"U{i:02d}", at, source=source, room=room, firmware=f"1.{k // 6}")
        if (k // 4 + i) % 6 == 0:
            device.health_issues = [HealthIssue("peripheral-missing", "mic pod missing")]
        found.append(device)
    return found, ({"usb"} if k % 3 == 0 else {"usb", "snmp"}), at


CRASH_WORKER = r"""
import sys
from datetime import timedelta
from agent.store import Retention, Store
from tests.test_store import T0, crash_scan

with Store.open(sys.argv[1]) as store:
    last = store.last_scan()
    k = 0 if last is None else (last - T0) // timedelta(minutes=1)
    print("ready", flush=True)
    while True:
        k += 1
        found, scope, at = crash_scan(k)
        store.record_scan(found, [], at, sources_run=scope, remove_after=2, retention=Retention(None, 5))
        print("stored", flush=True)
"""


def _consistency(path: Path) -> int:
    """Check the database a killed writer left; return how many scans it holds."""
    db = sqlite3.connect(path / DB_NAME)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        orphans = {
            "events": "SELECT count(*) FROM events WHERE scan_id NOT IN (SELECT id FROM scans)",
            "history": "SELECT count(*) FROM history WHERE scan_id NOT IN (SELECT id FROM scans)",
            "sightings": "SELECT count(*) FROM sightings WHERE identity NOT IN "
            "(SELECT identity FROM devices WHERE removed_at IS NULL)",
            "units": "SELECT count(*) FROM devices WHERE removed_at IS NULL AND identity NOT IN "
            "(SELECT identity FROM sightings)",
            # A scan's history holds the readings of the units it changed: never more than it read.
            "scans": "SELECT count(*) FROM scans s WHERE s.devices < "
            "(SELECT count(*) FROM history h WHERE h.scan_id = s.id)",
            "seen": "SELECT count(*) FROM seen WHERE identity NOT IN "
            "(SELECT identity FROM devices WHERE removed_at IS NULL)",
        }
        found = {name: db.execute(sql).fetchone()[0] for name, sql in orphans.items()}
        assert found == dict.fromkeys(orphans, 0)
        return int(db.execute("SELECT count(*) FROM scans").fetchone()[0])
    finally:
        db.close()


def _comparable(store: Store) -> tuple[object, ...]:
    return (
        [d.to_dict() for d in store.devices()],
        [d.to_dict() for d in store.devices(removed=True)],
        [{**e.to_dict(), "id": None} for e in store.events(limit=None)],
        {i: t.sightings for i, t in store.tracked().items()},
        [(scan, d.to_dict()) for scan, d in store.history()],
        store.last_scan(),
    )


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_the_old_state_or_the_new(tmp_path: Path):
    """A writer looping over scans is killed ~20 times at random moments; after each kill
    the database is intact and equals a reference store that ran exactly as many scans."""
    rng = random.Random(20261101)
    state, reference_dir = tmp_path / "state", tmp_path / "reference"
    done = 0
    with Store.open(reference_dir) as reference:
        for _ in range(20):
            worker = subprocess.Popen(
                [sys.executable, "-c", CRASH_WORKER, str(state)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert worker.stdout is not None and worker.stdout.readline() == "ready\n", worker.communicate()
            # Let it store a few scans first (however slow this machine is), then kill it at a
            # random moment of the next ones.
            for _ in range(rng.randint(1, 3)):
                assert worker.stdout.readline() == "stored\n", worker.communicate()
            time.sleep(rng.uniform(0.0, 0.03))
            worker.send_signal(signal.SIGKILL)
            worker.communicate()
            scans = _consistency(state)
            assert scans >= done
            while done < scans:
                done += 1
                found, scope, at = crash_scan(done)
                reference.record_scan(
                    found, [], at, sources_run=scope, remove_after=2, retention=Retention(None, 5)
                )
            with Store.open(state) as store:
                assert _comparable(store) == _comparable(reference)
    assert done >= 20  # every run stored at least one scan before its kill


def test_the_inventory_cache_matches_the_database_and_sees_other_writers(tmp_path: Path):
    """Store keeps the decoded inventory between calls; what it returns must be what a fresh
    connection decodes, after its own scans (which refresh the cache) and after another
    process's (which change PRAGMA data_version)."""
    rng = random.Random(7)

    def unit(n: int, seen: datetime) -> Device:
        return Device(
            product="Scribe",
            transport=Transport.USB,
            address=f"3-{n}",
            first_seen=seen,
            last_seen=seen,
            room=rng.choice([None, "a", "b", "ä"]),
            serial=f"S{n:04d}",
            serial_label_grade=True,
            serial_source=SerialSource.USB_DESCRIPTOR,
            firmware=rng.choice(["1.0", "1.1"]),
            sources=["usb"],
        )

    def fresh(path: Path) -> list[dict]:
        with Store.open(path) as other:
            other._cache = None
            return [d.to_dict() for d in other.devices()]

    with Store.open(tmp_path) as store, Store.open(tmp_path) as elsewhere:
        for step in range(6):
            at = T0 + timedelta(hours=step)
            found = [unit(n, at) for n in rng.sample(range(12), 8)]
            store.record_scan(found, [], at, sources_run={"usb"}, remove_after=1)
            assert [d.to_dict() for d in store.devices()] == fresh(tmp_path)
            # Another writer (here a second connection) changes the inventory…
            later = at + timedelta(minutes=30)
            elsewhere.record_scan([unit(100 + step, later)], [], later, sources_run={"usb"}, remove_after=1)
            # …and this store's next read sees it.
            assert [d.to_dict() for d in store.devices()] == fresh(tmp_path)
            assert any(d.serial == f"S{100 + step:04d}" for d in store.devices())


# --------------------------------------------------------------------------- read-only


def test_a_read_only_store_reads_what_writers_store_and_writes_nothing(tmp_path: Path):
    """Read-only (the commands that only read): the same answers as a writer's connection,
    a writer's later scans seen, and every write refused with a StoreError before SQLite is
    asked — the database byte for byte as it was. A directory name a URI would misread (``?``,
    ``#``, ``%``) is read all the same. (Its bytes are read with no connection open: closing a
    file drops the POSIX locks this process's connections hold on it.)"""
    state = tmp_path / "st?ate #1 %41 ø"
    new_id = ids()
    with Store.open(state) as writer:
        writer.record_scan([unit("A1", T0), unit("B2", T0)], [Room("oslo-4-12", "Fjord")], T0, new_id=new_id)
        later = T0 + timedelta(hours=1)
        writer.record_scan([unit("A1", later, room="bergen-1")], [], later, remove_after=1, new_id=new_id)
        stored = _comparable(writer), writer.rooms(), writer.latest_runs()
    database = (state / DB_NAME).read_bytes()
    with Store.open(state, read_only=True) as reader:
        assert reader.read_only and reader.schema_version == SCHEMA_VERSION
        assert (_comparable(reader), reader.rooms(), reader.latest_runs()) == stored
        for write in (
            lambda: reader.record_scan([unit("C3", later)], [], later),
            lambda: reader.transaction().__enter__(),
            lambda: reader.read("INSERT INTO meta (key, value) VALUES ('x', '1')"),
            lambda: reader.read("PRAGMA user_version = 1"),
        ):
            with pytest.raises(StoreError, match=r"roomsync\.db is open read-only: this command may not"):
                write()
    assert (state / DB_NAME).read_bytes() == database
    with Store.open(state) as writer, Store.open(state, read_only=True) as reader:
        assert _comparable(reader) == _comparable(writer)
        latest = T0 + timedelta(hours=2)
        writer.record_scan([unit("A1", latest), unit("D4", latest)], [], latest, new_id=new_id)
        assert _comparable(reader) == _comparable(writer)  # a writer's scan, seen


def test_read_only_creates_nothing_and_migrates_nothing(tmp_path: Path):
    """No store: a clear error, and no state directory made. An older schema: refused (the
    daemon migrates it), left as it was. A newer one: refused as for a writer."""
    with pytest.raises(StoreError, match=r"no state database .*nothing was stored yet"):
        Store.open(tmp_path / "none", read_only=True)
    assert not (tmp_path / "none").exists()
    write_v1_database(tmp_path, bar(T0), T0)
    database = (tmp_path / DB_NAME).read_bytes()
    with pytest.raises(
        StoreError, match=r"has schema 1, older than this roomsync's \(6\).*restart the daemon"
    ):
        Store.open(tmp_path, read_only=True)
    assert (tmp_path / DB_NAME).read_bytes() == database
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this roomsync understands"):
        Store.open(tmp_path, read_only=True)
