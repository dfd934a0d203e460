"""The inventory snapshot the portal gets: built from the store and the configuration.

One function for every caller — ``roomsync scan`` queueing it after a stored scan,
``roomsync push`` queueing a fresh one after an outage or when the daily one is due,
``roomsync export --format json`` printing it, and the daemon — so that what is exported is
what is pushed.

"Seen by the latest scan" (a unit's ``status``/``health``, docs/portal-api.md) is per source:
a unit counts as seen when some source that reports it saw it in that source's latest stored
run (``Store.latest_runs``). A ``roomsync scan --usb`` after a ``--snmp`` scan does not turn
the SNMP units ``Offline``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from agent.catalog import Catalog
from agent.coverage import (
    DEFAULT_EXPIRING_DAYS,
    URGENCY,
    CoverageUnit,
    RowVerdicts,
    Sighting,
    Verdict,
    coverage_units,
    evaluate_all,
)
from agent.entitlements import EntitlementRecord
from agent.events import sources_of
from agent.gcpause import paused_gc
from agent.inventory import merge_rooms, summarize_rooms
from agent.model import Device, Room, as_utc, utc_today
from agent.sanitize import normalize_serial
from agent.store import Store
from agent.support import SiteSupport, SupportSettings
from agent.uploader.outbox import Outbox
from agent.uploader.protocol import AgentInfo, InventoryMessage, inventory_chunks, inventory_message

__all__ = [
    "CoverageList",
    "SnapshotContext",
    "build_snapshot",
    "coverage_counts",
    "coverage_list",
    "paused_gc",
    "queue_snapshot",
    "seen_by_latest_runs",
    "snapshot_body",
    "snapshot_chunks",
    "unit_verdicts",
    "verdicts_for",
]


@dataclass(frozen=True, slots=True)
class SnapshotContext:
    """What the snapshot needs besides the store: the catalog, the rooms the configuration
    and the room map name, and the entitlement records (``None``: coverage not evaluated,
    sent as ``null``)."""

    catalog: Catalog
    rooms: tuple[Room, ...] = ()
    entitlements: Mapping[str, EntitlementRecord] | None = None
    expiring_days: int = DEFAULT_EXPIRING_DAYS
    #: ``[support]``: the desks, and the platform of each CollabOS ``serviceProvider``.
    support: SupportSettings = field(default_factory=SupportSettings)
    #: The day coverage is evaluated on; the snapshot's own day (UTC) when ``None``.
    today: date | None = field(default=None)
    #: Verdicts already worked out, for one day: a verdict depends only on the unit's serial
    #: and product, the records, the catalog and the day, all fixed for this context.
    _memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def verdict_memo(self, today: date) -> dict[tuple[str, str | None, date | None], Verdict]:
        """The verdicts worked out for ``today`` (a new day starts an empty memo)."""
        return self._day(today)[1]

    def row_verdicts(self, today: date) -> RowVerdicts | None:
        """The verdicts of the entitlement records as units no scan found, for ``today``
        (:class:`agent.coverage.RowVerdicts`, one per day); ``None`` without records."""
        if self.entitlements is None:
            return None
        kept = self._day(today)[2]
        if not kept:
            kept.append(RowVerdicts(self.entitlements, self.catalog, today, expiring_days=self.expiring_days))
        return kept[0]

    def _day(
        self, today: date
    ) -> tuple[date, dict[tuple[str, str | None, date | None], Verdict], list[RowVerdicts]]:
        """What is remembered for ``today``: one entry, replaced whole on a new day (the API's
        thread and the daemon's may ask at once: neither sees half of another's)."""
        day = self._memo.get("day")
        if day is None or day[0] != today:
            day = self._memo["day"] = (today, {}, [])
        return day  # type: ignore[no-any-return]


def unit_verdicts(units: Sequence[CoverageUnit], context: SnapshotContext, today: date) -> list[Verdict]:
    """The verdict of each of ``units`` (:func:`agent.coverage.coverage_units`) on ``today``,
    in order; worked out once per (serial, product) and day for this context. Empty when the
    context has no entitlement records (coverage not evaluated)."""
    if context.entitlements is None:
        return []
    memo = context.verdict_memo(today)
    keys = [(normalize_serial(unit.serial), unit.product, unit.first_seen) for unit in units]
    missing = {key: unit for key, unit in zip(keys, units, strict=True) if key not in memo}
    if missing:
        found = evaluate_all(
            [(unit.serial, unit.product) for unit in missing.values()],
            context.entitlements,
            context.catalog,
            today,
            expiring_days=context.expiring_days,
            sightings={
                key[0]: sighting for key, unit in missing.items() if (sighting := unit.sighting) is not None
            },
        )
        memo.update(zip(missing, found, strict=True))
    return [memo[key] for key in keys]


def verdicts_for(devices: Iterable[Device], context: SnapshotContext, today: date) -> dict[str, Verdict]:
    """Coverage verdicts by (normalised) serial of every unit with a serial, children too —
    what the snapshot attaches to its devices. (The entitlement records no unit has are
    :class:`CoverageList`'s and :func:`coverage_counts`'s: there may be millions.)"""
    if context.entitlements is None:
        return {}
    units = coverage_units(devices)
    verdicts = unit_verdicts(units, context, today)
    return {normalize_serial(unit.serial): verdict for unit, verdict in zip(units, verdicts, strict=True)}


@dataclass(frozen=True, slots=True)
class CoverageList:
    """Every unit ``roomsync coverage`` and ``/v1/coverage`` list, in their order: the
    inventory's units with a serial (:func:`agent.coverage.coverage_units`) and their
    verdicts, then the entitlement records no unit has, in the file's order, their verdicts
    worked out as they are listed (``rows``, but the records of ``keys``)."""

    units: list[CoverageUnit]
    verdicts: list[Verdict]
    #: The inventory's units' normalised serials: the records listed among them, not again.
    keys: frozenset[str]
    rows: RowVerdicts
    #: Units scans found once that are no longer in the inventory, by normalised serial: a
    #: record of theirs is verified (W9).
    seen: Mapping[str, Sighting] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """How many units are listed."""
        records = self.rows.records
        return len(self.units) + len(records) - sum(1 for key in self.keys if key in records)

    def counts(self) -> dict[str, int]:
        """Units per coverage status, every status listed: the ``roomsync_coverage_units``
        metric and ``roomsync coverage --summary``'s counts, without a verdict held per record."""
        counts = {str(status): 0 for status in URGENCY}
        for verdict in self.verdicts:
            counts[verdict.status] += 1
        for status, count in self.rows.counts(skip=self.keys).items():
            counts[status] += count
        return counts

    def flag_counts(self, flags: Iterable[str]) -> dict[str, int]:
        """How many listed units carry each of ``flags`` (every one listed, 0 included): the
        inventory's units and every record no scan found."""
        counts = dict.fromkeys(flags, 0)
        rows = self.rows.flag_counts(skip=self.keys, seen=self.seen)
        for flag in counts:
            counts[flag] = rows.get(flag, 0) + sum(1 for verdict in self.verdicts if flag in verdict.flags)
        return counts


