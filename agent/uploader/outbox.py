"""The durable outbox: what waits for each output, in the store (``outbox`` and ``meta``).

One queue per output (``portal``, ``glpi``, ``mqtt``: :data:`OUTPUTS`): an :class:`Outbox` is
the queue of one, with its own sequences, event cursor, bound, counters and state, so that
an output that is down never holds up another. The portal's is described below; MQTT's is
the same queue (snapshots and events, published instead of posted). GLPI's holds *state*
only: one document per unit (``item``: the unit's identity), queued by
:meth:`Outbox.queue_documents` when its digest differs from the one last queued (or on the
full-resend schedule), replacing a queued one of the same item; it takes no events.

A message is written here — built, serialised and gzip-compressed, with its
``Idempotency-Key`` and ``sequence`` — before anything is sent, and leaves only when the
portal accepted it (:meth:`Outbox.delivered`). Every attempt sends the stored bytes, so a
retry after a crash or a kill -9 is the same message under the same key: delivery is at
least once, and the portal de-duplicates (docs/portal-api.md).

The queue
---------
* **Events** come from the store's ``events`` table. :meth:`Outbox.take_events` turns the
  events past the cursor (``meta.events_cursor``) into ``roomsync.events.v1`` messages of up
  to :data:`~agent.uploader.protocol.MAX_EVENTS_PER_MESSAGE` events, oldest first, moving the
  cursor in the same transaction. Events that arrive while the newest queued events message
  was never attempted join it (it is rebuilt under a fresh key and sequence — nobody saw the
  old ones), so an outage of many small scans is delivered in few large messages.
* **Snapshots**: :meth:`Outbox.queue_snapshot` drops any pending snapshot — only the newest
  is worth sending — then takes the events (they can join the newest events message, which
  the pending snapshot no longer follows), then queues the new one at the tail, after the
  events that led to it. It skips a snapshot whose content (everything but
  ``sequence``, ``generated_at`` and ``last_seen``) equals the last one queued, unless that
  one is older than the snapshot interval or ``force`` is given.
* **Order**: the head is the oldest pending message. Sequences are given in queue order and
  never reused (``meta.sequence``). Attempts are counted durably *before* each send.
* **Parked** messages (a 4xx that retrying cannot fix) stay, with their status and reply,
  until :meth:`Outbox.unpark` puts them back at the head of the queue.

Bound
-----
The queued bodies may take at most ``max_bytes`` (``[portal] outbox_max_mb``). Past it the
oldest *events* messages — pending or parked — are dropped, whole, oldest first, and counted
(``dropped_events``, ``dropped_messages``, also sent to the portal in every snapshot as
``dropped_events``). The pending snapshot is never dropped: it is the state, and the next one
replaces it; a portal that sees ``dropped_events`` grow knows to trust the snapshot over its
event log.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sqlite3
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel

from agent.gcpause import paused_gc
from agent.model import as_utc
from agent.store import Store, StoreError, utc_text
from agent.uploader import GLPI, MQTT, OUTPUTS, PORTAL
from agent.uploader.protocol import (
    GZIP_LEVEL,
    MAX_EVENTS_PER_MESSAGE,
    SCHEMA_EVENTS,
    SCHEMA_INVENTORY,
    AgentInfo,
    EventOut,
    InventoryMessage,
    change_event_out,
    events_message,
    gzip_body,
    serialize,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SNAPSHOT_INTERVAL",
    "GLPI",
    "MQTT",
    "OUTPUTS",
    "PORTAL",
    "Outbox",
    "OutboxStats",
    "PortalState",
    "QueuedMessage",
    "SnapshotBuilder",
    "discard_output",
    "meta_key",
    "queued_outputs",
]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_SNAPSHOT_INTERVAL = timedelta(hours=24)


Kind = Literal["inventory", "events", "glpi"]
KIND_OF_SCHEMA: dict[str, Kind] = {SCHEMA_INVENTORY: "inventory", SCHEMA_EVENTS: "events"}
SCHEMA_OF_KIND: dict[str, str] = {kind: schema for schema, kind in KIND_OF_SCHEMA.items()}

#: Builds a snapshot: (sequence, generated_at, dropped_events) → the message, or already its
#: serialised bytes (what :func:`~agent.uploader.protocol.serialize` writes for it).
SnapshotBuilder = Callable[[int, datetime, int], InventoryMessage | bytes | Iterable[bytes]]
"""Makes the snapshot for (sequence, time, dropped events): a message, its bytes, or its bytes
in pieces (:func:`agent.uploader.protocol.inventory_chunks`), hashed and compressed as they
come."""

_COLUMNS = (
    "id, kind, key, sequence, created_at, size, events, first_event, last_event, state, "
    "attempts, last_attempt, last_status, last_error, output, item"
)


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One message in the outbox (``body`` only when asked for)."""

    id: int
    kind: Kind
    key: str
    sequence: int
    created_at: datetime
    size: int
    events: int
    first_event: int | None
    last_event: int | None
    state: Literal["pending", "parked"]
    attempts: int
    last_attempt: datetime | None
    last_status: int | None
    last_error: str | None
    output: str = PORTAL
    item: str | None = None
    body: bytes = b""

    @property
    def schema(self) -> str:
        return SCHEMA_OF_KIND.get(self.kind, self.kind)

    @classmethod
    def _of(cls, row: tuple[Any, ...], body: bytes = b"") -> QueuedMessage:
        (
            id_,
            kind,
            key,
            sequence,
            created,
            size,
            events,
            first,
            last,
            state,
            attempts,
            last_attempt,
            last_status,
            last_error,
            output,
            item,
        ) = row
        return cls(
            int(id_),
            kind,
            key,
            int(sequence),
            datetime.fromisoformat(created),
            int(size),
            int(events),
            first,
            last,
            state,
            int(attempts),
            datetime.fromisoformat(last_attempt) if last_attempt else None,
            last_status,
            last_error,
            output,
            item,
            body,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "output": self.output,
            "kind": self.kind,
            "item": self.item,
            "idempotency_key": self.key,
            "sequence": self.sequence,
            "created_at": self.created_at.isoformat(),
            "bytes": self.size,
            "events": self.events,
            "state": self.state,
            "attempts": self.attempts,
            "last_attempt": self.last_attempt.isoformat() if self.last_attempt else None,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class PortalState:
    """What the last delivery attempts said of an output (the portal's, GLPI's, the
    broker's): ``unknown`` (never tried), ``ok`` (the last attempt was accepted),
    ``retrying`` (transient failures: network, 5xx, 429, no PUBACK…), ``unhealthy`` (delivery
    paused: the token or password was refused, the URL redirects, the settings cannot be
    used)."""

    state: Literal["unknown", "ok", "retrying", "unhealthy"] = "unknown"
    reason: str | None = None
    since: datetime | None = None
    last_success: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "since": self.since.isoformat() if self.since else None,
            "last_success": self.last_success.isoformat() if self.last_success else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PortalState:
        def when(key: str) -> datetime | None:
            return datetime.fromisoformat(data[key]) if data.get(key) else None

        return cls(data.get("state", "unknown"), data.get("reason"), when("since"), when("last_success"))


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """The outbox at a glance (``roomsync outbox``, the status API, metrics)."""

    pending: int
    parked: int
    bytes: int
    events_queued: int
    events_waiting: int  # in the store, not yet taken into a message
    oldest: datetime | None
    dropped_events: int
    dropped_messages: int
    last_snapshot: datetime | None
    portal: PortalState
    output: str = PORTAL

    @property
    def empty(self) -> bool:
        return self.pending == 0 and self.parked == 0 and self.events_waiting == 0

    @property
    def state(self) -> PortalState:
        """What the last delivery attempts said of the output (``portal`` is its old name)."""
        return self.portal

    def to_dict(self) -> dict[str, Any]:
        """The stats; the output's state is ``delivery`` (``portal`` too, for the portal's
        queue: the name it had before there were other outputs)."""
        state = {"portal": self.portal.to_dict()} if self.output == PORTAL else {}
        return {
            "output": self.output,
            "pending": self.pending,
            "parked": self.parked,
            "bytes": self.bytes,
            "events_queued": self.events_queued,
            "events_waiting": self.events_waiting,
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "dropped_events": self.dropped_events,
            "dropped_messages": self.dropped_messages,
            "last_snapshot": self.last_snapshot.isoformat() if self.last_snapshot else None,
            **state,
            "delivery": self.portal.to_dict(),
            "empty": self.empty,
        }


def _get(db: sqlite3.Connection, key: str, default: Any = None) -> Any:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else default


def _put(db: sqlite3.Connection, key: str, value: Any) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, json.dumps(value, sort_keys=True)),
    )


