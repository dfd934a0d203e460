"""Change events from consecutive scans: a plain function of (what was known, what a scan
found, now).

Pure: nothing here reads the clock, a file or the network; :func:`diff_scan` takes ``now``
and an id factory, so a test gets the same events every time. The store
(:meth:`agent.store.Store.record_scan`) runs it inside the transaction that stores the scan.

Sightings
---------
The inventory keeps one unit per identity, but what the agent *knows* of a unit is what each
channel last said of it: a **sighting** is one channel's (source and address) latest report
of the unit — its reading, with the number of that source's runs in a row that did not see it
(``missed``). A scan's readings and every stored sighting are grouped into units by the rules
of :mod:`agent.identity` (docs/identity.md); each unit's device is the merge of its
sightings, so a daemon that runs USB every minute and mDNS every ten keeps one record of a
bar both see, with both channels in ``seen_by``.

Rules
-----
* **Scope.** A scan names the sources that ran to completion (``scope``; a source that found
  something evidently ran). A sighting whose source is not in the scope is left exactly as it
  was: a scan that ran only SNMP never counts a USB unit as missed. So is a sighting made at
  or through a target its source could not read this run (``unreached``: a CollabOS device
  that refused the agent, a room PC that did not answer): a refusal is not an absence.
* **Missed and removed.** A sighting whose source ran but did not report the unit on that
  channel gets ``missed + 1``; at ``remove_after`` it is dropped. A unit is
  ``device.removed`` when its last sighting is dropped, i.e. after ``remove_after`` runs in a
  row of every source that used to see it, so a flaky cable does not flap. Seeing the unit
  again before that resets the count. A new reading continues the unit its channel or its
  identity keys point to, even the scan that drops its last sighting (a bar moved from USB to
  the LAN keeps its identity and ``first_seen``).
* **Identity.** A unit keeps the identity it was first recorded under. Where a new reading
  shows two stored units to be one, the one known by the unit's serial survives (else the
  oldest) and the other is ``device.removed`` with ``after = {"merged_into": identity}``.
  Stored units are never merged by what the store remembers alone.
* **Room.** The sightings *standing* (``missed == 0``) place the unit; missed ones only when
  no standing sighting does. While they disagree the previous room stays (and the serial is
  in conflict, below). A change of room is ``device.moved`` (S9: a product moved between
  rooms can move SELECT benefits with it, so every move is kept).
* **Firmware and health.** ``firmware.changed`` when the channel the unit's firmware comes
  from (the most trustworthy one) reads a version — the unit's own or a component's — that
  differs from what *that channel* read before, both known: channels are never compared with
  one another's way of writing a version, and a less trusted channel never moves it.
  ``health.changed`` when the unit's health state (ok / warning / error) changes in a scan
  that saw it. A firmware or model disagreement between channels is a warning that stays
  while the disagreeing value was read in the channel's last ``remove_after`` runs, so a
  channel that flips its answer raises it once.
* **Serial conflict.** A label-grade serial is in conflict when two units carry it (two
  products, or two hosts one source put it on), counting every sighting the inventory keeps,
  or when its standing sightings place it in two rooms. ``serial.conflict`` is emitted when
  a conflict appears or its set of (identity, product, room) claims changes, not on every
  scan while it lasts; once it is resolved, a new appearance is reported again.

Events of one scan come in a stable order: by identity, then added/removed, moved, firmware,
health; serial conflicts last, by serial.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from agent.gcpause import paused_gc
from agent.identity import (
    MergeRules,
    Reading,
    ReadingKeys,
    content_order,
    group_readings,
    key_strings,
    merge_group,
    one_per_channel,
    reading_keys,
    remember,
    serial_key,
    source_of,
    unique_identity,
)
from agent.model import (
    Device,
    Disagreement,
    FactSource,
    SeenBy,
    as_utc,
    facts_key,
    shared_text,
    stored_moment,
)
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
    #: Everything the channel reported (a single-channel device); ``None`` for a sighting
    #: stored before readings were (the unit's device stands in for it).
    reading: Device | None = field(default=None, compare=False)
    #: Other values the channel gave the firmware and product in its previous runs, with
    #: how many runs ago (:attr:`agent.identity.Reading.recent`).
    recent: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.address)

    @property
    def standing(self) -> bool:
        return self.missed == 0

    def to_dict(self) -> dict[str, Any]:
        data = {
            "source": self.source,
            "address": self.address,
            "room": self.room,
            "firmware": self.firmware,
            "components": dict(self.components),
            "health": self.health,
            "issues": list(self.issues),
            "seen_at": self.seen_at.isoformat(),
            "missed": self.missed,
            "recent": {fact: dict(values) for fact, values in self.recent.items()},
        }
        if self.reading is not None:
            data["reading"] = self.reading.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sighting:
        reading = data.get("reading")
        return cls(
            source=shared_text(data["source"]),
            address=shared_text(data["address"]),
            room=shared_text(data.get("room")),
            firmware=shared_text(data.get("firmware")),
            components={shared_text(k): shared_text(v) for k, v in (data.get("components") or {}).items()},
            health=shared_text(data["health"]),
            issues=tuple(shared_text(i) for i in data.get("issues") or ()),
            seen_at=stored_moment(data["seen_at"]),
            missed=int(data.get("missed") or 0),
            reading=Device.from_dict(reading) if reading else None,
            recent={
                str(fact): {str(v): int(age) for v, age in values.items()}
                for fact, values in (data.get("recent") or {}).items()
            },
        )

    def reading_or(self, device: Device) -> Device:
        """What the channel reported: its reading, else (stored before readings were) the
        unit's device as this channel last saw it."""
        if self.reading is not None:
            return self.reading
        stand_in = device.clone()
        stand_in.address = self.address
        stand_in.sources = [self.source]
        stand_in.firmware = self.firmware
        stand_in.components = dict(self.components)
        stand_in.room = self.room
        stand_in.last_seen = self.seen_at
        stand_in.seen_by, stand_in.provenance, stand_in.disagreements = [], {}, []
        stand_in.assigned_identity = None
        return stand_in


