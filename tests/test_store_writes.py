"""Writes follow change: an unchanged re-scan keeps every unit's rows and writes only when
each channel was seen; a changed unit is rewritten alone; the history is bounded by size.
Real SQLite files; statements counted with SQLite's own trace hook."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from agent.model import Device, Room, SerialSource, Transport
from agent.store import DB_NAME, SCHEMA_VERSION, Retention, Store
from tests.test_store import T0, bar, crash_scan, unit


def site(count: int, at, *, firmware: str = "1.0") -> list[Device]:
    """``count`` Rally Bars, half of them with a Sight read through them, each also seen over
    SNMP every other unit (a unit of two channels)."""
    found = []
    for i in range(count):
        usb = unit(f"W{i:04d}", at, firmware=firmware)
        usb.address = f"1-{i}"
        if i % 2:
            usb.children = [
                Device(
                    product="Sight",
                    transport=Transport.USB,
                    address=f"1-{i}.1",
                    first_seen=at,
                    last_seen=at,
                    serial=f"SG{i:04d}",
                    serial_label_grade=True,
                    serial_source=SerialSource.SYNC_INTERFACE,
                    category="collabos-peripheral",
                )
            ]
        found.append(usb)
        if i % 2 == 0:
            found.append(unit(f"W{i:04d}", at, source="snmp", firmware=firmware))
    return found


class Statements:
    """Counts the statements SQLite runs on a store's connection (executemany's rows too)."""

    def __init__(self, store: Store) -> None:
        self.sql: list[str] = []
        store._db.set_trace_callback(self.sql.append)

    def take(self) -> list[str]:
        taken, self.sql[:] = list(self.sql), []
        return taken


def rows(path: Path, table: str) -> int:
    with sqlite3.connect(path / DB_NAME) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_an_unchanged_rescan_writes_only_when_each_channel_was_seen(tmp_path: Path):
    rooms = [Room("oslo-4-12", "Fjord")]
    with Store.open(tmp_path) as store:
        first = store.record_scan(site(60, T0), rooms, T0)
        assert first.changed
        trace = Statements(store)
        later = T0 + timedelta(minutes=5)
        record = store.record_scan(site(60, later), rooms, later)
        sql = trace.take()
        assert not record.changed and record.events == ()
        # BEGIN, the cache's check, the scan row, the times, the rooms' check, two prunings, COMMIT.
        assert len(sql) <= 10, sql
        assert not [
            s
            for s in sql
            if s.startswith(("INSERT INTO devices", "INSERT INTO history", "DELETE FROM s", "DELETE FROM h"))
        ]
        assert rows(tmp_path, "history") == 60 + 30  # the first scan's readings only
        assert rows(tmp_path, "seen") == 90  # one row per channel
        in_memory = store.tracked()
    with Store.open(tmp_path) as fresh:
        decoded = fresh.tracked()
    assert decoded.keys() == in_memory.keys()
    for identity, unit_ in in_memory.items():
        back = decoded[identity]
        assert back.device.last_seen == unit_.device.last_seen == later
        assert [s.seen_at for s in back.sightings] == [s.seen_at for s in unit_.sightings]
        assert back.device.seen_by == unit_.device.seen_by
        assert back.device.provenance == unit_.device.provenance
        assert back.sightings == unit_.sightings  # facts and times (not the readings)


def test_the_statements_do_not_grow_with_the_site(tmp_path: Path):
    counts = []
    for size in (20, 400):
        with Store.open(tmp_path / str(size)) as store:
            store.record_scan(site(size, T0), [], T0)
            trace = Statements(store)
            store.record_scan(site(size, T0 + timedelta(minutes=5)), [], T0 + timedelta(minutes=5))
            counts.append(len(trace.take()))
    assert counts[0] == counts[1] <= 10


def test_a_changed_unit_is_rewritten_alone(tmp_path: Path):
    with Store.open(tmp_path) as store:
        store.record_scan(site(40, T0), [], T0)
        later = T0 + timedelta(minutes=5)
        found = site(40, later)
        found[3].firmware = "2.0"  # W0002 over USB: a unit of two channels
        trace = Statements(store)
        record = store.record_scan(found, [], later)
        sql = trace.take()
        assert record.changed
        assert record.events and {e.serial for e in record.events} == {"W0002"}
        assert len([s for s in sql if s.startswith("INSERT INTO devices")]) == 1
        history = store.history()
        assert [(scan, d.address) for scan, d in history if scan == record.scan_id] == [
            (record.scan_id, "1-2"),
            (record.scan_id, "snmp-W0002"),
        ]
        [changed] = [d for d in store.devices() if d.serial == "W0002"]
        # Its two channels now disagree on the firmware: the store holds what it said.
        assert "2.0" in {v.value for d in changed.disagreements for v in d.values}
        assert changed.last_seen == later


def test_a_room_change_counts_as_a_change(tmp_path: Path):
    with Store.open(tmp_path) as store:
        store.record_scan(site(4, T0), [Room("oslo-4-12", "Fjord")], T0)
        at = T0 + timedelta(minutes=5)
        assert not store.record_scan(site(4, at), [Room("oslo-4-12", "Fjord")], at).changed
        at += timedelta(minutes=5)
        assert store.record_scan(site(4, at), [Room("oslo-4-12", "Fjord 2")], at).changed
        assert [r.name for r in store.rooms()] == ["Fjord 2"]


def test_a_missed_unit_is_a_change_and_its_times_stay(tmp_path: Path):
    with Store.open(tmp_path) as store:
        store.record_scan(site(4, T0), [], T0)
        at = T0 + timedelta(minutes=5)
        store.record_scan(site(4, at), [], at)
        later = at + timedelta(minutes=5)
        found = [d for d in site(4, later) if d.serial != "W0001"]
        assert store.record_scan(found, [], later, sources_run={"usb", "snmp"}).changed
    with Store.open(tmp_path) as fresh:
        units = {d.serial: d for d in fresh.devices()}
    assert units["W0001"].last_seen == at  # when it was last seen, not when it was missed
    assert units["W0000"].last_seen == later


def test_the_history_is_bounded_by_size(tmp_path: Path):
    keep = Retention(history_days=None, history_scans=None, history_max_bytes=40_000)
    with Store.open(tmp_path) as store:
        for k in range(12):
            at = T0 + timedelta(minutes=k)
            store.record_scan(site(10, at, firmware=f"1.{k}"), [], at, retention=keep)
        with sqlite3.connect(tmp_path / DB_NAME) as db:
            actual = db.execute("SELECT SUM(length(CAST(data AS BLOB))) FROM history").fetchone()[0]
            kept = json.loads(db.execute("SELECT value FROM meta WHERE key = 'history_bytes'").fetchone()[0])
        assert kept == actual  # the running total is the real size
        assert actual <= 40_000
        scans = sorted({scan for scan, _ in store.history()})
        assert scans[-1] == 12 and len(scans) < 12  # the newest kept, the oldest gone


def test_the_newest_scan_keeps_its_history_whatever_its_size(tmp_path: Path):
    keep = Retention(history_days=None, history_scans=None, history_max_bytes=100)
    with Store.open(tmp_path) as store:
        for k in range(3):
            at = T0 + timedelta(minutes=k)
            store.record_scan([bar(at, firmware=f"1.{k}")], [], at, retention=keep)
        assert [scan for scan, _ in store.history()] == [3]


def test_history_bytes_is_counted_for_a_store_migrated_from_v4(tmp_path: Path):
    from agent.store import MIGRATIONS

    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    for version, migration in enumerate(MIGRATIONS[:4]):
        for statement in migration.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {version + 1}")
    db.execute(
        "INSERT INTO scans (finished_at, devices, errors, sources) VALUES (?, 1, 0, '[]')", (T0.isoformat(),)
    )
    db.execute("INSERT INTO history (scan_id, identity, data) VALUES (1, 'x', ?)", ("é" * 10,))
    db.close()
    with Store.open(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION == 6
        assert store.read("SELECT value FROM meta WHERE key = 'history_bytes'") == [("20",)]


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_a_negative_or_nan_size_is_refused(bad):
    with pytest.raises(ValueError, match="history_max_bytes"):
        Retention(history_max_bytes=bad)  # type: ignore[arg-type]


def test_a_store_reopened_between_scans_ends_where_one_kept_open_does(tmp_path: Path):
    """The times kept apart and put back on reading give what a store that never closed
    holds: units, sightings, events and history alike."""
    from tests.test_store import _comparable

    with Store.open(tmp_path / "open") as kept:
        for k in range(1, 25):
            found, scope, at = crash_scan(k)
            kept.record_scan(found, [], at, sources_run=scope, remove_after=2)
            with Store.open(tmp_path / "reopened") as reopened:
                reopened.record_scan(found, [], at, sources_run=scope, remove_after=2)
        with Store.open(tmp_path / "reopened") as reopened:
            assert _comparable(reopened) == _comparable(kept)


def test_units_carried_over_equal_what_a_full_diff_makes_of_them(tmp_path: Path):
    """A store kept open carries unchanged units over (it knows what each channel last read);
    one opened anew for each scan merges every unit again: both hold the same units, times,
    children and readings included, whatever changed in between."""
    with Store.open(tmp_path / "open") as kept:
        for k in range(8):
            at = T0 + timedelta(minutes=5 * k)
            found = site(12, at, firmware="1.0" if k < 4 else "1.1")
            if k == 6:
                found = [d for d in found if d.serial != "W0003"]  # one unit missed once
            kept.record_scan(found, [], at)
            with Store.open(tmp_path / "each") as fresh:
                fresh.record_scan(found, [], at)
                merged_again = fresh.tracked()
            carried = kept.tracked()
            assert carried == merged_again
            for identity, unit_ in carried.items():
                assert unit_.device.to_dict() == merged_again[identity].device.to_dict()
                assert [s.to_dict() for s in unit_.sightings] == [
                    s.to_dict() for s in merged_again[identity].sightings
                ]
        assert kept._known  # it did carry units over


def _bar_over(source: str, at: datetime, *, children: bool) -> Device:
    """The bar of one room as one channel reads it: over USB (Sync, no children) or over the
    LAN (with the Sight read through it)."""
    sight = Device(
        product="Sight",
        transport=Transport.SNMP,
        address="10.0.0.7/sight",
        first_seen=at,
        last_seen=at,
        serial="2325LZ51XY58",
        serial_label_grade=True,
        serial_source=SerialSource.SYNC_INTERFACE,
        category="collabos-peripheral",
    )
    return Device(
        product="Rally Bar",
        transport=Transport.USB if source == "usb" else Transport.SNMP,
        address="2-1" if source == "usb" else "10.0.0.7",
        first_seen=at,
        last_seen=at,
        room="r1",
        serial="2313FD1N08Z2",
        serial_label_grade=True,
        serial_source=SerialSource.SYNC_INTERFACE if source == "usb" else SerialSource.SNMP_ENTITY,
        firmware="1.0",
        sources=[source],
        category="collabos-bar",
        vendor_id=0x046D if source == "usb" else None,
        product_id=0x089B if source == "usb" else None,
        children=[sight] if children else [],
    )


def test_children_read_through_a_channel_that_is_not_the_best_keep_that_channels_time(tmp_path: Path):
    """Sources on their own schedules, as the daemon runs them: the USB channel wins the
    unit's facts but reads no children; the LAN one reads the Sight. Kept open, reopened for
    each scan, or decoded from its own file, the store says the Sight was last seen when the
    LAN channel last read it."""
    plan = [("both", 0), ("usb", 1), ("snmp", 2), ("usb", 3), ("snmp", 4), ("snmp", 5)]
    with Store.open(tmp_path / "kept") as kept:
        for name, minute in plan:
            at = T0 + timedelta(minutes=minute)
            found = [_bar_over(s, at, children=s == "snmp") for s in ("usb", "snmp") if name in (s, "both")]
            scope = {"usb", "snmp"} if name == "both" else {name}
            kept.record_scan(found, [], at, sources_run=scope)
            with Store.open(tmp_path / "each") as each:
                each.record_scan(found, [], at, sources_run=scope)
            with Store.open(tmp_path / "each") as each, Store.open(tmp_path / "kept") as decoded:
                [in_memory], [reopened], [own] = kept.devices(), each.devices(), decoded.devices()
            assert in_memory.to_dict() == reopened.to_dict() == own.to_dict(), (name, minute)
            last_lan = max(m for n, m in plan[: plan.index((name, minute)) + 1] if n in ("snmp", "both"))
            assert in_memory.children[0].last_seen == T0 + timedelta(minutes=last_lan)


def test_a_connection_that_adopts_an_inventory_forgets_what_it_knew_of_the_channels(tmp_path: Path):
    with Store.open(tmp_path) as a, Store.open(tmp_path) as b:

        def scan(store: Store, k: int, firmware: str):
            at = T0 + timedelta(minutes=k)
            return store.record_scan([unit("A1", at, firmware=firmware)], [], at)

        scan(a, 0, "1.0")
        scan(a, 1, "1.0")  # a knows usb-A1 read 1.0
        record = scan(b, 2, "2.0")  # another connection stores 2.0
        a.adopt(b.tracked(), record.scan_id)
        back = scan(a, 3, "1.0")
        assert [e.type for e in back.events] == ["firmware.changed"]
        assert a.devices()[0].firmware == "1.0"


def test_a_scan_stored_by_another_connection_during_the_diff_is_taken_into_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The diff runs before the write lock is taken: a scan another connection stores
    meanwhile makes it run again on what is stored, under the lock."""
    with Store.open(tmp_path) as a, Store.open(tmp_path) as b:
        a.record_scan([unit("A1", T0)], [], T0)
        snapshot = a._snapshot

        def then_b_stores() -> object:
            taken = snapshot()
            b.record_scan(
                [unit("A1", T0 + timedelta(minutes=1), firmware="2.0")], [], T0 + timedelta(minutes=1)
            )
            return taken

        monkeypatch.setattr(a, "_snapshot", then_b_stores)
        record = a.record_scan(
            [unit("A1", T0 + timedelta(minutes=2), firmware="3.0")], [], T0 + timedelta(minutes=2)
        )
        [event] = [e for e in record.events if e.type == "firmware.changed"]
        assert (event.before["firmware"], event.after["firmware"]) == ("2.0", "3.0")