def meta_key(output: str, name: str) -> str:
    """The ``meta`` key of an output's ``name`` (``events_cursor``, ``sequence``,
    ``last_snapshot``, ``dropped_events``, ``dropped_messages``, ``outage``, ``state``): the
    portal's keep the names they had before there were other outputs (its state is
    ``portal``), another output's are suffixed ``:<output>``."""
    if output == PORTAL:
        return "portal" if name == "state" else name
    return f"{name}:{output}"


#: What changes on every scan without anything changing: the message's ``sequence`` and
#: ``generated_at`` and every unit's ``last_seen``, as pydantic writes them (compact JSON). A
#: JSON string cannot hold an unescaped quote, so these patterns only ever match keys.
_VOLATILE = re.compile(rb'"sequence":\d+,|"generated_at":"[^"]*",|"last_seen":"[^"]*"')


def body_digest(body: bytes) -> str:
    """The content digest of a serialised snapshot (:func:`content_digest`)."""
    return hashlib.sha256(_VOLATILE.sub(b"", body)).hexdigest()


def digest_and_gzip(pieces: Iterable[bytes]) -> tuple[str, bytes]:
    """:func:`body_digest` and :func:`~agent.uploader.protocol.gzip_body` of the pieces'
    concatenation — the same digest and the same bytes — made piece by piece, so that the
    uncompressed body is never held whole. No volatile field may straddle two pieces (those
    of ``inventory_chunks`` end where JSON values do)."""
    digest = hashlib.sha256()
    # gzip_body is zlib's own gzip wrapper at the same level: fed the same bytes, a stream
    # writes the same output, however they are cut.
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    out = []
    try:
        with paused_gc():  # the pieces are a burst of short-lived objects
            for piece in pieces:
                digest.update(_VOLATILE.sub(b"", piece))
                out.append(packer.compress(piece))
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # a generator stopped midway lets go of what it holds now, not at a GC
    out.append(packer.flush())
    return digest.hexdigest(), b"".join(out)