def sources_of(device: Device) -> list[str]:
    """The sources that reported ``device`` (its transport's name for a device that does
    not say, such as one stored before sources were recorded)."""
    return list(dict.fromkeys(device.sources)) or [str(device.transport)]


def sightings_of(device: Device) -> tuple[Sighting, ...]:
    """What each source that reported ``device`` saw of it (a unit stored before sightings
    were: every source at the device's address)."""
    return tuple(sighting_of(device, source=source) for source in sources_of(device))


def sighting_of(
    reading: Device,
    *,
    source: str | None = None,
    missed: int = 0,
    recent: Mapping[str, Mapping[str, int]] | None = None,
    keep_reading: bool = False,
) -> Sighting:
    """The sighting one channel's ``reading`` makes."""
    return Sighting(
        source=source or source_of(reading),
        address=reading.address,
        room=reading.room,
        firmware=reading.firmware,
        components=dict(reading.components),
        health=str(reading.health),
        issues=tuple(sorted({i.code for i in reading.health_issues})),
        seen_at=reading.last_seen,
        missed=missed,
        reading=reading if keep_reading else None,
        recent={fact: dict(values) for fact, values in (recent or {}).items()},
    )


@dataclass(frozen=True, slots=True, eq=False)
class Tracked:
    """A unit in the inventory: its device, and its sightings.

    A unit a scan carries over unchanged (:func:`_diff_with_settled`) only has its times
    moved: it keeps the device it had (``stored``) and the instant it was last seen (``at``),
    and :attr:`device` is that device retimed, made when first asked for and then kept. A
    site's unchanged re-scan so costs no copy of its units until something reads them; a
    scan that finds them again retimes ``stored`` at its own instant (retiming twice is
    retiming once at the later instant)."""

    #: The unit's device; when ``at`` is set, with its times as they were before ``at``
    #: (every fact but the times is the unit's).
    stored: Device
    sightings: tuple[Sighting, ...] = field(default=())
    #: Every grouping key of its sightings (:func:`agent.identity.key_strings`): a scan
    #: leaves a unit alone when none of its readings shares one and none of its sources ran.
    #: Worked out when first needed, then carried along.
    keys: frozenset[str] | None = None
    #: The instant :attr:`device` is retimed at, until it is made (``None``: ``stored`` is it).
    at: datetime | None = None

    @classmethod
    def of(cls, device: Device) -> Tracked:
        """A unit known only from ``device`` (every sighting standing)."""
        return cls(device, sightings_of(device))

    @property
    def device(self) -> Device:
        """The unit's device as last stored, made once when retimed. The store's threads
        (the writer, the loop's connection, the API's reader) may ask at once: the device is
        made under one lock, ``stored`` replaced before ``at`` is cleared, and ``at`` read
        first, so no reader takes the old times for new. Read it, never change it: the next
        scan's unit may share it."""
        at = self.at
        if at is None:
            return self.stored
        with _RETIMING:
            if self.at is None:  # another thread made it meanwhile
                return self.stored
            made = _retimed(self.stored, at, top=True)
            object.__setattr__(self, "stored", made)
            object.__setattr__(self, "at", None)
        return made

    def replaced(
        self, *, sightings: tuple[Sighting, ...] | None = None, keys: frozenset[str] | None = None
    ) -> Tracked:
        """This unit with ``sightings`` or ``keys`` (those given) changed (``dataclasses.replace`` reads
        ``stored`` before ``at``: while another thread makes the device, it could pair the old
        times with no instant). Still retimed when read, as this one."""
        at = self.at
        if at is None:
            stored = self.stored
        else:
            with _RETIMING:
                stored, at = self.stored, self.at
        return Tracked(
            stored,
            self.sightings if sightings is None else sightings,
            self.keys if keys is None else keys,
            at,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tracked):
            return NotImplemented
        return self.sightings == other.sightings and self.device == other.device

    __hash__ = None  # type: ignore[assignment]

    @property
    def missed(self) -> int:
        """Runs in a row the unit's best sighting was missed (0: seen in its last run)."""
        return min((s.missed for s in self.sightings), default=0)


