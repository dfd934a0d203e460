"""The local store: SQLite in the state directory (``roomsync.db``).

It keeps the current inventory (every unit present, with when it was first and last seen,
and what each source last said of it), the units that left it, the rooms, the change events
of every scan (:mod:`agent.events`) and a bounded history of what each scan saw, so that
``roomsync inventory``, ``roomsync events`` and ``roomsync coverage`` work from what the
scans found.

Durability: WAL journal with ``synchronous=FULL`` (a Raspberry Pi's SD card loses power
without warning); every scan is one transaction — inventory, sightings, events, history and
the scan's row together — so a kill -9 leaves the previous state or the new one, never
events without their inventory or the reverse. Failures (locked, corrupt, full disk,
unreadable) raise :class:`StoreError` with an operator's message; a refused scan leaves the
previous state intact, and the next one stores normally once the cause is gone.

Schema (forward migrations, ``PRAGMA user_version``; a migration is never edited, a change
is a new entry of :data:`MIGRATIONS`):

* v1 ``devices`` (one row per identity, ``data`` = ``Device.to_dict()``), ``rooms``, ``scans``.
* v2 ``devices.removed_at``: a removed unit leaves the inventory (:meth:`Store.devices`) but
  its row stays, readable with ``devices(removed=True)``; seen again, it is added back with
  its first ``first_seen``. ``scans.sources``: the sources the scan ran (the diff's scope).
  ``sightings``: per unit, source and address, what that source last reported and how many
  of its runs in a row missed the unit (:class:`agent.events.Sighting`). A unit stored by v1
  has none; its sightings are taken from its stored device until a scan rewrites them.
  ``events``: ``seq`` (AUTOINCREMENT: increasing, never reused, a delivery cursor), the
  event's UUID, its scan and time (UTC), type, identity, serial, room and ``data`` =
  ``ChangeEvent.to_dict()``. ``history``: every device each scan reported, pruned by
  :class:`Retention`.

* v3 ``meta``: small facts kept across runs (the agent id, the last message sequence, the
  outbox's event cursor and counters, the portal's state), one JSON value per key.
  ``outbox``: the messages waiting for the portal (:mod:`agent.uploader.outbox`), in queue
  order, each with its ``Idempotency-Key``, sequence and the exact gzip body every attempt
  sends.

* v4 ``tls_pins``: the certificate pinned for each device the agent signs in to over HTTPS
  without a CA (:mod:`agent.pins`; the CollabOS Device Management API).

* v5 ``seen``: when each channel (source, address) last reported a unit, for the units whose
  facts a scan left as they were: a re-scan that finds nothing new writes one row per
  channel in one statement instead of rewriting every unit (:mod:`agent.freshness`); a
  unit written whole drops its rows (its ``data`` holds the times). ``meta.history_bytes``:
  the size of the history's ``data``, kept as rows come and go (``history_max_mb``).

* v6 one outbox queue per output (``outbox.output``: ``portal``, ``glpi``, ``mqtt``; the
  messages queued before it are the portal's), sequences unique per output, and
  ``outbox.item``: what a state message is of (the unit a GLPI document describes: a newer
  one replaces it). ``output_items``: per output and item, the digest of the document last
  queued, so that only what changed is sent again. The outputs' cursors and states are
  ``meta`` keys suffixed ``:<output>`` (the portal's keep their v3 names).

Writes follow change: a unit is rewritten (device, sightings, history) only when its facts
changed; rooms only when they changed; an unchanged re-scan costs a scan row, the ``seen``
upsert and the pruning checks — a handful of statements whatever the size of the site.

Events are pruned by :class:`Retention` (``events_days``) only once the outbox has taken them
(``events.seq`` at or below its cursor) and no queued message still refers to them.

Read-only (``Store.open(..., read_only=True)``: ``roomsync inventory``, ``events``, ``outbox``,
``coverage``, ``export``): SQLite's ``mode=ro``, so that a user who may read the state directory
but not write it can run them, and so that they change nothing: no state directory or database
is created, no migration runs (a store of an older schema is refused until the daemon or a
writing command has migrated it), and every write — :meth:`Store.transaction` — is a
:class:`StoreError`. A WAL database is read through its ``-wal`` and ``-shm`` files: while a
writer has the store open they exist and a reader needs only to read them (SQLite 3.22+); when
none has (the last connection removes them), SQLite creates them, and a user who may not create
files in the state directory cannot read the store at all — a :class:`StoreError` that says so.
A reader that may create them leaves them behind (an empty ``-wal``, a 32 KiB ``-shm``; owned
like the database when run as root): SQLite removes them only at a writer's last close, and the
next writer uses them. ``immutable=1`` would spare them but reads without locks, which is wrong
while the daemon may be writing.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent.events import (
    DEFAULT_REMOVE_AFTER,
    ChangeEvent,
    Channel,
    ScanDiff,
    Sighting,
    Tracked,
    diff_scan,
    learn_channels,
    new_event_id,
    reading_facts,
    sources_of,
)
from agent.freshness import same_facts, seen_times, with_seen
from agent.gcpause import paused_gc
from agent.identity import MergeRules, source_of
from agent.model import Device, Room, as_utc, sharing_texts

DB_NAME = "roomsync.db"
BUSY_TIMEOUT_S = 5.0
#: The most events :meth:`Store.events` returns unless told otherwise.
DEFAULT_EVENT_LIMIT = 1000

#: Forward migrations: MIGRATIONS[n] takes the schema from version n to n + 1.
#: Statements are split on ";": none may contain one elsewhere.
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
    """
    ALTER TABLE devices ADD COLUMN removed_at TEXT;   -- NULL while the unit is in the inventory
    ALTER TABLE scans ADD COLUMN sources TEXT;        -- JSON list: the sources the scan ran
    CREATE TABLE sightings (
        identity TEXT NOT NULL,
        source   TEXT NOT NULL,
        address  TEXT NOT NULL,
        room     TEXT,
        missed   INTEGER NOT NULL,
        data     TEXT NOT NULL,                       -- Sighting.to_dict() as JSON
        PRIMARY KEY (identity, source, address)
    );
    CREATE TABLE events (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        id       TEXT NOT NULL UNIQUE,                -- UUID
        scan_id  INTEGER NOT NULL REFERENCES scans(id),
        at       TEXT NOT NULL,                       -- UTC, fixed width: sorts as text
        type     TEXT NOT NULL,
        identity TEXT NOT NULL,
        serial   TEXT,
        room     TEXT,
        data     TEXT NOT NULL                        -- ChangeEvent.to_dict() as JSON
    );
    CREATE INDEX events_at ON events(at);
    CREATE INDEX events_identity ON events(identity);
    CREATE TABLE history (
        scan_id  INTEGER NOT NULL REFERENCES scans(id),
        identity TEXT NOT NULL,
        data     TEXT NOT NULL                        -- Device.to_dict() as JSON, as the scan saw it
    );
    CREATE INDEX history_scan ON history(scan_id);
    CREATE INDEX history_identity ON history(identity, scan_id);
    """,
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL                           -- JSON
    );
    CREATE TABLE outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
        kind         TEXT NOT NULL,                   -- inventory | events
        key          TEXT NOT NULL UNIQUE,            -- Idempotency-Key
        sequence     INTEGER NOT NULL UNIQUE,
        created_at   TEXT NOT NULL,                   -- UTC, fixed width
        body         BLOB NOT NULL,                   -- gzip of the JSON: what every attempt sends
        size         INTEGER NOT NULL,                -- length of body
        events       INTEGER NOT NULL,                -- events carried (0 for a snapshot)
        first_event  INTEGER,                         -- events.seq range carried
        last_event   INTEGER,
        state        TEXT NOT NULL,                   -- pending | parked
        attempts     INTEGER NOT NULL DEFAULT 0,      -- counted before each send
        last_attempt TEXT,
        last_status  INTEGER,
        last_error   TEXT
    );
    CREATE INDEX outbox_state ON outbox(state, id);
    """,
    """
    CREATE TABLE tls_pins (
        service     TEXT NOT NULL,                    -- collabos
        host        TEXT NOT NULL,                    -- as the configuration names it (host[:port])
        spki_sha256 TEXT NOT NULL,                    -- hex SHA-256 of the certificate's public key
        cert_sha256 TEXT,                             -- hex SHA-256 of the certificate last seen with it
        pinned_at   TEXT NOT NULL,                    -- UTC, fixed width
        how         TEXT NOT NULL,                    -- first-contact | accepted
        PRIMARY KEY (service, host)
    );
    """,
    """
    CREATE TABLE seen (
        identity TEXT NOT NULL,
        source   TEXT NOT NULL,
        address  TEXT NOT NULL,
        at       TEXT NOT NULL,                       -- when the channel last reported the unit
        PRIMARY KEY (identity, source, address)
    ) WITHOUT ROWID;
    INSERT OR REPLACE INTO meta (key, value)
        SELECT 'history_bytes', COALESCE(SUM(length(CAST(data AS BLOB))), 0) FROM history;
    """,
    """
    CREATE TABLE outbox_by_output (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order (within an output)
        output       TEXT NOT NULL DEFAULT 'portal',  -- portal | glpi | mqtt: one queue each
        kind         TEXT NOT NULL,                   -- inventory | events | glpi
        item         TEXT,                            -- what a state message is of (a GLPI document's unit)
        key          TEXT NOT NULL UNIQUE,            -- Idempotency-Key
        sequence     INTEGER NOT NULL,                -- per output
        created_at   TEXT NOT NULL,
        body         BLOB NOT NULL,
        size         INTEGER NOT NULL,
        events       INTEGER NOT NULL,
        first_event  INTEGER,
        last_event   INTEGER,
        state        TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_attempt TEXT,
        last_status  INTEGER,
        last_error   TEXT,
        UNIQUE (output, sequence)
    );
    INSERT INTO outbox_by_output (id, output, kind, key, sequence, created_at, body, size, events,
        first_event, last_event, state, attempts, last_attempt, last_status, last_error)
        SELECT id, 'portal', kind, key, sequence, created_at, body, size, events, first_event,
            last_event, state, attempts, last_attempt, last_status, last_error FROM outbox;
    INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_by_output', seq FROM sqlite_sequence
        WHERE name = 'outbox'
        AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox_by_output');
    UPDATE sqlite_sequence
        SET seq = (SELECT MAX(seq) FROM sqlite_sequence WHERE name IN ('outbox', 'outbox_by_output'))
        WHERE name = 'outbox_by_output';
    DROP TABLE outbox;
    ALTER TABLE outbox_by_output RENAME TO outbox;
    CREATE INDEX outbox_state ON outbox(output, state, id);
    CREATE INDEX outbox_item ON outbox(output, item) WHERE item IS NOT NULL;
    CREATE TABLE output_items (
        output    TEXT NOT NULL,
        item      TEXT NOT NULL,                      -- a GLPI document's unit (its identity)
        digest    TEXT NOT NULL,                      -- SHA-256 of the document last queued
        queued_at TEXT NOT NULL,
        PRIMARY KEY (output, item)
    ) WITHOUT ROWID;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The store cannot be used; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How much observation history to keep. The history holds, for each scan that changed a
    unit's facts, that unit's readings; a scan's history goes when it is older than
    ``history_days``, not among the newest ``history_scans`` scans that have history, or (oldest
    first) while the history's data is over ``history_max_bytes`` — the newest scan's is kept
    whatever its size (``None``: no limit of that kind). A change event goes when older than
    ``events_days`` and already taken by the outbox."""

    history_days: float | None = 30.0
    history_scans: int | None = 200
    #: Change events older than this many days go, once the outbox has taken them.
    events_days: float | None = 365.0
    #: The history's size bound, in bytes of its JSON (``[store] history_max_mb``).
    history_max_bytes: int | None = 64 * 1024 * 1024

    @classmethod
    def from_config(cls, settings: Any) -> Retention:
        """The retention a ``[store]`` section (:class:`agent.config.StoreConfig`) sets."""
        return cls(
            history_days=settings.history_days,
            history_scans=settings.history_scans,
            events_days=settings.events_days,
            history_max_bytes=int(settings.history_max_mb * 1024 * 1024),
        )

    def __post_init__(self) -> None:
        for name in ("history_days", "history_scans", "events_days", "history_max_bytes"):
            value = getattr(self, name)
            if value is not None and not value >= 0:  # NaN is refused too
                raise ValueError(f"{name} must not be negative, not {value}")


