"""Change events from consecutive scans: a plain function of (what was known, what a scan
found, now).

Pure: nothing here reads the clock, a file or the network; :func:`diff_scan` takes ``now``
and an id factory, so a test gets the same events every time. The store
(:meth:`agent.store.Store.record_scan`) runs it inside the transaction that stores the scan.

Sightings
---------
The inventory keeps one device per identity, but what the agent *knows* of a unit is what
each source last said of it: a **sighting** is one source's latest report of the unit at
one address (room, firmware, health) with the number of that source's runs in a row that
did not see it (``missed``). Every rule below reads sightings, never compares one channel
with another channel's way of writing a version or judging health, so a daemon that runs
USB every minute and SNMP every ten does not flap between the two.

Rules
-----
* **Scope.** A scan names the sources that ran to completion (``scope``; a source that found
  something evidently ran). A sighting whose source is not in the scope is left exactly as it
  was: a scan that ran only SNMP never counts a USB unit as missed.
* **Missed and removed.** A sighting whose source ran but did not report the unit at that
  address gets ``missed + 1``; at ``remove_after`` it is dropped. A unit is
  ``device.removed`` when its last sighting is dropped, i.e. after ``remove_after`` runs in a
  row of every source that used to see it, so a flaky cable does not flap. Seeing the unit
  again before that resets the count.
* **Room.** The sightings *standing* (``missed == 0``) place the unit; missed ones only when
  no standing sighting does. While they disagree the previous room stays (and the serial is
  in conflict, below). A change of room is ``device.moved`` (S9: a product moved between
  rooms can move SELECT benefits with it, so every move is kept).
* **Firmware and health.** ``firmware.changed`` when a source reads a version (the unit's own
  or a component's) that differs from what the *same source* read before, both known;
  ``health.changed`` when the same source judges the health state (ok / warning / error)
  differently. An unknown reading is not a change.
* **Serial conflict.** A label-grade serial is in conflict when the standing sightings of the
  units carrying it name two products (two identities: the transports disagree on what the
  unit is) or two rooms. ``serial.conflict`` is emitted when a conflict appears or its set of
  (product, room) claims changes, not on every scan while it lasts; once it is resolved, a
  new appearance is reported again.

Events of one scan come in a stable order: by identity, then added/removed, moved, firmware,
health; serial conflicts last, by serial.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from agent.model import Device
from agent.sanitize import normalize_serial

#: How many runs in a row of every source that saw a unit must miss it before it is removed.
DEFAULT_REMOVE_AFTER = 3


class EventType(StrEnum):
    """What changed (the same words as the portal's ``roomsync.events.v1``)."""

    DEVICE_ADDED = "device.added"
    DEVICE_REMOVED = "device.removed"
    DEVICE_MOVED = "device.moved"
    FIRMWARE_CHANGED = "firmware.changed"
    HEALTH_CHANGED = "health.changed"
    SERIAL_CONFLICT = "serial.conflict"


def new_event_id() -> str:
    """A fresh random event id (UUID 4, as text)."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change of the inventory. ``room`` is the unit's room after the change (before it,
    for ``device.removed``); ``before``/``after`` hold the changed facts (``None`` when there
    were none: nothing before an add, nothing after a removal)."""

    id: str
    type: EventType
    at: datetime
    identity: str
    product: str
    serial: str | None
    room: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": str(self.type),
            "at": self.at.isoformat(),
            "identity": self.identity,
            "product": self.product,
            "serial": self.serial,
            "room": self.room,
            "before": self.before,
            "after": self.after,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChangeEvent:
        return cls(
            id=str(data["id"]),
            type=EventType(data["type"]),
            at=datetime.fromisoformat(data["at"]),
            identity=data["identity"],
            product=data["product"],
            serial=data.get("serial"),
            room=data.get("room"),
            before=data.get("before"),
            after=data.get("after"),
        )


@dataclass(frozen=True, slots=True)
class Sighting:
    """One source's latest report of a unit at one address."""

    source: str
    address: str
    room: str | None
    firmware: str | None
    components: Mapping[str, str]
    health: str
    issues: tuple[str, ...]
    seen_at: datetime
    #: Runs of ``source`` in a row that did not report the unit at ``address``.
    missed: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.address)

    @property
    def standing(self) -> bool:
        return self.missed == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "address": self.address,
            "room": self.room,
            "firmware": self.firmware,
            "components": dict(self.components),
            "health": self.health,
            "issues": list(self.issues),
            "seen_at": self.seen_at.isoformat(),
            "missed": self.missed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sighting:
        return cls(
            source=data["source"],
            address=data["address"],
            room=data.get("room"),
            firmware=data.get("firmware"),
            components=dict(data.get("components") or {}),
            health=data["health"],
            issues=tuple(data.get("issues") or ()),
            seen_at=datetime.fromisoformat(data["seen_at"]),
            missed=int(data.get("missed") or 0),
        )