@dataclass(frozen=True, slots=True)
class ScanDiff:
    """The outcome of one scan: its events, every unit in the inventory after it, the units
    it removed (as they were last known), the units found to be another unit's record
    (``merged``: identity -> the identity they joined) and, for each reading of the scan, the
    identity of the unit it joined."""

    events: tuple[ChangeEvent, ...]
    inventory: dict[str, Tracked]
    removed: dict[str, Tracked]
    merged: dict[str, str] = field(default_factory=dict)
    placed: tuple[str, ...] = ()
    #: The units carried over with only their times moved on (``known``): their facts are
    #: as they were.
    settled: frozenset[str] = frozenset()


def diff_scan(
    previous: Mapping[str, Tracked],
    current: Sequence[Device],
    now: datetime,
    *,
    scope: Collection[str] | None = None,
    remove_after: int = DEFAULT_REMOVE_AFTER,
    new_id: Callable[[], str] = new_event_id,
    rules: MergeRules | None = None,
    incremental: bool = True,
    unreached: Mapping[str, Collection[str]] | None = None,
    known: Mapping[Channel, tuple[str, Any]] | None = None,
    facts: Sequence[Any] | None = None,
) -> ScanDiff:
    """Compare one scan's readings with the inventory before it (see the module's rules).

    ``previous`` is every unit in the inventory (removed ones excluded), by identity;
    ``current`` the scan's readings: one device per channel, as its source reported it
    (:mod:`agent.identity` groups them, with what the inventory remembers, into units).
    ``scope`` names the sources that ran to completion (leave out one that failed as a
    whole); ``None`` takes only the sources that reported something, which never counts a
    miss a scan could not have seen. ``unreached`` names, by source, the targets a source that
    ran could not read (a device that refused or did not answer): what was seen at or through
    them is left as it was, as for a source that did not run (:func:`behind`).

    ``known`` (with ``facts``: :func:`reading_facts` of each reading) is what the previous
    diffs of this process said of each channel: the unit its reading joined and that
    reading's facts. A unit every channel of which reads as it did, alone, is carried over
    with only its times moved on (:func:`_settle`), without grouping or merging: what the
    full diff would make of it, at a fraction of the cost.
    """
    if remove_after < 1:
        raise ValueError(f"remove_after must be at least 1, not {remove_after}")
    if known and facts is not None and incremental:
        settled = _settle(previous, current, facts, known)
        if settled is not None and settled.units:
            return _diff_with_settled(
                settled, previous, current, now, scope, remove_after, new_id, rules, unreached
            )
    return _diff(previous, current, now, scope, remove_after, new_id, rules, incremental, unreached)


def _diff(
    previous: Mapping[str, Tracked],
    current: Sequence[Device],
    now: datetime,
    scope: Collection[str] | None,
    remove_after: int,
    new_id: Callable[[], str],
    rules: MergeRules | None,
    incremental: bool,
    unreached: Mapping[str, Collection[str]] | None,
    taken: frozenset[str] = frozenset(),
) -> ScanDiff:
    # A disagreement is remembered as long as a missed sighting is: remove_after runs.
    rules = replace(rules or MergeRules(), remember_runs=remove_after)
    ran = frozenset(scope or ()) | {s for d in current for s in sources_of(d)}
    reported = {(source_of(d), d.address) for d in current}
    state = _Assembly(previous, now, new_id, rules, remove_after, reported, taken)
    placed = [""] * len(current)
    with paused_gc():  # a site's scan is a burst of short-lived objects (agent/gcpause.py)
        involved = _involved(previous, current, ran, state) if incremental else previous
        state.involved = set(involved) if incremental else None
        pool, origins = _pool(involved, current, ran, remove_after, unreached or {})
        keys = reading_keys(pool)
        groups = group_readings(pool, keys)
        for group in sorted(groups, key=lambda g: _group_order(pool, g)):
            identity = state.assemble(
                [pool[i] for i in group], [origins[i] for i in group], [keys[i] for i in group]
            )
            for i in group:
                if origins[i] is None and identity is not None:
                    placed[i] = identity
        state.finish()
    return ScanDiff(tuple(state.events), state.inventory, state.removed, state.merged, tuple(placed))


# --------------------------------------------------------------------------- settled units

Channel = tuple[str, str]
"""A channel: (source, address)."""