@dataclass(frozen=True, slots=True)
class ScanRecord:
    """A stored scan: its id, the events it produced (in order) and, for each of its
    readings, the identity of the unit it joined (the record's, kept across scans)."""

    scan_id: int
    events: tuple[ChangeEvent, ...]
    placed: tuple[str, ...] = ()
    #: Whether the scan changed what the store says (a unit's facts, a room, a removal), as
    #: opposed to only when units were last seen.
    changed: bool = True
    #: The units a source of the scan saw before and did not see in this run (missed, or at
    #: a target it could not read): what says whether a unit was seen by its source's latest
    #: run. A snapshot needs rebuilding when the scan ``changed`` or this set did.
    unseen: frozenset[str] = frozenset()


def _explain(exc: sqlite3.Error, path: Path, *, read_only: bool = False) -> StoreError:
    text = str(exc).lower()
    if read_only and ("readonly" in text or "unable to open" in text):
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_READONLY":  # a write: a bug of the caller
            return _opened_read_only(path)
        return _cannot_read(path, exc)
    if "locked" in text or "busy" in text:
        return StoreError(f"state database {path} is locked by another process; try again when it is done")
    if "disk is full" in text:
        return StoreError(
            f"state database {path}: the disk is full ({exc}); nothing was lost, "
            "the previous state is intact; free space and the next scan is stored"
        )
    if "disk i/o" in text:
        return StoreError(
            f"state database {path}: the disk is failing ({exc}); nothing was lost, "
            "the previous state is intact; check the disk"
        )
    if "not a database" in text or "malformed" in text:
        return StoreError(
            f"state database {path} is corrupt ({exc}); move it aside and the next scan starts a fresh one"
        )
    if "readonly" in text or "unable to open" in text:
        return StoreError(
            f"state database {path} cannot be written as user {user_name()} ({exc}); check the "
            "state directory's owner and permissions, or run the command as the service's user "
            "(sudo -u roomsync roomsync …)"
        )
    return StoreError(f"state database {path}: {exc}")


