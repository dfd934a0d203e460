"""What a re-scan changes when nothing changed: only *when* each channel last reported a unit.

A unit's record carries that time in several places: the device's ``last_seen``, each
sighting's ``seen_at`` (and its reading's ``last_seen``), each ``seen_by`` entry, the time of
every fact in ``provenance`` and ``disagreements``, and the times of the children read
through it. A scan that finds every unit as it was changes only those.

:func:`same_facts` tells whether two records of a unit differ only in those times, so that
the store rewrites a unit only when its facts changed and otherwise keeps just the times, one
row per channel (:meth:`agent.store.Store.record_scan`). :func:`with_seen` puts the kept
times back into a record read from the store: the device's ``last_seen`` (the newest of its
sightings', as the merge makes it), the sightings' and their readings', those of
``seen_by``, ``provenance`` and ``disagreements`` by channel, and the children's (the
channel they were read through: the one their ``seen_by`` names). A store reopened between scans holds
what one kept open holds (``tests/test_store_writes.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from agent.events import Channel, Sighting, Tracked
from agent.model import Device, as_utc, facts_key


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
        facts_key(sighting.reading, top=False) if sighting.reading is not None else None,
    )


def same_facts(before: Tracked, after: Tracked) -> bool:
    """Whether ``after`` says what ``before`` says, times aside."""
    if before is after:
        return True
    if len(before.sightings) != len(after.sightings):
        return False
    return all(
        _sighting_key(a) == _sighting_key(b) for a, b in zip(before.sightings, after.sightings, strict=True)
    ) and facts_key(before.device, top=True) == facts_key(after.device, top=True)


def seen_times(before: Tracked | None, after: Tracked) -> list[tuple[str, str, datetime]]:
    """The channels of ``after`` whose time differs from ``before``'s: (source, address,
    seen_at)."""
    old = {s.key: s.seen_at for s in before.sightings} if before is not None else {}
    return [(s.source, s.address, s.seen_at) for s in after.sightings if old.get(s.key) != s.seen_at]


def with_seen(unit: Tracked, seen: Mapping[Channel, datetime]) -> Tracked:
    """``unit`` (just decoded: its device and readings are its own) with the times ``seen``
    keeps for its channels: every time that was its channel's when the unit was written is
    moved to the time kept for that channel (the children's are the channel their
    ``seen_by`` names: the one they were read through)."""
    if not seen:
        return unit
    written = {s.key: s.seen_at for s in unit.sightings}
    sightings = tuple(
        _sighting_at(s, written[s.key], seen[s.key]) if s.key in seen else s for s in unit.sightings
    )
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
    for child in device.children:
        channel = _read_through(child, unit.sightings)
        if channel is not None and channel in seen:
            _moved(child, written[channel], seen[channel])
    return replace(unit, sightings=sightings)


def _read_through(child: Device, sightings: Sequence[Sighting]) -> Channel | None:
    """The channel ``child`` was read through: the merge takes a unit's children from one
    channel's reading and marks each child as seen by that channel's source
    (``agent.identity``); of the unit's sightings of that source, the one whose reading had
    children (``None`` when that does not name one)."""
    source = child.seen_by[0].source if child.seen_by else None
    candidates = [
        s.key for s in sightings if s.source == source and (s.reading is None or s.reading.children)
    ]
    return candidates[0] if len(candidates) == 1 else None


def _sighting_at(sighting: Sighting, written: datetime, at: datetime) -> Sighting:
    reading = sighting.reading
    if reading is not None:
        reading = reading.clone()
        _moved(reading, written, at)
    return replace(sighting, seen_at=at, reading=reading)


def _moved(device: Device, old: datetime, new: datetime) -> None:
    """Move every time of ``device`` (a reading, or a child read through a unit: its own)
    that is ``old`` to ``new``."""
    if device.first_seen == old:
        device.first_seen = new
    if device.last_seen == old:
        device.last_seen = new
    device.seen_by = [s._replace(last_seen=new) if s.last_seen == old else s for s in device.seen_by]
    device.provenance = {f: v._replace(at=new) if v.at == old else v for f, v in device.provenance.items()}
    for child in device.children:
        _moved(child, old, new)