def reading_facts(reading: Device) -> Any:
    """What a reading says, times aside (:func:`agent.model.facts_key`): a channel that
    reads the same facts again found its unit as it was."""
    return facts_key(reading, top=False)


def learn_channels(
    known: dict[Channel, tuple[str, Any]],
    readings: Sequence[Device],
    facts: Sequence[Any],
    placed: Sequence[str],
) -> None:
    """Update ``known`` (``diff_scan``'s) with what a stored diff's readings said and the unit
    each joined. A channel read more than once in the scan is forgotten: which of its readings
    its unit kept is the merge's business."""
    channels = [(source_of(d), d.address) for d in readings]
    twice = {c for c, count in Counter(channels).items() if count > 1}
    for channel, fact, identity in zip(channels, facts, placed, strict=True):
        if channel in twice or not identity:
            known.pop(channel, None)
        else:
            known[channel] = (identity, fact)


@dataclass(slots=True)
class _Settled:
    """The units a scan leaves as they were but for their times, and the rest of it."""

    at: datetime
    #: identity -> {channel: index of its reading in the scan}
    units: dict[str, dict[Channel, int]]
    rest: list[int]


def _at(device: Device, at: datetime) -> bool:
    """Whether ``device`` and everything read through it were read at the instant ``at``."""
    if device.first_seen is at and device.last_seen is at and not device.children:
        return True  # the scan's own clock reading, as sources stamp their readings
    return (
        device.first_seen == at
        and device.last_seen == at
        and device.last_seen.utcoffset() == at.utcoffset()
        and device.first_seen.utcoffset() == at.utcoffset()
        and all(_at(child, at) for child in device.children)
    )


def _settle(
    previous: Mapping[str, Tracked],
    current: Sequence[Device],
    facts: Sequence[Any],
    known: Mapping[Channel, tuple[str, Any]],
) -> _Settled | None:
    """The units of ``previous`` that this scan finds exactly as the last one did, alone.

    A unit is settled when every one of its sightings is standing (never missed) with nothing
    remembered (``recent``) and all were made at one instant, each is re-read by exactly one
    reading of the scan with the facts its channel last read (``known``) for this very unit,
    no other reading joins it, its grouping keys are its own (no other unit and no unsettled
    reading shares one), its serial is no other unit's or unsettled reading's, and every
    reading of the scan was made at one instant (then the full diff would merge the same
    readings the same way and give it exactly that instant everywhere). A unit of several
    sources settles only in a scan that runs all of them; a scan that reads a channel twice
    settles nothing. ``None`` when
    the scan cannot be settled at all (readings of several instants, units without keys).
    """
    if not current or len(facts) != len(current):
        return None
    at = current[0].last_seen
    if not all(_at(d, at) for d in current):
        return None
    if any(u.keys is None for u in previous.values()):
        return None
    channels = [(source_of(d), d.address) for d in current]
    if len(set(channels)) != len(channels):
        return None  # a channel read twice in one scan: grouping gives its readings more keys
    matched: dict[str, dict[Channel, int]] = {}
    for i, channel in enumerate(channels):
        entry = known.get(channel)
        if entry is not None and entry[1] == facts[i]:
            matched.setdefault(entry[0], {})[channel] = i
    if not matched:
        return None
    owners = Counter([(s.source, s.address) for u in previous.values() for s in u.sightings])
    key_owners = Counter([k for u in previous.values() for k in u.keys or ()])
    serial_of = {identity: _label_serial(unit) for identity, unit in previous.items()}
    serial_owners = Counter(serial_of.values())
    units: dict[str, dict[Channel, int]] = {}
    moment = as_utc(at)
    for identity, found in matched.items():
        unit = previous.get(identity)
        if unit is None or len(found) != len(unit.sightings):
            continue
        # (``stored``: a unit's first sighting is not retimed)
        if as_utc(unit.stored.first_seen) >= moment:  # the merge keeps the new offset on a tie
            continue
        if not _settled_sightings(unit.sightings, found, owners):
            continue
        if any(key_owners[k] != 1 for k in unit.keys or ()):
            continue
        serial = serial_of[identity]
        if serial is not None and serial_owners[serial] != 1:
            continue
        units[identity] = found
    # What the readings left to the full diff share with a settled unit unsettles it; its
    # readings then join the rest, which may unsettle others.
    taken = {i for found in units.values() for i in found.values()}
    rest = [i for i in range(len(current)) if i not in taken]
    checked = 0
    keys: set[str] = set()
    serials: set[str] = set()
    identities: set[str] = set()
    while units and checked < len(rest):
        fresh = [current[i] for i in rest[checked:]]
        checked = len(rest)
        for k in reading_keys([Reading(d) for d in fresh]):
            keys |= key_strings(k)
        serials |= {normalize_serial(d.serial) for d in fresh if d.serial and d.serial_label_grade}
        identities |= {d.derived_identity for d in fresh}
        unsettled = [
            identity
            for identity in units
            if not keys.isdisjoint(previous[identity].keys or ())
            or _label_serial(previous[identity]) in serials
            or identity in identities
        ]
        for identity in unsettled:
            rest.extend(units.pop(identity).values())
    rest.sort()
    return _Settled(at, units, rest)


