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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from agent.catalog import Catalog
from agent.coverage import DEFAULT_EXPIRING_DAYS, Verdict, evaluate_all
from agent.entitlements import EntitlementRecord
from agent.events import sources_of
from agent.inventory import summarize_rooms
from agent.model import Device, Room
from agent.sanitize import normalize_serial
from agent.store import Store
from agent.systems import units
from agent.uploader.protocol import AgentInfo, InventoryMessage, inventory_message

__all__ = ["SnapshotContext", "build_snapshot", "seen_by_latest_runs", "verdicts_for"]


@dataclass(frozen=True, slots=True)
class SnapshotContext:
    """What the snapshot needs besides the store: the catalog, the rooms the configuration
    and the room map name, and the entitlement records (``None``: coverage not evaluated,
    sent as ``null``)."""

    catalog: Catalog
    rooms: tuple[Room, ...] = ()
    entitlements: Mapping[str, EntitlementRecord] | None = None
    expiring_days: int = DEFAULT_EXPIRING_DAYS
    #: The day coverage is evaluated on; the snapshot's own day (UTC) when ``None``.
    today: date | None = field(default=None)


def verdicts_for(devices: Iterable[Device], context: SnapshotContext, today: date) -> dict[str, Verdict]:
    """Coverage verdicts of every unit with a serial (children too), by serial."""
    if context.entitlements is None:
        return {}
    serials: dict[str, tuple[str, str | None]] = {}
    for device in units(devices):
        if device.serial:
            serials.setdefault(normalize_serial(device.serial), (device.serial, device.product))
    found = evaluate_all(list(serials.values()), context.entitlements, context.catalog, today,
                         expiring_days=context.expiring_days)
    return {serial: verdict for (serial, _), verdict in zip(serials.values(), found, strict=True)}


def build_snapshot(store: Store, context: SnapshotContext, agent: AgentInfo, sequence: int,
                   now: datetime, dropped_events: int = 0) -> InventoryMessage:
    """The ``roomsync.inventory.v1`` message for what the store holds now."""
    devices = store.devices()
    rooms = {r.id: r for r in store.rooms()}
    rooms.update({r.id: r for r in context.rooms})
    report = summarize_rooms(devices, context.catalog, rooms.values())
    runs = store.latest_runs()
    today = context.today or _utc(now).date()
    return inventory_message(agent, sequence, now, report, verdicts_for(devices, context, today),
                             seen=lambda device: seen_by_latest_runs(device, runs),
                             dropped_events=dropped_events)


def seen_by_latest_runs(device: Device, runs: Mapping[str, datetime]) -> bool:
    """Whether some source that reports ``device`` saw it in that source's latest run
    (``runs``: ``Store.latest_runs()``)."""
    last_seen = _utc(device.last_seen)
    return any(name in runs and last_seen >= _utc(runs[name]) for name in sources_of(device))


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