def sources_of(device: Device) -> list[str]:
    """The sources that reported ``device`` (its transport's name for a device that does
    not say, such as one stored before sources were recorded)."""
    return list(dict.fromkeys(device.sources)) or [str(device.transport)]


def sightings_of(device: Device) -> tuple[Sighting, ...]:
    """What each source that reported ``device`` in this scan saw of it."""
    return tuple(
        Sighting(
            source=source,
            address=device.address,
            room=device.room,
            firmware=device.firmware,
            components=dict(device.components),
            health=str(device.health),
            issues=tuple(sorted({i.code for i in device.health_issues})),
            seen_at=device.last_seen,
        )
        for source in sources_of(device)
    )


@dataclass(frozen=True, slots=True)
class Tracked:
    """A unit in the inventory: the device as last stored, and its sightings."""

    device: Device
    sightings: tuple[Sighting, ...] = field(default=())

    @classmethod
    def of(cls, device: Device) -> Tracked:
        """A unit known only from ``device`` (every sighting standing)."""
        return cls(device, sightings_of(device))

    @property
    def missed(self) -> int:
        """Runs in a row the unit's best sighting was missed (0: seen in its last run)."""
        return min((s.missed for s in self.sightings), default=0)


@dataclass(frozen=True, slots=True)
class ScanDiff:
    """The outcome of one scan: its events, every unit in the inventory after it, and the
    units it removed (as they were last known)."""

    events: tuple[ChangeEvent, ...]
    inventory: dict[str, Tracked]
    removed: dict[str, Tracked]


def diff_scan(
    previous: Mapping[str, Tracked],
    current: Sequence[Device],
    now: datetime,
    *,
    scope: Collection[str] | None = None,
    remove_after: int = DEFAULT_REMOVE_AFTER,
    new_id: Callable[[], str] = new_event_id,
) -> ScanDiff:
    """Compare one scan's devices with the inventory before it (see the module's rules).

    ``previous`` is every unit in the inventory (removed ones excluded), by identity;
    ``current`` the devices the scan found (one identity may appear more than once, seen
    through several sources). ``scope`` names the sources that ran to completion (leave out
    one that failed as a whole); ``None`` takes only the sources that reported something,
    which never counts a miss a scan could not have seen.
    """
    if remove_after < 1:
        raise ValueError(f"remove_after must be at least 1, not {remove_after}")
    found = _by_identity(current)
    ran = frozenset(scope or ()) | {s for d in current for s in sources_of(d)}
    inventory: dict[str, Tracked] = {}
    removed: dict[str, Tracked] = {}
    events: list[ChangeEvent] = []
    for identity in sorted(previous.keys() | found.keys()):
        before = previous.get(identity)
        seen = found.get(identity, [])
        sightings = _advance(before.sightings if before else (), seen, ran, remove_after)
        if before is not None and not sightings:
            removed[identity] = replace(before, sightings=())
            events.append(
                _event(
                    EventType.DEVICE_REMOVED,
                    now,
                    new_id,
                    before.device,
                    before=_summary(before.device),
                    after=None,
                )
            )
            continue
        after = _next_state(before, seen, sightings)
        inventory[identity] = after
        events.extend(_unit_events(before, after, seen, now, new_id))
    events.extend(_conflict_events(previous, inventory, now, new_id))
    return ScanDiff(tuple(events), inventory, removed)


# --------------------------------------------------------------------------- sightings


def _by_identity(devices: Iterable[Device]) -> dict[str, list[Device]]:
    found: dict[str, list[Device]] = {}
    for device in devices:
        found.setdefault(device.identity, []).append(device)
    return found