def _settled_sightings(
    sightings: Sequence[Sighting], found: Mapping[Channel, int], owners: Mapping[Channel, int]
) -> bool:
    """Every sighting standing, with nothing remembered, re-read by the scan, its channel no
    other unit's, and all made at one instant (which channel's word wins can turn on which
    reading is newest)."""
    first = sightings[0].seen_at
    offset = first.utcoffset()
    for sighting in sightings:
        key = (sighting.source, sighting.address)
        if (
            sighting.missed
            or sighting.recent
            or key not in found
            or owners[key] != 1
            or sighting.seen_at != first
            or sighting.seen_at.utcoffset() != offset
        ):
            return False
    return True


def _diff_with_settled(
    settled: _Settled,
    previous: Mapping[str, Tracked],
    current: Sequence[Device],
    now: datetime,
    scope: Collection[str] | None,
    remove_after: int,
    new_id: Callable[[], str],
    rules: MergeRules | None,
    unreached: Mapping[str, Collection[str]] | None,
) -> ScanDiff:
    """The full diff of the scan's other readings and units, with the settled units carried
    over at the scan's instant."""
    ran = frozenset(scope or ()) | {s for d in current for s in sources_of(d)}
    rest = _diff(
        {k: u for k, u in previous.items() if k not in settled.units},
        [current[i] for i in settled.rest],
        now,
        ran,
        remove_after,
        new_id,
        rules,
        True,
        unreached,
        frozenset(settled.units),
    )
    inventory = dict(rest.inventory)
    placed = [""] * len(current)
    for index, identity in zip(settled.rest, rest.placed, strict=True):
        placed[index] = identity
    at = settled.at
    for identity, found in settled.units.items():
        unit = previous[identity]
        inventory[identity] = Tracked(
            unit.stored,  # retimed at ``at`` when read (Tracked.device)
            tuple(
                # As sighting_of makes it of the channel's new reading (replace() costs more).
                Sighting(
                    s.source,
                    s.address,
                    s.room,
                    s.firmware,
                    s.components,
                    s.health,
                    s.issues,
                    at,
                    0,
                    current[found[s.key]] if s.reading is not None else None,
                    s.recent,
                )
                for s in unit.sightings
            ),
            unit.keys,
            at,
        )
        for index in found.values():
            placed[index] = identity
    return ScanDiff(
        rest.events, inventory, rest.removed, rest.merged, tuple(placed), frozenset(settled.units)
    )


_new_tuple = tuple.__new__
#: Held while a carried-over unit's device is made (Tracked.device): once for all units, as
#: making one takes microseconds.
_RETIMING = threading.Lock()


def _retimed(device: Device, at: datetime, *, top: bool) -> Device:
    """``device`` as a merge of readings made at ``at`` makes it (its containers shared)."""
    copy = device.shallow_copy()
    copy.last_seen = at
    if not top:
        copy.first_seen = at
    # Built as tuples (NamedTuple's own constructor and _replace cost several times more; a
    # site's re-scan retimes every unit).
    when = (at,)
    copy.seen_by = [_new_tuple(SeenBy, s[:4] + when + s[5:]) for s in device.seen_by]
    copy.provenance = {
        fact: _new_tuple(FactSource, value[:5] + when) for fact, value in device.provenance.items()
    }
    copy.disagreements = [
        Disagreement(d.fact, tuple(_new_tuple(FactSource, v[:5] + when) for v in d.values))
        for d in device.disagreements
    ]
    copy.children = [_retimed(child, at, top=False) for child in device.children]
    return copy


# --------------------------------------------------------------------------- the readings pool


def _involved(
    previous: Mapping[str, Tracked], current: Sequence[Device], ran: frozenset[str], state: _Assembly
) -> dict[str, Tracked]:
    """The stored units a scan can change: those a source that ran saw (it counts their
    misses) and those that share a key with one of its readings (it may join, contest or
    merge them). The others are carried over as they are, with their keys worked out once
    (``incremental=False`` takes every unit through the grouping, as a test compares)."""
    wanted: set[str] = set()
    for found in reading_keys([Reading(d) for d in current]):
        wanted |= key_strings(found)
    involved = {}
    for identity, unit in previous.items():
        if unit.keys is None:
            unit = unit.replaced(keys=_unit_keys(unit))
        assert unit.keys is not None
        if not unit.keys.isdisjoint(wanted) or any(s.source in ran for s in unit.sightings):
            involved[identity] = unit
        else:
            state.keep(identity, unit)
    return involved