def _opened_read_only(path: Path) -> StoreError:
    return StoreError(f"state database {path} is open read-only: this command may not change it")


def _cannot_read(path: Path, exc: sqlite3.Error) -> StoreError:
    """Why a read-only open failed: no database, a database this user may not read, or one it
    may read but whose ``-wal`` and ``-shm`` files (see the module's docstring) it can neither
    open nor create."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return StoreError(
            f"no state database {path}: nothing was stored yet (roomsync scan or the daemon creates it)"
        )
    except OSError as err:
        return StoreError(
            f"state database {path} cannot be read as user {user_name()} ({err.strerror or err}); run the "
            "command as the service's user (sudo -u roomsync roomsync …)"
        )
    return StoreError(
        f"state database {path} cannot be read as user {user_name()} ({exc}): SQLite reads it through "
        f"{path.name}-wal and {path.name}-shm beside it, which this user can neither open nor create in "
        f"{path.parent} (they exist while the daemon has the store open); run the command as the "
        "service's user (sudo -u roomsync roomsync …)"
    )


def user_name() -> str:
    """This process's user, by name when it has one (for an error that says who may not)."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())


def _unreadable(path: Path, what: str, exc: Exception) -> StoreError:
    return StoreError(
        f"state database {path} is corrupt (a {what} row cannot be read: "
        f"{type(exc).__name__}: {exc}); move it aside and the next scan starts a fresh one"
    )