def coverage_list(
    devices: Iterable[Device], context: SnapshotContext, today: date, removed: Iterable[Device] = ()
) -> CoverageList | None:
    """:class:`CoverageList` for the inventory's ``devices`` on ``today``; ``None`` when
    coverage is not evaluated (no entitlement records). ``removed`` are the units that left
    the inventory (``Store.devices(removed=True)``): scans found them once (W9)."""
    rows = context.row_verdicts(today)
    if rows is None:
        return None
    units = coverage_units(devices)
    keys = frozenset(normalize_serial(unit.serial) for unit in units)
    return CoverageList(
        units,
        unit_verdicts(units, context, today),
        keys,
        rows,
        sightings(removed, skip=keys),
    )


def sightings(devices: Iterable[Device], *, skip: Collection[str] = ()) -> dict[str, Sighting]:
    """Each unit of ``devices`` (children too) with a serial, by normalised serial but those in
    ``skip``: when a scan first found it and its product (W9)."""
    return {
        normalize_serial(unit.serial): sighting
        for unit in coverage_units(devices)
        if normalize_serial(unit.serial) not in skip and (sighting := unit.sighting) is not None
    }


def coverage_counts(devices: Iterable[Device], context: SnapshotContext, today: date) -> dict[str, int]:
    """:meth:`CoverageList.counts`; empty when coverage is not evaluated."""
    listed = coverage_list(devices, context, today)
    return {} if listed is None else listed.counts()