def _unit_keys(unit: Tracked) -> frozenset[str]:
    readings = [Reading(s.reading_or(unit.device)) for s in unit.sightings]
    return frozenset().union(*(key_strings(k) for k in reading_keys(readings)))


def behind(sighting: Sighting, device: Device, targets: Collection[str]) -> bool:
    """Whether ``sighting`` was made at or through one of ``targets`` (a source's targets it
    could not read this run): at the target itself, under it (``pc/usb/1-2``), or reported
    by it (``attached_to``: a room PC's USB unit; ``paired_with``: a bar's Tap IP)."""
    if not targets:
        return False
    # A unit reported by another (a Tap IP by its bar) is held only through that one: its own
    # address is the reporter's word, and may be anything.
    through = [device.attributes.get(key) for key in ("attached_to", "paired_with")]
    if any(isinstance(t, str) and t for t in through):
        return any(t in targets for t in through)
    address = sighting.address
    return address in targets or any(address.startswith(f"{t}/") for t in targets)


def _pool(
    previous: Mapping[str, Tracked],
    current: Sequence[Device],
    ran: frozenset[str],
    remove_after: int,
    unreached: Mapping[str, Collection[str]],
) -> tuple[list[Reading], list[Sighting | None]]:
    """The scan's readings, then every remembered sighting: a source that did not run leaves
    its sightings as they were; one that ran and did not report the channel counts a miss
    (the sighting is dropped at ``remove_after``, after grouping); one re-reported stays, to
    be superseded by the new reading of its unit (or missed, if that is another unit now)."""
    pool = [Reading(d) for d in current]
    origins: list[Sighting | None] = [None] * len(current)
    reported = {(source_of(d), d.address) for d in current}
    for identity in sorted(previous):
        unit = previous[identity]
        for sighting in unit.sightings:
            missed = sighting.missed
            device = sighting.reading_or(unit.device)
            looked = sighting.source in ran and not behind(
                sighting, device, unreached.get(sighting.source, ())
            )
            if looked and sighting.key not in reported:
                # At remove_after it goes; until the readings are grouped it still tells
                # which unit a new reading of it continues (a bar that left USB for the LAN).
                missed += 1
            standing = not looked and missed == 0
            pool.append(
                Reading(
                    device,
                    missed=missed,
                    unit=identity,
                    fresh=False,
                    standing=standing,
                    expired=missed >= remove_after,
                    recent={fact: dict(values) for fact, values in sighting.recent.items()},
                )
            )
            origins.append(sighting)
    return pool, origins


def _group_order(pool: Sequence[Reading], group: Sequence[int]) -> tuple[bool, str, tuple[str, ...]]:
    """Units with a stored record first (they keep their identities), then new ones by what
    they say (two hosts claiming one serial get their identities whatever the input's
    order)."""
    units = sorted(u for i in group if (u := pool[i].unit) is not None)
    if units:
        return (False, units[0], ())
    return (True, "", content_order([pool[i] for i in group]))


