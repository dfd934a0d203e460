"""The SQLite store: round trips, merges, migrations and clear errors (real SQLite files)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.model import Device, HealthIssue, Room, SerialSource, Severity, Transport
from agent.store import DB_NAME, SCHEMA_VERSION, Store, StoreError
from tests.sysfs import add_device

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def bar(seen: datetime, *, room: str | None = "oslo-4-12", firmware: str = "1.9.556") -> Device:
    sight = Device(product="Sight", transport=Transport.USB, address="2-1.1", first_seen=seen,
                   last_seen=seen, serial="2325LZ51XY58", serial_label_grade=True,
                   serial_source=SerialSource.SYNC_INTERFACE, category="collabos-peripheral")
    return Device(product="Rally Bar", transport=Transport.USB, address="2-1.1", first_seen=seen,
                  last_seen=seen, room=room, serial="2313FD1N08Z2", serial_label_grade=True,
                  serial_source=SerialSource.SYNC_INTERFACE, firmware=firmware, vendor_id=0x046D,
                  product_id=0x089B, category="collabos-bar", components={"audio": "2.3"},
                  health_issues=[HealthIssue("peripheral-missing", "mic pod missing", Severity.WARNING)],
                  children=[sight], sources=["usb"], attributes={"usb_release": "0020"})


def test_device_round_trip_through_the_store(tmp_path: Path):
    original = bar(T0)
    with Store.open(tmp_path) as store:
        store.record_scan([original], [Room("oslo-4-12", "Fjord")], T0)
        [back] = store.devices()
        assert back.to_dict() == original.to_dict()
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
    base = [sys.executable, "-m", "agent", "scan", "--config", str(config), "--sysfs-root", str(sysfs),
            "--json"]
    skipped = subprocess.run([*base, "--state-dir", str(tmp_path / "none"), "--no-store"],
                             capture_output=True, text=True, timeout=60)
    assert skipped.returncode == 0 and not (tmp_path / "none").exists()
    stored = subprocess.run([*base, "--state-dir", str(tmp_path / "state")], capture_output=True,
                            text=True, timeout=60)
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
    result = subprocess.run([sys.executable, "-m", "agent", "scan", "--sysfs-root", str(sysfs), "--json",
                             "--state-dir", str(tmp_path / "state")], capture_output=True, text=True,
                            timeout=60)
    out = json.loads(result.stdout)
    assert result.returncode == 1
    assert [d["serial"] for d in out["devices"]] == ["2313FD1N08Z2"]
    assert out["errors"][0]["source"] == "store" and "corrupt" in out["errors"][0]["message"]