def build_snapshot(
    store: Store,
    context: SnapshotContext,
    agent: AgentInfo,
    sequence: int,
    now: datetime,
    dropped_events: int = 0,
) -> InventoryMessage:
    """The ``roomsync.inventory.v1`` message for what the store holds now."""
    with paused_gc():
        return inventory_message(agent, sequence, now, **_parts(store, context, now, dropped_events))


def snapshot_body(
    store: Store,
    context: SnapshotContext,
    agent: AgentInfo,
    sequence: int,
    now: datetime,
    dropped_events: int = 0,
) -> bytes:
    """``serialize(build_snapshot(...))`` — the same bytes — made place by place
    (:func:`snapshot_chunks`, joined)."""
    with paused_gc():
        return b"".join(snapshot_chunks(store, context, agent, sequence, now, dropped_events))


def snapshot_chunks(
    store: Store,
    context: SnapshotContext,
    agent: AgentInfo,
    sequence: int,
    now: datetime,
    dropped_events: int = 0,
) -> Iterator[bytes]:
    """The bytes of the snapshot in pieces, place by place
    (:func:`agent.uploader.protocol.inventory_chunks`): what the outbox hashes and compresses
    as they come, without the whole message held as models or as bytes. (The consumer pauses
    the cyclic collector around the whole of it: a generator suspended with it paused could
    leave it off.)"""
    yield from inventory_chunks(agent, sequence, now, **_parts(store, context, now, dropped_events))


def _parts(store: Store, context: SnapshotContext, now: datetime, dropped_events: int) -> dict[str, Any]:
    """The arguments of a snapshot besides its agent, sequence and time."""
    devices = store.devices()
    report = summarize_rooms(devices, context.catalog, merge_rooms(store.rooms(), context.rooms))
    runs = {name: as_utc(at) for name, at in store.latest_runs().items()}
    today = context.today or utc_today(now)
    verdicts = verdicts_for(devices, context, today)

    answers: dict[int, bool] = {}  # asked twice a unit: for its fields and for its support

    def seen(device: Device) -> bool:
        answer = answers.get(id(device))
        if answer is None:
            answer = answers[id(device)] = seen_by_latest_runs(device, runs)
        return answer

    supports = SiteSupport(
        report,
        verdicts,
        context.entitlements,
        catalog=context.catalog,
        today=today,
        seen=seen,
        settings=context.support,
    )
    return {
        "report": report,
        "verdicts": verdicts,
        "seen": seen,
        "supports": supports,
        "dropped_events": dropped_events,
    }


def queue_snapshot(
    outbox: Outbox, store: Store, context: SnapshotContext, now: datetime, *, force: bool = False
) -> bool:
    """Queue the snapshot of what ``store`` holds now in ``outbox`` (see
    :meth:`Outbox.queue_snapshot` for when it is skipped); returns whether one was queued."""
    return outbox.queue_snapshot(
        lambda sequence, at, dropped: snapshot_chunks(store, context, outbox.agent, sequence, at, dropped),
        now,
        force=force,
    )


def seen_by_latest_runs(device: Device, runs: Mapping[str, datetime]) -> bool:
    """Whether some source that reports ``device`` saw it in that source's latest run
    (``runs``: ``Store.latest_runs()``)."""
    last_seen = as_utc(device.last_seen)
    return any(name in runs and last_seen >= as_utc(runs[name]) for name in sources_of(device))