def _advance(
    before: Iterable[Sighting], seen: Sequence[Device], ran: frozenset[str], remove_after: int
) -> tuple[Sighting, ...]:
    """The unit's sightings after the scan: what it reported now, the rest of what the
    sources that ran did not see counted as missed (dropped at ``remove_after``), and the
    sightings of sources that did not run left alone."""
    result: dict[tuple[str, str], Sighting] = {}
    for device in seen:
        for sighting in sightings_of(device):
            result.setdefault(sighting.key, sighting)
    for old in before:
        if old.key in result:
            continue
        if old.source not in ran:
            result[old.key] = old
        elif old.missed + 1 < remove_after:
            result[old.key] = replace(old, missed=old.missed + 1)
    return tuple(sorted(result.values(), key=lambda s: s.key))


def resolve_room(previous_room: str | None, sightings: Iterable[Sighting]) -> str | None:
    """The unit's room: the one its standing sightings place it in (the missed ones when no
    standing sighting places it); while they disagree, ``previous_room`` if one of them
    names it, else the first by name."""
    sightings = list(sightings)
    claims = _rooms(s for s in sightings if s.standing) or _rooms(sightings)
    if not claims:
        return None
    if previous_room in claims:
        return previous_room
    return min(claims)


def _rooms(sightings: Iterable[Sighting]) -> set[str]:
    return {s.room for s in sightings if s.room is not None}


def _next_state(before: Tracked | None, seen: Sequence[Device], sightings: tuple[Sighting, ...]) -> Tracked:
    """The unit as stored after the scan: the fullest of this scan's reports (the previous
    device when the scan did not see it), placed in the resolved room."""
    previous_room = before.device.room if before else None
    room = resolve_room(previous_room, sightings)
    if not seen:
        assert before is not None
        device = before.device if room == previous_room else _placed(before.device, room)
        return Tracked(device, sightings)
    device = _placed(max(seen, key=_fullness), room)
    device.sources = list(dict.fromkeys(s for d in seen for s in sources_of(d)))
    device.first_seen = min([d.first_seen for d in seen] + ([before.device.first_seen] if before else []))
    device.last_seen = max(d.last_seen for d in seen)
    return Tracked(device, sightings)


def _fullness(device: Device) -> tuple[bool, int, int, int]:
    return (device.firmware is not None, len(device.components), len(device.children), len(device.attributes))


def _placed(device: Device, room: str | None) -> Device:
    """A copy of ``device``, moved with its children to ``room`` if it stands elsewhere."""
    copy = Device.from_dict(device.to_dict())
    if copy.room != room:
        _set_room(copy, room)
    return copy


def _set_room(device: Device, room: str | None) -> None:
    device.room = room
    for child in device.children:
        _set_room(child, room)


# --------------------------------------------------------------------------- events of one unit


def _unit_events(
    before: Tracked | None, after: Tracked, seen: Sequence[Device], now: datetime, new_id: Callable[[], str]
) -> list[ChangeEvent]:
    if before is None:
        return [
            _event(
                EventType.DEVICE_ADDED, now, new_id, after.device, before=None, after=_summary(after.device)
            )
        ]
    events = []
    if after.device.room != before.device.room:
        # S9: moves between rooms are kept, every one of them.
        events.append(
            _event(
                EventType.DEVICE_MOVED,
                now,
                new_id,
                after.device,
                before={"room": before.device.room},
                after={"room": after.device.room},
            )
        )
    if seen:
        events.extend(_reading_events(before.sightings, after.sightings, after.device, now, new_id))
    return events


def _reading_events(
    before: Sequence[Sighting],
    after: Sequence[Sighting],
    device: Device,
    now: datetime,
    new_id: Callable[[], str],
) -> list[ChangeEvent]:
    """At most one ``firmware.changed`` and one ``health.changed`` per unit and scan: the
    first source (by name) whose reading changed."""
    firmware: ChangeEvent | None = None
    health: ChangeEvent | None = None
    for now_read in (s for s in after if s.standing):
        old = _earlier_reading(before, now_read)
        if old is None or old == now_read:
            continue
        if firmware is None and _firmware_changed(old, now_read):
            firmware = _event(
                EventType.FIRMWARE_CHANGED,
                now,
                new_id,
                device,
                before=_versions(old),
                after=_versions(now_read),
            )
        if health is None and old.health != now_read.health:
            health = _event(
                EventType.HEALTH_CHANGED, now, new_id, device, before=_health(old), after=_health(now_read)
            )
    return [e for e in (firmware, health) if e is not None]


