"""The local store: SQLite in the state directory (``roomsync.db``).

Today it keeps the current inventory — every device the agent has seen, with when it was
first and last seen — and the rooms, so that commands such as ``roomsync coverage`` work from
what the last scans found. Observation history, change events and the outbox build on it
(issue [5/7]) through forward migrations.

Durability: WAL journal with ``synchronous=FULL`` (a Raspberry Pi's SD card loses power
without warning); every scan is one transaction, so a kill -9 leaves the previous inventory
or the new one, never half of each. Failures (locked, corrupt, full disk, unreadable) raise
:class:`StoreError` with an operator's message.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from agent.model import Device, Room

DB_NAME = "roomsync.db"
BUSY_TIMEOUT_S = 5.0

#: Forward migrations: MIGRATIONS[n] takes the schema from version n to n + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE devices (
        identity   TEXT PRIMARY KEY,
        room       TEXT,
        product    TEXT NOT NULL,
        serial     TEXT,
        first_seen TEXT NOT NULL,
        last_seen  TEXT NOT NULL,
        data       TEXT NOT NULL          -- Device.to_dict() as JSON
    );
    CREATE INDEX devices_serial ON devices(serial);
    CREATE TABLE rooms (
        id   TEXT PRIMARY KEY,
        data TEXT NOT NULL                -- Room.to_dict() as JSON
    );
    CREATE TABLE scans (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        finished_at TEXT NOT NULL,
        devices     INTEGER NOT NULL,
        errors      INTEGER NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The store cannot be used; the message says why and what to do."""


def _explain(exc: sqlite3.Error, path: Path) -> StoreError:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return StoreError(f"state database {path} is locked by another process; try again "
                          "when it is done")
    if "disk is full" in text or "disk i/o" in text:
        return StoreError(f"state database {path}: the disk is full or failing ({exc}); "
                          "nothing was lost, the previous state is intact")
    if "not a database" in text or "malformed" in text:
        return StoreError(f"state database {path} is corrupt ({exc}); move it aside and the "
                          "next scan starts a fresh one")
    if "readonly" in text or "unable to open" in text:
        return StoreError(f"state database {path} cannot be written ({exc}); check the state "
                          "directory's owner and permissions")
    return StoreError(f"state database {path}: {exc}")


class Store:
    """One open state database. Use :meth:`open`; close it (or use ``with``)."""

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        try:
            self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.Error as exc:
            raise _explain(exc, path) from None

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, busy_timeout: float = BUSY_TIMEOUT_S) -> Store:
        directory = Path(state_dir)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the state directory {directory}: "
                             f"{exc.strerror or exc}") from None
        return cls(directory / DB_NAME, busy_timeout=busy_timeout)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise _explain(exc, self.path) from None

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(f"state database {self.path} has schema {version}, newer than this "
                             f"roomsync understands ({SCHEMA_VERSION}); upgrade roomsync")
        for target in range(version, SCHEMA_VERSION):
            with self._transaction() as db:
                # One statement at a time: executescript() would commit the transaction
                # first, and a migration must apply whole or not at all.
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {target + 1}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------ inventory

    def record_scan(self, devices: Iterable[Device], rooms: Iterable[Room], finished_at: datetime,
                    errors: int = 0) -> int:
        """Merge one scan's devices into the inventory (first_seen kept for known units)
        and record the scan. One transaction. Returns the scan's id."""
        found = list(devices)
        with self._transaction() as db:
            for device in found:
                row = db.execute("SELECT first_seen FROM devices WHERE identity = ?",
                                 (device.identity,)).fetchone()
                if row is not None:
                    device.first_seen = min(device.first_seen, datetime.fromisoformat(row[0]))
                data = json.dumps(device.to_dict(), ensure_ascii=False, sort_keys=True)
                db.execute(
                    "INSERT INTO devices (identity, room, product, serial, first_seen, last_seen, data) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(identity) DO UPDATE SET room = excluded.room, "
                    "product = excluded.product, serial = excluded.serial, "
                    "last_seen = excluded.last_seen, data = excluded.data",
                    (device.identity, device.room, device.product, device.serial,
                     device.first_seen.isoformat(), device.last_seen.isoformat(), data))
            for room in rooms:
                db.execute("INSERT INTO rooms (id, data) VALUES (?, ?) ON CONFLICT(id) DO UPDATE "
                           "SET data = excluded.data", (room.id, json.dumps(room.to_dict(), sort_keys=True)))
            cursor = db.execute("INSERT INTO scans (finished_at, devices, errors) VALUES (?, ?, ?)",
                                (finished_at.isoformat(), len(found), errors))
            return int(cursor.lastrowid or 0)

    def devices(self) -> list[Device]:
        """Every device in the inventory, by room then identity."""
        try:
            rows = self._db.execute("SELECT data FROM devices ORDER BY room, identity").fetchall()
        except sqlite3.Error as exc:
            raise _explain(exc, self.path) from None
        return [Device.from_dict(json.loads(r[0])) for r in rows]

    def rooms(self) -> list[Room]:
        try:
            rows = self._db.execute("SELECT data FROM rooms ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            raise _explain(exc, self.path) from None
        return [Room(**json.loads(r[0])) for r in rows]

    def last_scan(self) -> datetime | None:
        row = self._db.execute("SELECT finished_at FROM scans ORDER BY id DESC LIMIT 1").fetchone()
        return datetime.fromisoformat(row[0]) if row else None