class _Assembly:
    """The units a diff builds, group by group."""

    def __init__(
        self,
        previous: Mapping[str, Tracked],
        now: datetime,
        new_id: Callable[[], str],
        rules: MergeRules,
        remove_after: int,
        reported: set[tuple[str, str]],
        taken: frozenset[str] = frozenset(),
    ) -> None:
        self.previous = previous
        #: Identities of units outside this diff (carried over by :func:`_settle`).
        self.taken = taken
        self.now = now
        self.new_id = new_id
        self.rules = rules
        self.remove_after = remove_after
        self.reported = reported
        self.inventory: dict[str, Tracked] = {}
        self.removed: dict[str, Tracked] = {}
        self.merged: dict[str, str] = {}
        self.events: list[ChangeEvent] = []
        self._unit_events: dict[str, list[ChangeEvent]] = {}
        #: The stored units the scan took through the grouping (``None``: every one).
        self.involved: set[str] | None = None
        self._claimed: set[str] = set()

    def keep(self, identity: str, unit: Tracked) -> None:
        """A unit the scan leaves as it was."""
        self.inventory[identity] = unit
        self._claimed.add(identity)

    def assemble(
        self, readings: list[Reading], origins: list[Sighting | None], keys: Sequence[ReadingKeys]
    ) -> str | None:
        """Build the unit of one group; its identity (``None``: nothing of it remains)."""
        units = [
            u for u in dict.fromkeys(r.unit for r in readings if r.unit is not None) if u not in self._claimed
        ]
        kept, changed = self._kept(readings, origins)
        if not kept:
            return None
        kept = one_per_channel(kept)
        keys_of = {id(r): k for r, k in zip(readings, keys, strict=True)}
        unit_keys = frozenset().union(*(key_strings(keys_of[id(r)]) for r in kept))
        if not changed and len(units) == 1 and len(kept) == len(self.previous[units[0]].sightings):
            # No source of this scan touched the unit: it stays exactly as stored.
            self.keep(units[0], self.previous[units[0]].replaced(keys=unit_keys))
            return units[0]
        merged = merge_group(kept, self.rules)
        identity = self._identity(units, merged)
        before = self.previous.get(identity)
        sightings = tuple(
            sorted(
                # A unit of one channel is its reading (Sighting.reading_or): only a unit of
                # several keeps each channel's reading apart, so the store holds it once.
                (
                    sighting_of(r.device, missed=r.missed, recent=r.recent, keep_reading=len(kept) > 1)
                    for r in kept
                ),
                key=lambda s: s.key,
            )
        )
        room = resolve_room(before.device.room if before else None, sightings)
        merged.assigned_identity = identity
        merged.first_seen = min(
            [merged.first_seen, *(self.previous[u].device.first_seen for u in units)], key=as_utc
        )
        after = Tracked(_placed(merged, room), sightings, unit_keys)
        self.inventory[identity] = after
        self._claimed.update(units)
        self._claimed.add(identity)
        events = self._unit_events.setdefault(identity, [])
        events.extend(_unit_events(before, after, kept, self.now, _no_id))
        for other in (u for u in units if u != identity):
            self.merged[other] = identity
            events.append(self._remove(other, {"merged_into": identity}))
        return identity

    def _kept(self, readings: list[Reading], origins: list[Sighting | None]) -> tuple[list[Reading], bool]:
        """The group's readings after the scan, and whether the scan changed any of them:
        new ones carry on what their channel said before (``recent``); a remembered one is
        superseded by a new one of its channel, or counts a miss if its source ran and did
        not report it as this unit (dropped at ``remove_after``)."""
        fresh = {r.channel: r for r in readings if r.fresh}
        kept = []
        changed = bool(fresh)
        for reading, origin in zip(readings, origins, strict=True):
            if origin is None:
                kept.append(reading)
                continue
            newer = fresh.get(reading.channel)
            if newer is not None:
                if serial_key(newer.device) == serial_key(reading.device):
                    # The channel's previous report of this unit: what it said is remembered
                    # where it disagreed with what the unit showed.
                    before = self.previous.get(reading.unit or "")
                    shown = (
                        {"firmware": before.device.firmware, "product": before.device.product}
                        if before
                        else {}
                    )
                    newer.recent = remember(reading, newer.device, self.rules.remember_runs, shown)
                continue
            if origin.key in self.reported:
                reading.missed += 1  # its channel was reported, as another unit
            if reading.missed != origin.missed:
                changed = True
                if reading.missed >= self.remove_after:
                    continue
            kept.append(reading)
        return kept, changed

    def _identity(self, units: Sequence[str], merged: Device) -> str:
        """The group's record: the stored unit it continues (of several, the one known by a
        serial, then the oldest); a new unit's derived identity, unless another unit has it."""
        if units:
            return min(units, key=lambda u: _survivor_order(u, self.previous[u], merged))
        return unique_identity(
            merged,
            lambda k: k in self.previous or k in self.inventory or k in self._claimed or k in self.taken,
        )

    def _remove(self, identity: str, after: dict[str, Any] | None) -> ChangeEvent:
        """Take a stored unit out of the inventory; its ``device.removed``."""
        gone = self.previous[identity]
        self.removed[identity] = gone.replaced(sightings=())
        return _event(
            EventType.DEVICE_REMOVED, self.now, _no_id, gone.device, before=_summary(gone.device), after=after
        )

    def finish(self) -> None:
        """Units no group continued are removed; events in the module's order."""
        for identity in sorted(self.previous):
            if identity in self._claimed or identity in self.inventory:
                continue
            self._unit_events.setdefault(identity, []).append(self._remove(identity, None))
        for identity in sorted(self._unit_events):
            # Ids are given in the order the events come in.
            self.events.extend(replace(e, id=self.new_id()) for e in self._unit_events[identity])
        previous, inventory = self.previous, self.inventory
        if self.involved is not None:
            # A conflict can only have changed for a serial a unit the scan touched carries.
            touched = self.involved | (inventory.keys() - previous.keys()) | self.removed.keys()
            serials = {s for m in (previous, inventory) for k in touched if (s := _label_serial(m.get(k)))}
            previous = {k: u for k, u in previous.items() if _label_serial(u) in serials}
            inventory = {k: u for k, u in inventory.items() if _label_serial(u) in serials}
        self.events.extend(_conflict_events(previous, inventory, self.now, self.new_id))


def _label_serial(unit: Tracked | None) -> str | None:
    device = unit.stored if unit is not None else None  # its facts: no need to retime it
    if device is None or not (device.serial and device.serial_label_grade):
        return None
    return normalize_serial(device.serial)


def _no_id() -> str:
    return ""


