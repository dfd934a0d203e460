"""What a re-scan changes when nothing changed: only *when* each channel last reported a unit.

A unit's record carries that time in several places: the device's ``last_seen``, each
sighting's ``seen_at`` (and its reading's ``last_seen``), each ``seen_by`` entry, the time of
every fact in ``provenance`` and ``disagreements``, and the times of the children read
through it. A scan that finds every unit as it was changes only those.

:func:`same_facts` tells whether two records of a unit differ only in those times, so that
the store rewrites a unit only when its facts changed and otherwise keeps just the times, one
row per channel (:meth:`agent.store.Store.record_scan`). :func:`with_seen` puts the kept
times back into a record read from the store: the device's ``last_seen`` (the newest of its
sightings', as the merge makes it), the sightings', and those of ``seen_by``,
``provenance`` and ``disagreements`` by channel. The children's times stay as of the unit's
last change (no reading of the agent depends on them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from datetime import datetime
from typing import Any

from agent.events import Sighting, Tracked
from agent.model import Device, as_utc

#: The fields of a device compared as they are (the rest are times, or hold times).
_PLAIN = tuple(
    f.name
    for f in fields(Device)
    if f.name not in {"first_seen", "last_seen", "children", "seen_by", "provenance", "disagreements"}
)

Channel = tuple[str, str]
"""A sighting's (source, address)."""


def _device_key(device: Device, *, top: bool) -> tuple[Any, ...]:
    """Everything ``device`` says but its times. A unit's own ``first_seen`` is a fact (the
    merge keeps the earliest); a reading's and a child's are when it was read."""
    return (
        tuple(getattr(device, name) for name in _PLAIN),
        device.first_seen if top else None,
        tuple(_device_key(child, top=False) for child in device.children),
        tuple((*s[:4], *s[5:]) for s in device.seen_by),  # SeenBy without last_seen
        {fact: value[:5] for fact, value in device.provenance.items()},  # FactSource without at
        tuple((d.fact, tuple(v[:5] for v in d.values)) for d in device.disagreements),
    )


def _sighting_key(sighting: Sighting) -> tuple[Any, ...]:
    return (
        sighting.source,
        sighting.address,
        sighting.room,
        sighting.firmware,
        sighting.components,
        sighting.health,
        sighting.issues,
        sighting.missed,
        sighting.recent,
        _device_key(sighting.reading, top=False) if sighting.reading is not None else None,
    )


def same_facts(before: Tracked, after: Tracked) -> bool:
    """Whether ``after`` says what ``before`` says, times aside."""
    if before is after:
        return True
    if len(before.sightings) != len(after.sightings):
        return False
    return all(
        _sighting_key(a) == _sighting_key(b) for a, b in zip(before.sightings, after.sightings, strict=True)
    ) and _device_key(before.device, top=True) == _device_key(after.device, top=True)


def seen_times(before: Tracked | None, after: Tracked) -> list[tuple[str, str, datetime]]:
    """The channels of ``after`` whose time differs from ``before``'s: (source, address,
    seen_at)."""
    old = {s.key: s.seen_at for s in before.sightings} if before is not None else {}
    return [(s.source, s.address, s.seen_at) for s in after.sightings if old.get(s.key) != s.seen_at]


def with_seen(unit: Tracked, seen: Mapping[Channel, datetime]) -> Tracked:
    """``unit`` (just decoded: its device is its own) with the times ``seen`` keeps for its
    channels."""
    if not seen:
        return unit
    sightings = tuple(_sighting_at(s, seen[s.key]) if s.key in seen else s for s in unit.sightings)
    device = unit.device
    if sightings:
        device.last_seen = max((s.seen_at for s in sightings), key=as_utc)
    device.seen_by = [
        sb._replace(last_seen=seen[(sb.source, sb.address)]) if (sb.source, sb.address) in seen else sb
        for sb in device.seen_by
    ]
    device.provenance = {
        fact: fs._replace(at=seen[(fs.source, fs.address)]) if (fs.source, fs.address) in seen else fs
        for fact, fs in device.provenance.items()
    }
    device.disagreements = [
        replace(
            d,
            values=tuple(
                v._replace(at=seen[(v.source, v.address)]) if (v.source, v.address) in seen else v
                for v in d.values
            ),
        )
        for d in device.disagreements
    ]
    return replace(unit, sightings=sightings)


def _sighting_at(sighting: Sighting, at: datetime) -> Sighting:
    reading = sighting.reading
    if reading is not None:
        reading = reading.shallow_copy()
        reading.last_seen = at
    return replace(sighting, seen_at=at, reading=reading)