def utc_text(moment: datetime) -> str:
    """A time as fixed-width UTC text, so that text order is time order (how the store and
    the outbox keep times)."""
    return as_utc(moment).isoformat(timespec="microseconds")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _unseen(
    inventory: Mapping[str, Tracked],
    readings: Sequence[Device],
    scope: Collection[str],
    settled: Collection[str] = (),
) -> frozenset[str]:
    """The units with a channel of a source in ``scope`` that no reading of the scan re-read
    (a settled unit had every channel re-read)."""
    reported = {(source_of(d), d.address) for d in readings}
    ran = set(scope)
    return frozenset(
        identity
        for identity, unit in inventory.items()
        if identity not in settled and any(s.source in ran and s.key not in reported for s in unit.sightings)
    )


def _history_bytes(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'history_bytes'").fetchone()
    return int(json.loads(row[0])) if row else 0


def _add_history_bytes(db: sqlite3.Connection, delta: int) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('history_bytes', ?) ON CONFLICT(key) DO UPDATE "
        "SET value = max(0, CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER))",
        (str(delta),),
    )


#: Scans dropped per statement (SQLite limits the variables of one statement: 999 in old builds).
_DROP_BATCH = 500


def _drop_history(db: sqlite3.Connection, scans: Sequence[int]) -> None:
    """Drop the history of ``scans``, keeping ``meta.history_bytes`` right."""
    freed = 0
    for start in range(0, len(scans), _DROP_BATCH):
        batch = list(scans[start : start + _DROP_BATCH])
        marks = ",".join("?" * len(batch))
        freed += int(
            db.execute(
                "SELECT COALESCE(SUM(length(CAST(data AS BLOB))), 0) FROM history "
                f"WHERE scan_id IN ({marks})",
                batch,
            ).fetchone()[0]
        )
        db.execute(f"DELETE FROM history WHERE scan_id IN ({marks})", batch)
    if freed:
        _add_history_bytes(db, -freed)