def _survivor_order(identity: str, unit: Tracked, merged: Device) -> tuple[bool, bool, datetime, str]:
    """Of several stored units found to be one: the one known by the serial the unit now
    carries, then one known by a serial at all, then the oldest."""
    key = serial_key(merged)
    own = key is not None and (identity == merged.derived_identity or serial_key(unit.device) == key)
    return (not own, not identity.startswith("serial:"), as_utc(unit.device.first_seen), identity)


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


def _placed(device: Device, room: str | None) -> Device:
    """A copy of ``device``, moved with its children to ``room`` if it stands elsewhere."""
    copy = device.clone()
    if copy.room != room:
        _set_room(copy, room)
    return copy


def _set_room(device: Device, room: str | None) -> None:
    device.room = room
    for child in device.children:
        _set_room(child, room)


# --------------------------------------------------------------------------- events of one unit


def _unit_events(
    before: Tracked | None,
    after: Tracked,
    kept: Sequence[Reading],
    now: datetime,
    new_id: Callable[[], str],
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
    if any(r.fresh for r in kept):
        firmware = _firmware_event(before, after, now, new_id)
        if firmware is not None:
            events.append(firmware)
        if before.device.health != after.device.health:
            events.append(
                _event(
                    EventType.HEALTH_CHANGED,
                    now,
                    new_id,
                    after.device,
                    before=_health(before.device),
                    after=_health(after.device),
                )
            )
    return events


def _firmware_event(
    before: Tracked, after: Tracked, now: datetime, new_id: Callable[[], str]
) -> ChangeEvent | None:
    """``firmware.changed`` when the channel the unit's firmware now comes from read another
    version (of the unit, or of a component) before: one channel is never compared with
    another's way of writing a version, and a less trusted channel never moves it."""
    shown = after.device.provenance.get("firmware")
    key = (shown.source, shown.address) if shown is not None else _first_standing(after)
    if key is None:
        return None
    new = next((s for s in after.sightings if s.key == key and s.standing), None)
    old = _earlier_reading(before.sightings, key)
    if new is None or old is None or not _firmware_changed(old, new):
        return None
    return _event(
        EventType.FIRMWARE_CHANGED, now, new_id, after.device, before=_versions(old), after=_versions(new)
    )


def _first_standing(unit: Tracked) -> tuple[str, str] | None:
    return next((s.key for s in unit.sightings if s.standing and s.components), None)


def _earlier_reading(before: Sequence[Sighting], key: tuple[str, str]) -> Sighting | None:
    """What the same channel said before: at the same address, else (the unit changed
    address) the source's freshest sighting at another."""
    exact = [s for s in before if s.key == key]
    if exact:
        return exact[0]
    return min((s for s in before if s.source == key[0]), key=lambda s: s.missed, default=None)


def _firmware_changed(old: Sighting, new: Sighting) -> bool:
    if old.firmware is not None and new.firmware is not None and old.firmware != new.firmware:
        return True
    return any(old.components[k] != new.components[k] for k in old.components.keys() & new.components.keys())


def _versions(sighting: Sighting) -> dict[str, Any]:
    return {"firmware": sighting.firmware, "components": dict(sighting.components), "source": sighting.source}


def _health(device: Device) -> dict[str, Any]:
    shown = device.provenance.get("health")
    return {
        "health": str(device.health),
        "issues": sorted({i.code for i in device.health_issues}),
        "source": shown.source if shown is not None else (device.sources[0] if device.sources else None),
    }


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
    """What one sighting says of a unit carrying a label-grade serial."""

    identity: str
    product: str
    room: str | None
    source: str
    address: str
    #: Its source saw it in its latest run (only those place the unit in a room).
    standing: bool = field(default=True, compare=False)

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
    """Label-grade serials that two units carry (two products, or two hosts one source put
    it on: every sighting the inventory keeps counts, so a channel that misses a run does not
    end the conflict and start it again), or whose standing sightings place in two rooms;
    with every claim (sorted), by serial in its compared form (:func:`normalize_serial`)."""
    claims: dict[str, list[Claim]] = {}
    for identity, unit in inventory.items():
        device = unit.device
        if not (device.serial and device.serial_label_grade):
            continue
        for s in unit.sightings:
            claims.setdefault(normalize_serial(device.serial), []).append(
                Claim(identity, device.product, s.room, s.source, s.address, s.standing)
            )
    return {serial: sorted(found, key=Claim.sort_key) for serial, found in claims.items() if _disagree(found)}


def _disagree(claims: Sequence[Claim]) -> bool:
    identities = {c.identity for c in claims}
    products = {c.product for c in claims}
    rooms = {c.room for c in claims if c.room is not None and c.standing}
    return len(identities) > 1 or len(products) > 1 or len(rooms) > 1


def _signature(claims: Sequence[Claim]) -> frozenset[tuple[str, str, str | None]]:
    return frozenset((c.identity, c.product, c.room) for c in claims)


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