def content_digest(message: InventoryMessage) -> str:
    """A digest of what a snapshot says, leaving out what changes on every scan without
    anything changing (``sequence``, ``generated_at``, every ``last_seen``)."""
    return body_digest(serialize(message))


class Outbox:
    """The outbox of one open :class:`~agent.store.Store`. Every method is one transaction;
    failures are :class:`~agent.store.StoreError`."""

    def __init__(
        self,
        store: Store,
        *,
        agent_id: str | None = None,
        version: str = "0",
        hostname: str = "localhost",
        max_bytes: int = DEFAULT_MAX_BYTES,
        snapshot_interval: timedelta = DEFAULT_SNAPSHOT_INTERVAL,
        output: str = PORTAL,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}")
        self.store = store
        self.output = output
        #: GLPI's queue holds documents (state) only; the portal's and MQTT's take events.
        self.carries_events = output != GLPI
        self.max_bytes = max_bytes
        self.snapshot_interval = snapshot_interval
        self.agent = AgentInfo(
            id=agent_id or self._stored_agent_id(), version=version, hostname=hostname[:253] or "localhost"
        )

    def _key(self, name: str) -> str:
        return meta_key(self.output, name)

    def _get(self, db: sqlite3.Connection, name: str, default: Any = None) -> Any:
        return _get(db, self._key(name), default)

    def _put(self, db: sqlite3.Connection, name: str, value: Any) -> None:
        _put(db, self._key(name), value)

    def _next_sequence(self, db: sqlite3.Connection) -> int:
        sequence = int(self._get(db, "sequence", 0)) + 1
        self._put(db, "sequence", sequence)
        return sequence

    def _stored_agent_id(self) -> str:
        with self.store.transaction() as db:
            value = _get(db, "agent_id")
            if not value:
                value = str(uuid.uuid4())
                _put(db, "agent_id", value)
        return str(value)

    # ------------------------------------------------------------------ queueing

    def take_events(self, now: datetime) -> int:
        """Queue the events past the cursor (see the module's docstring); returns how many."""
        with self.store.transaction() as db:
            return self._take_events(db, now)

    def _take_events(self, db: sqlite3.Connection, now: datetime) -> int:
        if not self.carries_events:
            return 0
        cursor = self._get(db, "events_cursor")
        if cursor is None and self.output != PORTAL:
            # An output configured later starts from now: its first snapshot says the state,
            # the events before it stay the portal's (and the store's retention's).
            latest = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            self._put(db, "events_cursor", int(latest))
            return 0
        rows = db.execute(
            "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq", (int(cursor or 0),)
        ).fetchall()
        if not rows:
            return 0
        fresh = [(int(seq), self._event(data)) for seq, data in rows]
        tail = db.execute(
            f"SELECT {_COLUMNS}, body FROM outbox WHERE output = ? ORDER BY id DESC LIMIT 1", (self.output,)
        ).fetchone()
        carried: list[tuple[int, EventOut]] = []
        if tail is not None:
            last = QueuedMessage._of(tail[:-1])
            if (
                last.kind == "events"
                and last.state == "pending"
                and last.attempts == 0
                and last.events < MAX_EVENTS_PER_MESSAGE
                and last.first_event is not None
            ):
                carried = self._events_of(tail[-1], last.first_event)
                db.execute("DELETE FROM outbox WHERE id = ?", (last.id,))
        batch = carried + fresh
        for start in range(0, len(batch), MAX_EVENTS_PER_MESSAGE):
            chunk = batch[start : start + MAX_EVENTS_PER_MESSAGE]
            sequence = self._next_sequence(db)
            message = events_message(self.agent, sequence, now, [e for _, e in chunk])
            self._insert(
                db,
                "events",
                sequence,
                now,
                gzip_body(serialize(message)),
                len(chunk),
                chunk[0][0],
                chunk[-1][0],
            )
        self._put(db, "events_cursor", fresh[-1][0])
        self._enforce_bound(db)
        return len(fresh)

    def _event(self, data: str) -> EventOut:
        try:
            raw = json.loads(data)
            return change_event_out(
                id=raw["id"],
                type=raw["type"],
                time=datetime.fromisoformat(raw["at"]),
                identity=raw["identity"],
                product=raw["product"],
                serial=raw.get("serial"),
                room=raw.get("room"),
                before=raw.get("before"),
                after=raw.get("after"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"state database {self.store.path} is corrupt (an event row cannot be "
                f"read: {type(exc).__name__}: {exc}); move it aside"
            ) from None

    @staticmethod
    def _events_of(body: bytes, first: int) -> list[tuple[int, EventOut]]:
        """The events of a queued events message, each numbered ``first`` (the message's
        lowest store seq: all the rebuilt message's ``first_event`` needs to keep the store
        from pruning events a queued message still carries)."""
        doc = json.loads(gzip.decompress(body))
        return [(first, EventOut.model_validate_json(json.dumps(e))) for e in doc["events"]]

    def queue_snapshot(self, build: SnapshotBuilder, now: datetime, *, force: bool = False) -> bool:
        """Take the events, then queue the snapshot ``build`` makes in place of any pending
        one — unless it says what the last queued one said and that one is younger than the
        snapshot interval (``force`` queues it anyway). Returns whether one was queued."""
        with self.store.transaction() as db:
            # The pending snapshot leaves before the events are taken, so that they can join
            # the newest events message (never sent) rather than start one behind the
            # snapshot: an outage of many scans stays a few messages.
            db.execute("SAVEPOINT replace_snapshot")
            db.execute(
                "DELETE FROM outbox WHERE output = ? AND kind = 'inventory' AND state = 'pending'",
                (self.output,),
            )
            self._take_events(db, now)
            dropped = int(self._get(db, "dropped_events", 0))
            sequence = int(self._get(db, "sequence", 0)) + 1
            built = build(sequence, now, dropped)
            if isinstance(built, BaseModel):
                built = serialize(built)
            # The models (or the pieces) go as they are read: the compressed bytes stay.
            whole = isinstance(built, bytes | bytearray | memoryview)
            digest, body = digest_and_gzip([bytes(built)] if whole else built)  # type: ignore[arg-type,list-item]
            del built
            last = self._get(db, "last_snapshot")
            if not force and last and last.get("digest") == digest:
                queued_at = datetime.fromisoformat(last["at"])
                if as_utc(now) - queued_at < self.snapshot_interval:
                    # Nothing new to say: the pending snapshot stays, the events queue behind it.
                    db.execute("ROLLBACK TO replace_snapshot")
                    db.execute("RELEASE replace_snapshot")
                    self._take_events(db, now)
                    return False
            db.execute("RELEASE replace_snapshot")
            self._put(db, "sequence", sequence)
            self._insert(db, "inventory", sequence, now, body, 0, None, None)
            self._put(db, "last_snapshot", {"at": utc_text(now), "digest": digest, "sequence": sequence})
            self._enforce_bound(db)
        return True

    def queue_documents(
        self,
        documents: Iterable[tuple[str, str, bytes]],
        now: datetime,
        *,
        force: bool = False,
    ) -> int:
        """Queue the state documents (``item``, ``digest``, ``body`` as sent) whose digest
        differs from the one last queued for their item — every one when ``force`` is given
        or the full-resend interval has passed since the last full round. A document replaces
        any queued one of its item, pending or parked (only the newest state is worth
        sending). Returns how many were queued; one transaction."""
        queued = 0
        with self.store.transaction() as db:
            last = self._get(db, "last_snapshot")
            full = (
                force
                or not last
                or as_utc(now) - datetime.fromisoformat(last["at"]) >= self.snapshot_interval
            )
            known = dict(
                db.execute(
                    "SELECT item, digest FROM output_items WHERE output = ?", (self.output,)
                ).fetchall()
            )
            for item, digest, body in documents:
                if not full and known.get(item) == digest:
                    continue
                # Pending or parked: an older document of the unit must never reach GLPI after
                # this one (a parked one sent again by --retry-parked would).
                db.execute("DELETE FROM outbox WHERE output = ? AND item = ?", (self.output, item))
                self._insert(db, "glpi", self._next_sequence(db), now, body, 0, None, None, item=item)
                db.execute(
                    "INSERT INTO output_items (output, item, digest, queued_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(output, item) DO UPDATE SET digest = excluded.digest, "
                    "queued_at = excluded.queued_at",
                    (self.output, item, digest, utc_text(now)),
                )
                queued += 1
            if full:
                self._put(db, "last_snapshot", {"at": utc_text(now), "digest": None, "sequence": None})
            self._enforce_bound(db)
        return queued

    def snapshot_due(self, now: datetime) -> bool:
        """Whether the snapshot interval has passed since the last snapshot was queued (or
        none ever was)."""
        last = self._meta("last_snapshot")
        return not last or as_utc(now) - datetime.fromisoformat(last["at"]) >= self.snapshot_interval

    def _insert(
        self,
        db: sqlite3.Connection,
        kind: Kind,
        sequence: int,
        now: datetime,
        body: bytes,
        events: int,
        first: int | None,
        last: int | None,
        *,
        item: str | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO outbox (output, kind, item, key, sequence, created_at, body, size, events, "
            "first_event, last_event, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
            (
                self.output,
                kind,
                item,
                str(uuid.uuid4()),
                sequence,
                utc_text(now),
                body,
                len(body),
                events,
                first,
                last,
            ),
        )

    def _enforce_bound(self, db: sqlite3.Connection) -> None:
        """Past ``max_bytes``, drop this output's oldest events messages — or, in GLPI's
        queue, its oldest documents, whose items are then forgotten so that the next round
        queues them again — whole, oldest first, and count them."""
        total = int(
            db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM outbox WHERE output = ?", (self.output,)
            ).fetchone()[0]
        )
        if total <= self.max_bytes:
            return
        dropped_events = dropped_messages = 0
        droppable = "events" if self.carries_events else "glpi"
        for id_, size, events, item in db.execute(
            "SELECT id, size, events, item FROM outbox WHERE output = ? AND kind = ? ORDER BY id",
            (self.output, droppable),
        ).fetchall():
            if total <= self.max_bytes:
                break
            db.execute("DELETE FROM outbox WHERE id = ?", (id_,))
            if item is not None:
                db.execute("DELETE FROM output_items WHERE output = ? AND item = ?", (self.output, item))
            total -= int(size)
            dropped_events += int(events)
            dropped_messages += 1
        if dropped_messages:
            self._put(db, "dropped_events", int(self._get(db, "dropped_events", 0)) + dropped_events)
            self._put(db, "dropped_messages", int(self._get(db, "dropped_messages", 0)) + dropped_messages)

    # ------------------------------------------------------------------ delivering

    def head(self) -> QueuedMessage | None:
        """The oldest pending message, with its body; ``None`` when nothing is pending."""
        rows = self.store.read(
            f"SELECT {_COLUMNS}, body FROM outbox WHERE output = ? AND state = 'pending' ORDER BY id LIMIT 1",
            (self.output,),
        )
        return QueuedMessage._of(rows[0][:-1], bytes(rows[0][-1])) if rows else None

    def begin_attempt(self, message: QueuedMessage, now: datetime) -> bool:
        """Count an attempt of ``message`` before it is sent; False when it is no longer
        queued (delivered, dropped or replaced meanwhile)."""
        with self.store.transaction() as db:
            cursor = db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_attempt = ? "
                "WHERE id = ? AND state = 'pending'",
                (utc_text(now), message.id),
            )
            return cursor.rowcount == 1

    def delivered(self, message: QueuedMessage, now: datetime, status: int | str) -> None:
        """The output accepted ``message``: it leaves the outbox, and the output is ``ok``
        (``status``: the HTTP status, or what the output said, as ``PUBACK``)."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (message.id,))
            said = f"HTTP {status}" if isinstance(status, int) else status
            self._set_portal(db, "ok", said, now, success=True)

    def failed(self, message: QueuedMessage, status: int | None, error: str) -> None:
        """Note why the last attempt of ``message`` failed (it stays where it is)."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE outbox SET last_status = ?, last_error = ? WHERE id = ?",
                (status, error[:500], message.id),
            )

    def park(self, message: QueuedMessage, status: int, error: str) -> None:
        """Set ``message`` aside: kept and visible, retried only after :meth:`unpark`."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'parked', last_status = ?, last_error = ? WHERE id = ?",
                (status, error[:500], message.id),
            )

    def unpark(self, ids: Iterable[int] | None = None) -> int:
        """Put parked messages (all, or those of ``ids``) back in the queue where they stood —
        ahead of anything queued after them; returns how many."""
        with self.store.transaction() as db:
            if ids is None:
                cursor = db.execute(
                    "UPDATE outbox SET state = 'pending' WHERE output = ? AND state = 'parked'",
                    (self.output,),
                )
                return int(cursor.rowcount)
            count = 0
            for id_ in ids:
                count += db.execute(
                    "UPDATE outbox SET state = 'pending' WHERE output = ? AND state = 'parked' AND id = ?",
                    (self.output, id_),
                ).rowcount
            return count

    def set_portal_state(self, state: str, reason: str | None, now: datetime) -> None:
        """Record what the last attempt said of the output (``since`` moves only when the
        state changes)."""
        with self.store.transaction() as db:
            self._set_portal(db, state, reason, now)

    set_state = set_portal_state

    def _set_portal(
        self, db: sqlite3.Connection, state: str, reason: str | None, now: datetime, *, success: bool = False
    ) -> None:
        previous = PortalState.from_dict(self._get(db, "state", {}))
        since = previous.since if previous.state == state and previous.since else as_utc(now)
        current = PortalState(
            state,  # type: ignore[arg-type]
            reason,
            since,
            as_utc(now) if success else previous.last_success,
        )
        self._put(db, "state", current.to_dict())

    def note_outage(self) -> None:
        """A delivery attempt failed for a reason not the message's: when the queue next
        drains, a fresh snapshot is due (:meth:`take_outage`)."""
        with self.store.transaction() as db:
            self._put(db, "outage", True)

    def outage_noted(self) -> bool:
        """Whether an outage was noted and no snapshot has followed it yet."""
        return bool(self._meta("outage", False))

    def take_outage(self) -> bool:
        """Whether an outage was noted since the last call; clears the note."""
        with self.store.transaction() as db:
            outage = bool(self._get(db, "outage", False))
            if outage:
                self._put(db, "outage", False)
            return outage

    # ------------------------------------------------------------------ reading

    def _meta(self, name: str, default: Any = None) -> Any:
        rows = self.store.read("SELECT value FROM meta WHERE key = ?", (self._key(name),))
        return json.loads(rows[0][0]) if rows else default

    def messages(self, *, with_body: bool = False) -> list[QueuedMessage]:
        """Every queued message, in queue order (parked ones where they stand)."""
        body = ", body" if with_body else ""
        rows = self.store.read(
            f"SELECT {_COLUMNS}{body} FROM outbox WHERE output = ? ORDER BY id", (self.output,)
        )
        return [QueuedMessage._of(r[:-1], bytes(r[-1])) if with_body else QueuedMessage._of(r) for r in rows]

    def portal_state(self) -> PortalState:
        return PortalState.from_dict(self._meta("state", {}))

    def stats(self) -> OutboxStats:
        pending, parked, size, events, oldest = self.store.read(
            "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'parked'), 0), "
            "COALESCE(SUM(size), 0), COALESCE(SUM(events), 0), MIN(created_at) FROM outbox WHERE output = ?",
            (self.output,),
        )[0]
        cursor = self._meta("events_cursor")
        if not self.carries_events or (cursor is None and self.output != PORTAL):
            waiting = 0  # none are this output's yet (:meth:`_take_events`)
        else:
            waiting = int(
                self.store.read("SELECT COUNT(*) FROM events WHERE seq > ?", (int(cursor or 0),))[0][0]
            )
        last = self._meta("last_snapshot")
        return OutboxStats(
            pending=int(pending),
            parked=int(parked),
            bytes=int(size),
            events_queued=int(events),
            events_waiting=waiting,
            oldest=datetime.fromisoformat(oldest) if oldest else None,
            dropped_events=int(self._meta("dropped_events", 0)),
            dropped_messages=int(self._meta("dropped_messages", 0)),
            last_snapshot=datetime.fromisoformat(last["at"]) if last else None,
            portal=self.portal_state(),
            output=self.output,
        )

    def next_sequence(self) -> int:
        """The sequence the next queued message will carry (nothing is reserved)."""
        return int(self._meta("sequence", 0)) + 1

    def dropped_events(self) -> int:
        return int(self._meta("dropped_events", 0))


def discard_output(store: Store, output: str) -> int:
    """Drop everything ``store`` keeps for ``output`` (not the portal): its queued messages,
    the digests of its documents, its cursor, sequence, counters and state — for an output
    taken out of the configuration, whose cursor would otherwise keep events from being
    pruned. Returns how many messages went."""
    if output not in OUTPUTS or output == PORTAL:
        raise ValueError(f"only another output than the portal's can be discarded, not {output!r}")
    with store.transaction() as db:
        dropped = db.execute("DELETE FROM outbox WHERE output = ?", (output,)).rowcount
        db.execute("DELETE FROM output_items WHERE output = ?", (output,))
        db.execute("DELETE FROM meta WHERE key LIKE ? ESCAPE '\\'", (f"%:{output}",))
    return int(dropped)


def queued_outputs(store: Store) -> list[str]:
    """The outputs that have messages queued in ``store``, in :data:`OUTPUTS` order (an
    output no longer configured may still have some)."""
    found = {row[0] for row in store.read("SELECT DISTINCT output FROM outbox")}
    return [name for name in OUTPUTS if name in found]