class Store:
    """One open state database. Use :meth:`open`; close it (or use ``with``)."""

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT_S, read_only: bool = False) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        #: Opened with SQLite's ``mode=ro``: no migration, no write (see the module's docstring).
        self.read_only = read_only
        #: The decoded inventory and the scan it is as of (``scan_generation``): the units, their
        #: sightings and times change only with a stored scan, whichever connection stores it,
        #: while the outbox's and the pins' writes leave them (and the cache) alone. Decoding
        #: 5,000 units costs ~0.1 s.
        self._cache: tuple[int, dict[str, Tracked]] | None = None
        #: For the cached inventory: what the last readings of each channel said and the unit
        #: each joined (:func:`agent.events.diff_scan`'s ``known``), with the merge rules they
        #: were merged by. Emptied whenever the cache is decoded anew.
        self._known: dict[tuple[str, str], tuple[str, Any]] = {}
        self._known_rules: MergeRules | None = None
        try:
            if read_only:
                # A URI, so that ``mode=ro`` applies (the path percent-encoded: ``?`` and ``#``
                # are a URI's own).
                self._db = sqlite3.connect(
                    f"{path.absolute().as_uri()}?mode=ro",
                    uri=True,
                    timeout=busy_timeout,
                    isolation_level=None,
                )
            else:
                self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise _explain(exc, path, read_only=read_only) from None
        try:
            if not read_only:  # the journal mode is the database's: a reader finds it set
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise _explain(exc, path, read_only=read_only) from None
        except StoreError:
            self._db.close()
            raise

    @classmethod
    def open(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        busy_timeout: float = BUSY_TIMEOUT_S,
        read_only: bool = False,
    ) -> Store:
        """The store in ``state_dir``, created (directory and database) unless ``read_only``."""
        directory = Path(state_dir)
        if not read_only:
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the state directory {directory}: {exc.strerror or exc}"
                ) from None
        return cls(directory / DB_NAME, busy_timeout=busy_timeout, read_only=read_only)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed whole, or rolled back whole
        on any error; an SQLite failure becomes :class:`StoreError`. For the modules that
        keep their own tables here (the outbox). A read-only store refuses it before SQLite is
        asked (``mode=ro`` would let ``BEGIN IMMEDIATE`` through and refuse the first write)."""
        if self.read_only:
            raise _opened_read_only(self.path)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as exc:
            raise _explain(exc, self.path) from None

    def _rollback(self) -> None:
        # SQLite may already have rolled back (a full disk does that): then there is nothing
        # to undo, and the original error is the one to report.
        if self._db.in_transaction:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one query outside a write transaction; failures become :class:`StoreError`."""
        return self._read(sql, params)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, read_only=self.read_only) from None

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema {version}, newer than this "
                f"roomsync understands ({SCHEMA_VERSION}); upgrade roomsync"
            )
        if version < SCHEMA_VERSION and self.read_only:
            # Not read as it is: the read paths know the latest schema only. Nor migrated
            # here: a reader may not write, and the daemon still running the old roomsync
            # would go on writing the old way.
            raise StoreError(
                f"state database {self.path} has schema {version}, older than this roomsync's "
                f"({SCHEMA_VERSION}), and this command only reads it: restart the daemon "
                "(systemctl restart roomsync-agent) or run roomsync scan as the service's user "
                "(sudo -u roomsync roomsync scan …), which migrate it, then run this command again"
            )
        for target in range(version, SCHEMA_VERSION):
            with self.transaction() as db:
                # Another process (the daemon, ``roomsync trust``) may have migrated since
                # the version was read: read it again under the write lock.
                if int(db.execute("PRAGMA user_version").fetchone()[0]) > target:
                    continue
                # One statement at a time: executescript() would commit the transaction
                # first, and a migration must apply whole or not at all.
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {target + 1}")

    @property
    def schema_version(self) -> int:
        return int(self._read("PRAGMA user_version")[0][0])

    # ------------------------------------------------------------------ writing a scan

    def record_scan(
        self,
        devices: Iterable[Device],
        rooms: Iterable[Room],
        finished_at: datetime,
        errors: int = 0,
        *,
        sources_run: Collection[str] | None = None,
        remove_after: int = DEFAULT_REMOVE_AFTER,
        retention: Retention | None = None,
        new_id: Callable[[], str] = new_event_id,
        rules: MergeRules | None = None,
        unreached: Mapping[str, Collection[str]] | None = None,
    ) -> ScanRecord:
        """Store one scan and the change events it produced, in one transaction.

        ``devices`` are the scan's readings, one per channel
        (:attr:`agent.scan.ScanReport.readings`): the diff merges them with what the store
        remembers of each channel into units (:mod:`agent.identity`, with the catalog's
        ``rules``). ``sources_run`` names the sources that ran to completion (the scope of
        :func:`agent.events.diff_scan`: only their units can be missed); ``None`` takes the
        sources that reported something. A unit is removed after ``remove_after`` runs in a
        row of every source that saw it missed it; ``unreached`` names, by source, the targets
        it could not read, whose units are not counted missed. ``retention`` bounds the history
        (:class:`Retention`'s defaults when ``None``).
        """
        found = list(devices)
        scope = sorted(set(sources_run or ()) | {s for d in found for s in sources_of(d)})
        try:
            # A site's scan is a burst of short-lived objects (agent/gcpause.py).
            with paused_gc():
                record, inventory = self._record_scan(
                    found,
                    rooms,
                    finished_at,
                    errors,
                    scope,
                    remove_after,
                    retention,
                    new_id,
                    rules,
                    unreached,
                )
        except BaseException:
            self._cache = None
            self._known = {}
            raise
        self._cache = (record.scan_id, inventory)
        return record

    def _record_scan(
        self,
        found: list[Device],
        rooms: Iterable[Room],
        finished_at: datetime,
        errors: int,
        scope: Sequence[str],
        remove_after: int,
        retention: Retention | None,
        new_id: Callable[[], str],
        rules: MergeRules | None,
        unreached: Mapping[str, Collection[str]] | None = None,
    ) -> tuple[ScanRecord, dict[str, Tracked]]:
        facts = [reading_facts(d) for d in found]
        if rules != self._known_rules:
            self._known, self._known_rules = {}, rules

        def diff(previous: Mapping[str, Tracked]) -> ScanDiff:
            return diff_scan(
                previous,
                found,
                finished_at,
                scope=scope,
                remove_after=remove_after,
                new_id=new_id,
                rules=rules,
                unreached=unreached,
                known=self._known,
                facts=facts,
            )

        # The diff — the costly part — runs before the write lock is taken, so that the other
        # connections (the daemon's loop delivering the outbox) wait only for the writes.
        try:
            generation, previous = self._snapshot()
        except sqlite3.Error as exc:
            raise _explain(exc, self.path) from None
        changes = diff(previous)
        with self.transaction() as db:
            if self._generation(db) != generation:  # another connection stored a scan meanwhile
                generation, previous = self._current(db)
                changes = diff(previous)
            keep = retention or Retention()
            scan_id = self._insert_scan(db, finished_at, len(found), errors, scope)
            rewritten = self._write_inventory(db, previous, changes, finished_at)
            rooms_changed = self._write_rooms(db, rooms)
            self._write_events(db, scan_id, changes.events)
            self._write_history(db, scan_id, found, changes.placed, rewritten)
            self._prune_history(db, keep, finished_at)
            self._prune_events(db, keep, finished_at)
        if changes.settled:  # a settled unit's channels read what they read before
            kept = [i for i, identity in enumerate(changes.placed) if identity not in changes.settled]
            learn_channels(
                self._known,
                [found[i] for i in kept],
                [facts[i] for i in kept],
                [changes.placed[i] for i in kept],
            )
        else:
            learn_channels(self._known, found, facts, changes.placed)
        changed = bool(rewritten or changes.removed or changes.events or rooms_changed)
        unseen = _unseen(changes.inventory, found, scope, changes.settled)
        record = ScanRecord(scan_id, changes.events, changes.placed, changed, unseen)
        return record, dict(changes.inventory)

    @staticmethod
    def _insert_scan(
        db: sqlite3.Connection, finished_at: datetime, devices: int, errors: int, scope: Sequence[str]
    ) -> int:
        cursor = db.execute(
            "INSERT INTO scans (finished_at, devices, errors, sources) VALUES (?, ?, ?, ?)",
            (finished_at.isoformat(), devices, errors, _json(list(scope))),
        )
        return int(cursor.lastrowid or 0)

    def _write_inventory(
        self, db: sqlite3.Connection, previous: Mapping[str, Tracked], diff: ScanDiff, now: datetime
    ) -> set[str]:
        """Write what the scan changed; the identities of the units rewritten whole. A unit
        whose facts are as they were keeps its rows: only the times its channels were seen
        are kept, for every such unit in one statement."""
        rewritten: set[str] = set()
        seen: list[tuple[str, str, str, str]] = []
        texts: dict[datetime, str] = {}
        for identity, unit in diff.inventory.items():
            before = previous.get(identity)
            if before is unit:
                continue
            if identity in diff.settled:  # every channel re-read, nothing else changed
                seen.extend(
                    (
                        identity,
                        s.source,
                        s.address,
                        texts.get(s.seen_at) or texts.setdefault(s.seen_at, s.seen_at.isoformat()),
                    )
                    for s in unit.sightings
                )
                continue
            if before is not None and same_facts(before, unit):
                seen.extend(
                    (identity, source, address, at.isoformat())
                    for source, address, at in seen_times(before, unit)
                )
                continue
            if identity not in previous:
                self._keep_first_seen(db, identity, unit.device)
            self._upsert_device(db, identity, unit.device)
            self._replace_sightings(db, identity, unit.sightings)
            db.execute("DELETE FROM seen WHERE identity = ?", (identity,))
            rewritten.add(identity)
        if seen:
            db.execute(
                "INSERT INTO seen (identity, source, address, at) SELECT json_extract(value, '$[0]'), "
                "json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]') "
                "FROM json_each(?) WHERE true "
                "ON CONFLICT (identity, source, address) DO UPDATE SET at = excluded.at",
                (json.dumps(seen, ensure_ascii=False),),
            )
        for identity in diff.removed:
            db.execute("UPDATE devices SET removed_at = ? WHERE identity = ?", (utc_text(now), identity))
            db.execute("DELETE FROM sightings WHERE identity = ?", (identity,))
            db.execute("DELETE FROM seen WHERE identity = ?", (identity,))
        return rewritten

    @staticmethod
    def _keep_first_seen(db: sqlite3.Connection, identity: str, device: Device) -> None:
        """A unit back after its removal keeps the day it was first seen."""
        row = db.execute("SELECT first_seen FROM devices WHERE identity = ?", (identity,)).fetchone()
        if row is not None:
            device.first_seen = min(
                device.first_seen, datetime.fromisoformat(row[0]), key=lambda moment: as_utc(moment)
            )

    @staticmethod
    def _upsert_device(db: sqlite3.Connection, identity: str, device: Device) -> None:
        db.execute(
            "INSERT INTO devices (identity, room, product, serial, first_seen, last_seen, data, removed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT(identity) DO UPDATE SET room = excluded.room, "
            "product = excluded.product, serial = excluded.serial, first_seen = excluded.first_seen, "
            "last_seen = excluded.last_seen, data = excluded.data, removed_at = NULL",
            (
                identity,
                device.room,
                device.product,
                device.serial,
                device.first_seen.isoformat(),
                device.last_seen.isoformat(),
                _json(device.to_dict()),
            ),
        )

    @staticmethod
    def _replace_sightings(db: sqlite3.Connection, identity: str, sightings: Iterable[Sighting]) -> None:
        db.execute("DELETE FROM sightings WHERE identity = ?", (identity,))
        db.executemany(
            "INSERT INTO sightings (identity, source, address, room, missed, data) VALUES (?, ?, ?, ?, ?, ?)",
            [(identity, s.source, s.address, s.room, s.missed, _json(s.to_dict())) for s in sightings],
        )

    @staticmethod
    def _write_rooms(db: sqlite3.Connection, rooms: Iterable[Room]) -> bool:
        """Store the rooms that changed; whether any did."""
        wanted = {room.id: _json(room.to_dict()) for room in rooms}
        if not wanted:
            return False
        stored = dict(db.execute("SELECT id, data FROM rooms").fetchall())
        changed = [(id_, data) for id_, data in wanted.items() if stored.get(id_) != data]
        db.executemany(
            "INSERT INTO rooms (id, data) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET data = excluded.data",
            changed,
        )
        return bool(changed)

    @staticmethod
    def _write_events(db: sqlite3.Connection, scan_id: int, events: Iterable[ChangeEvent]) -> None:
        db.executemany(
            "INSERT INTO events (id, scan_id, at, type, identity, serial, room, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (e.id, scan_id, utc_text(e.at), str(e.type), e.identity, e.serial, e.room, _json(e.to_dict()))
                for e in events
            ],
        )

    @staticmethod
    def _write_history(
        db: sqlite3.Connection,
        scan_id: int,
        readings: Sequence[Device],
        units: Sequence[str],
        rewritten: Collection[str],
    ) -> None:
        """The readings of the units the scan changed (and of none), under the identity of
        the unit each joined; the history's size kept in ``meta.history_bytes``."""
        rows = [
            (scan_id, unit or d.identity, _json(d.to_dict()))
            for d, unit in zip(readings, units, strict=False)
            if not unit or unit in rewritten
        ]
        if not rows:
            return
        db.executemany("INSERT INTO history (scan_id, identity, data) VALUES (?, ?, ?)", rows)
        added = sum(len(data.encode()) for _, _, data in rows)
        _add_history_bytes(db, added)

    @staticmethod
    def _prune_history(db: sqlite3.Connection, retention: Retention, now: datetime) -> None:
        """Drop the history of scans older than ``history_days`` before ``now`` (times
        compared as times, whatever their offsets), beyond the newest ``history_scans`` that
        have history, then the oldest while it is over ``history_max_bytes`` (the newest scan
        stays)."""
        rows = db.execute("SELECT DISTINCT scan_id FROM history ORDER BY scan_id DESC").fetchall()
        if not rows:
            return
        scans = [int(r[0]) for r in rows]
        doomed: list[int] = []
        if retention.history_scans is not None:
            doomed = scans[retention.history_scans :]
            scans = scans[: retention.history_scans]
        if retention.history_days is not None and scans:
            cutoff = as_utc(now) - timedelta(days=retention.history_days)
            times = dict(
                db.execute(
                    "SELECT id, finished_at FROM scans WHERE id IN (SELECT DISTINCT scan_id FROM history)"
                ).fetchall()
            )
            old = {s for s in scans if s in times and as_utc(datetime.fromisoformat(times[s])) < cutoff}
            doomed += [s for s in scans if s in old]
            scans = [s for s in scans if s not in old]
        if doomed:
            _drop_history(db, doomed)
        if retention.history_max_bytes is not None and len(scans) > 1:
            total = _history_bytes(db)
            if total > retention.history_max_bytes:
                sizes = dict(
                    db.execute(
                        "SELECT scan_id, SUM(length(CAST(data AS BLOB))) FROM history GROUP BY scan_id"
                    ).fetchall()
                )
                over = []
                for scan in reversed(scans[1:]):  # oldest first; the newest stays
                    if total <= retention.history_max_bytes:
                        break
                    over.append(scan)
                    total -= int(sizes.get(scan) or 0)
                _drop_history(db, over)

    @staticmethod
    def _prune_events(db: sqlite3.Connection, retention: Retention, now: datetime) -> None:
        """Drop events older than ``events_days`` that every output's queue has taken (at or
        below the lowest cursor) and that no queued message still carries; one statement."""
        if retention.events_days is None:
            return
        cutoff = utc_text(as_utc(now) - timedelta(days=retention.events_days))
        db.execute(
            "DELETE FROM events WHERE at < ? AND seq <= min("
            "COALESCE((SELECT MIN(CAST(value AS INTEGER)) FROM meta "
            "WHERE key = 'events_cursor' OR key LIKE 'events\\_cursor:%' ESCAPE '\\'), 0), "
            "COALESCE((SELECT MIN(first_event) - 1 FROM outbox WHERE events > 0), 9223372036854775807))",
            (cutoff,),
        )

    # ------------------------------------------------------------------ reading

    @staticmethod
    def _generation(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT max(id) FROM scans").fetchone()[0] or 0)

    def _current(self, db: sqlite3.Connection) -> tuple[int, dict[str, Tracked]]:
        """The scan the inventory is as of, and every unit present with its sightings (taken
        from the device for a unit stored before sightings were); inside a transaction, so
        that both are of one moment. The units are shared with the cache: read them, never
        change them."""
        generation = self._generation(db)
        if self._cache is not None and self._cache[0] == generation:
            return generation, dict(self._cache[1])
        inventory = self._decode_inventory(db)
        self._cache = (generation, inventory)
        self._known = {}
        return generation, dict(inventory)

    def _snapshot(self) -> tuple[int, dict[str, Tracked]]:
        """:meth:`_current` in a read transaction of its own (a cached inventory costs one
        statement)."""
        if self._cache is not None and self._cache[0] == self._generation(self._db):
            return self._cache[0], dict(self._cache[1])
        if self._db.in_transaction:  # read inside a caller's transaction (a snapshot being queued)
            return self._current(self._db)
        self._db.execute("BEGIN")
        try:
            return self._current(self._db)
        finally:
            self._rollback()

    def _decode_inventory(self, db: sqlite3.Connection) -> dict[str, Tracked]:
        with sharing_texts():  # a site's texts repeat: one copy of each (agent.model)
            return self._decode_rows(db)

    def _decode_rows(self, db: sqlite3.Connection) -> dict[str, Tracked]:
        sightings: dict[str, list[Sighting]] = {}
        for identity, data in db.execute(
            "SELECT identity, data FROM sightings ORDER BY identity, source, address"
        ):
            sightings.setdefault(identity, []).append(self._decode(Sighting.from_dict, data, "sighting"))
        seen: dict[str, dict[Channel, datetime]] = {}
        for identity, source, address, at in db.execute("SELECT identity, source, address, at FROM seen"):
            try:
                seen.setdefault(identity, {})[(source, address)] = datetime.fromisoformat(at)
            except (TypeError, ValueError) as exc:
                raise _unreadable(self.path, "seen", exc) from None
        inventory = {}
        for identity, data in db.execute("SELECT identity, data FROM devices WHERE removed_at IS NULL"):
            device = self._decode(Device.from_dict, data, "device")
            # A unit stored before identities were kept with it carries the one it has here.
            device.assigned_identity = identity
            unit = (
                Tracked(device, tuple(sightings[identity])) if identity in sightings else Tracked.of(device)
            )
            inventory[identity] = with_seen(unit, seen[identity]) if identity in seen else unit
        return inventory

    def _decode(self, build: Callable[[Any], Any], data: str, what: str) -> Any:
        try:
            return build(json.loads(data))
        except (ValueError, KeyError, TypeError) as exc:
            raise _unreadable(self.path, what, exc) from None

    def tracked(self) -> dict[str, Tracked]:
        """Every unit in the inventory with its sightings (missed counts), by identity."""
        try:
            return self._snapshot()[1]
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, read_only=self.read_only) from None

    def adopt(self, inventory: dict[str, Tracked], scan_id: int) -> None:
        """Take ``inventory`` — what another connection of this process decoded while it
        stored scan ``scan_id`` — as this connection's cache, so it need not decode it again;
        unless a newer scan has been stored since (then the next read decodes)."""
        self._known = {}  # what this connection knew of the channels was of its old cache
        try:
            self._cache = (scan_id, inventory) if self.scan_generation() == scan_id else None
        except StoreError:
            self._cache = None

    def devices(self, *, removed: bool = False) -> list[Device]:
        """Every device in the inventory, by room then identity; with ``removed``, instead
        the units that left it, as they were last seen. The inventory's devices are shared
        with the store's cache: read them, never change them."""
        if not removed:
            # SQLite's order: no room first, then rooms and identities as UTF-8 bytes (the
            # order of code points, as Python compares text).
            units = sorted(
                self.tracked().items(),
                key=lambda item: (item[1].device.room is not None, item[1].device.room or "", item[0]),
            )
            return [unit.device for _, unit in units]
        rows = self._read("SELECT data FROM devices WHERE removed_at IS NOT NULL ORDER BY room, identity")
        return [self._decode(Device.from_dict, r[0], "device") for r in rows]

    def rooms(self) -> list[Room]:
        rows = self._read("SELECT data FROM rooms ORDER BY id")
        return [self._decode(lambda d: Room(**d), r[0], "room") for r in rows]

    def scan_generation(self) -> int:
        """The id of the newest stored scan (0 before any): the inventory, the rooms and the
        removed units change only with a stored scan, so what is derived from them can be
        cached under it."""
        rows = self._read("SELECT max(id) FROM scans")
        return int(rows[0][0] or 0)

    def last_scan(self) -> datetime | None:
        rows = self._read("SELECT finished_at FROM scans ORDER BY id DESC LIMIT 1")
        return datetime.fromisoformat(rows[0][0]) if rows else None

    def latest_runs(self, lookback: int = 1000) -> dict[str, datetime]:
        """When each source last ran to the end (the newest stored scan that ran it, among the
        newest ``lookback`` scans)."""
        runs: dict[str, datetime] = {}
        for finished_at, sources in self._read(
            "SELECT finished_at, sources FROM scans ORDER BY id DESC LIMIT ?", [lookback]
        ):
            try:
                names = json.loads(sources) if sources else []
            except ValueError:
                names = []
            for name in names if isinstance(names, list) else []:
                runs.setdefault(str(name), datetime.fromisoformat(finished_at))
        return runs

    def events(
        self, since: datetime | None = None, *, limit: int | None = DEFAULT_EVENT_LIMIT
    ) -> list[ChangeEvent]:
        """Change events at or after ``since`` (all when ``None``), oldest first: the newest
        ``limit`` of them (``None``: every one)."""
        where, params = ("WHERE at >= ?", [utc_text(since)]) if since is not None else ("", [])
        rows = self._read(
            f"SELECT data FROM events {where} ORDER BY seq DESC LIMIT ?",
            [*params, -1 if limit is None else limit],
        )
        return [self._decode(ChangeEvent.from_dict, r[0], "event") for r in reversed(rows)]

    def history(self, identity: str | None = None) -> list[tuple[int, Device]]:
        """The devices each scan still in the history reported, as (scan id, device), oldest
        first; only ``identity``'s when given."""
        where, params = ("WHERE identity = ?", [identity]) if identity is not None else ("", [])
        rows = self._read(f"SELECT scan_id, data FROM history {where} ORDER BY scan_id, rowid", params)
        return [(int(r[0]), self._decode(Device.from_dict, r[1], "history")) for r in rows]