def test_pruning_many_scans_stays_within_sqlites_variable_limit(tmp_path: Path):
    keep = Retention(history_days=None, history_scans=None, history_max_bytes=None)
    with Store.open(tmp_path) as store:
        store._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # as old SQLite builds
        for k in range(1_100):
            at = T0 + timedelta(seconds=k)
            store.record_scan([unit("A1", at, firmware=f"1.{k}")], [], at, retention=keep)
        at = T0 + timedelta(seconds=1_100)
        store.record_scan([unit("A1", at, firmware="2.0")], [], at, retention=Retention(None, 10, None, None))
        assert len({scan for scan, _ in store.history()}) == 10


def test_a_corrupt_file_is_a_store_error_for_a_scan_too(tmp_path: Path):
    """The scan reads the inventory before it takes the write lock: a page it cannot read is
    the store's clear error there as well, not a raw SQLite one."""
    from agent.store import StoreError

    with Store.open(tmp_path) as store:
        store.record_scan(site(300, T0), [], T0)
        store.read("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray((tmp_path / DB_NAME).read_bytes())
    middle = (len(data) // 4096 // 2) * 4096
    data[middle : middle + 4096] = bytes(range(256)) * 16
    (tmp_path / DB_NAME).write_bytes(bytes(data))
    with Store.open(tmp_path) as fresh, pytest.raises(StoreError, match=r"corrupt"):
        fresh.record_scan(site(300, T0 + timedelta(minutes=5)), [], T0 + timedelta(minutes=5))


def test_texts_are_shared_while_decoding_and_the_memo_goes_with_it(tmp_path: Path):
    from agent.model import shared_text, sharing_texts

    with Store.open(tmp_path) as store:
        store.record_scan(site(20, T0), [], T0)
    with Store.open(tmp_path) as fresh:
        units = list(fresh.tracked().values())
    sources = {id(s.source) for u in units for s in u.sightings if s.source == "usb"}
    assert len(sources) == 1  # one copy of "usb" for every sighting
    text = "".join(["usb", "-x"])
    assert shared_text(text) is text  # outside a decode: nothing is kept
    with sharing_texts():
        first = shared_text(text)
        assert shared_text("".join(["usb", "-x"])) is first
    assert shared_text("".join(["usb", "-x"])) is not first


def test_units_carried_over_are_retimed_only_when_read_and_then_once(tmp_path: Path):
    """An unchanged re-scan moves a carried unit's times without copying it (``Tracked.at``);
    re-scans that nobody reads in between stack no copies, and the device read at last is the
    one a full diff makes of the last scan, for every thread that asks at once."""
    import threading

    with Store.open(tmp_path / "open") as kept:
        for k in range(5):
            at = T0 + timedelta(minutes=5 * k)
            kept.record_scan(site(12, at), [], at)  # nothing read between the scans
            with Store.open(tmp_path / "each") as fresh:  # a store opened anew merges again
                fresh.record_scan(site(12, at), [], at)
                merged_again = fresh.tracked()
            if k == 1:
                first = {i: u.stored for i, u in kept.tracked().items() if u.at is not None}
        carried = kept.tracked()
        lazy = [u for u in carried.values() if u.at is not None]
        assert lazy and all(u.at == at for u in lazy)
        assert {i: u.stored for i, u in carried.items() if u.at is not None}.keys() == first.keys()
        assert all(carried[i].stored is device for i, device in first.items())  # no copy stacked
        before = {id(u): u.stored for u in lazy}
        assert all(u.stored.last_seen < at for u in lazy)  # not copied yet: the old times
        made: dict[int, list[dict]] = {id(u): [] for u in lazy}
        start = threading.Barrier(4)

        def read() -> None:
            start.wait()
            for u in lazy:
                made[id(u)].append(u.device.to_dict())

        threads = [threading.Thread(target=read) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for identity, u in carried.items():
            if id(u) in made:
                assert u.at is None and u.stored is not before[id(u)]  # made once, then kept
                assert u.device is u.device
                expected = merged_again[identity].device.to_dict()
                assert made[id(u)] == [expected] * 4
        assert carried == merged_again


def test_a_unit_being_retimed_makes_other_threads_wait_for_its_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one thread makes a carried-over unit's device, another reading it (or copying the
    unit) waits and then takes that very device: neither pairs the old times with no instant."""
    import threading

    import agent.events as events

    with Store.open(tmp_path) as store:
        for k in range(3):
            at = T0 + timedelta(minutes=5 * k)
            store.record_scan(site(4, at), [], at)
        unit_ = next(u for u in store.tracked().values() if u.at is not None)
    retime, inside, go = events._retimed, threading.Event(), threading.Event()

    def held(device: Device, when: datetime, *, top: bool) -> Device:
        if top and not inside.is_set():  # the first thread in stays until told
            inside.set()
            assert go.wait(10)
        return retime(device, when, top=top)

    monkeypatch.setattr(events, "_retimed", held)
    got: dict[str, object] = {}
    first = threading.Thread(target=lambda: got.setdefault("first", unit_.device))
    first.start()
    assert inside.wait(10)
    others = [
        threading.Thread(target=lambda: got.setdefault("second", unit_.device)),
        threading.Thread(target=lambda: got.setdefault("copy", unit_.replaced(keys=frozenset()))),
    ]
    for t in others:
        t.start()
    time.sleep(0.2)
    assert set(got) == set(), got  # both wait for the device being made
    go.set()
    for t in [first, *others]:
        t.join(10)
    assert got["second"] is got["first"] and unit_.at is None
    copy = got["copy"]
    assert isinstance(copy, events.Tracked) and copy.at is None and copy.stored is got["first"]