def _earlier_reading(before: Sequence[Sighting], now_read: Sighting) -> Sighting | None:
    """What the same source said before: at the same address, else (the unit changed
    address) its freshest sighting at another."""
    same_source = [s for s in before if s.source == now_read.source]
    exact = [s for s in same_source if s.address == now_read.address]
    if exact:
        return exact[0]
    return min(same_source, key=lambda s: s.missed, default=None)


def _firmware_changed(old: Sighting, new: Sighting) -> bool:
    if old.firmware is not None and new.firmware is not None and old.firmware != new.firmware:
        return True
    return any(old.components[k] != new.components[k] for k in old.components.keys() & new.components.keys())


def _versions(sighting: Sighting) -> dict[str, Any]:
    return {"firmware": sighting.firmware, "components": dict(sighting.components), "source": sighting.source}


def _health(sighting: Sighting) -> dict[str, Any]:
    return {"health": sighting.health, "issues": list(sighting.issues), "source": sighting.source}


def _summary(device: Device) -> dict[str, Any]:
    return {
        "product": device.product,
        "room": device.room,
        "firmware": device.firmware,
        "health": str(device.health),
        "transport": str(device.transport),
        "address": device.address,
        "sources": sources_of(device),
        "last_seen": device.last_seen.isoformat(),
    }


def _event(
    kind: EventType,
    now: datetime,
    new_id: Callable[[], str],
    device: Device,
    *,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> ChangeEvent:
    return ChangeEvent(
        id=new_id(),
        type=kind,
        at=now,
        identity=device.identity,
        product=device.product,
        serial=device.serial,
        room=device.room,
        before=before,
        after=after,
    )


# --------------------------------------------------------------------------- serial conflicts


@dataclass(frozen=True, slots=True)
class Claim:
    """What one standing sighting says of a unit carrying a label-grade serial."""

    identity: str
    product: str
    room: str | None
    source: str
    address: str

    def sort_key(self) -> tuple[str, str, str, str, str]:
        return (self.identity, self.product, self.room or "", self.source, self.address)

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "product": self.product,
            "room": self.room,
            "source": self.source,
            "address": self.address,
        }


def serial_conflicts(inventory: Mapping[str, Tracked]) -> dict[str, list[Claim]]:
    """Label-grade serials whose standing sightings name two products or two rooms, with
    every claim (sorted), by serial in its compared form (:func:`normalize_serial`)."""
    claims: dict[str, list[Claim]] = {}
    for identity, unit in inventory.items():
        device = unit.device
        if not (device.serial and device.serial_label_grade):
            continue
        for s in unit.sightings:
            if s.standing:
                claims.setdefault(normalize_serial(device.serial), []).append(
                    Claim(identity, device.product, s.room, s.source, s.address)
                )
    return {serial: sorted(found, key=Claim.sort_key) for serial, found in claims.items() if _disagree(found)}


def _disagree(claims: Sequence[Claim]) -> bool:
    products = {c.product for c in claims}
    rooms = {c.room for c in claims if c.room is not None}
    return len(products) > 1 or len(rooms) > 1


def _signature(claims: Sequence[Claim]) -> frozenset[tuple[str, str | None]]:
    return frozenset((c.product, c.room) for c in claims)


def _conflict_events(
    previous: Mapping[str, Tracked],
    inventory: Mapping[str, Tracked],
    now: datetime,
    new_id: Callable[[], str],
) -> list[ChangeEvent]:
    """A ``serial.conflict`` for each conflict that appeared, or whose claims changed."""
    before = serial_conflicts(previous)
    events = []
    for serial, claims in sorted(serial_conflicts(inventory).items()):
        earlier = before.get(serial)
        if earlier is not None and _signature(earlier) == _signature(claims):
            continue
        first = inventory[claims[0].identity].device
        rooms = {c.room for c in claims}
        events.append(
            ChangeEvent(
                id=new_id(),
                type=EventType.SERIAL_CONFLICT,
                at=now,
                identity=first.identity,
                product=first.product,
                serial=first.serial,
                room=rooms.pop() if len(rooms) == 1 else None,
                before={"claims": [c.to_dict() for c in earlier]} if earlier is not None else None,
                after={"claims": [c.to_dict() for c in claims]},
            )
        )
    return events
