"""The site summary of ``roomsync coverage --summary``: rooms, units, counts per status and the
SELECT entitlements that follow from the rooms with an active licence (domain.md S3, S10, S11).

Pure: verdicts and rooms in, a :class:`SiteSummary` out; ``today`` is passed in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from agent.coverage import URGENCY, LayerKind, Verdict

#: S3: enterprise plan tiers and the number of rooms each serves (SLX: no cap given).
TIER_ROOMS: Mapping[str, int | None] = {
    "100": 100,
    "250": 250,
    "500": 500,
    "1000": 1000,
    "2000": 2000,
    "5000": 5000,
    "SLX": None,
}
#: S11: on-site spares an enterprise plan gives.
TIER_SPARES: Mapping[str, int] = {"100": 1, "250": 2, "500": 3, "1000": 5, "2000": 10, "5000": 15, "SLX": 20}
#: S11: room licences give one spare per this many licensed rooms.
ROOMS_PER_SPARE = 50
#: S10: a dedicated service manager from this many active SELECT room licences.
DSM_ROOMS = 50
TIER_EXCEEDED = "tier-exceeded"


@dataclass(frozen=True, slots=True)
class SiteSummary:
    rooms: int
    units: int
    by_status: dict[str, int]
    select_rooms_active: int
    spares_due: int
    dedicated_service_manager: bool
    enterprise_tier: str | None
    tier_rooms: int | None
    flags: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rooms": self.rooms,
            "units": self.units,
            "by_status": dict(self.by_status),
            "select_rooms_active": self.select_rooms_active,
            "spares_due": self.spares_due,
            "dedicated_service_manager": self.dedicated_service_manager,
            "enterprise_tier": self.enterprise_tier,
            "tier_rooms": self.tier_rooms,
            "flags": list(self.flags),
            "rules": list(self.rules),
            "notes": list(self.notes),
        }


def has_active_select(verdict: Verdict, today: date) -> bool:
    """The unit is in an active SELECT term today (S4 start, S5 term, S7 age cap applied)."""
    return any(layer.kind is LayerKind.SELECT and layer.covers(today) for layer in verdict.layers)


def summarize(
    units: Iterable[tuple[Verdict, str | None]],
    rooms: Iterable[str],
    today: date,
    *,
    enterprise_tier: str | None = None,
    roomless: Mapping[str, int] | None = None,
) -> SiteSummary:
    """``units`` pairs each verdict with the unit's room (``None``: unassigned); ``rooms``
    are every room the site knows (a room may hold no evaluated unit). ``roomless`` counts
    further units by status, units in no room whose verdicts are not held (the entitlement
    records no scan found: :meth:`agent.uploader.snapshot.CoverageList.counts`)."""
    pairs = list(units)
    all_rooms = set(rooms) | {room for _, room in pairs if room}
    by_status = Counter(str(v.status) for v, _ in pairs)
    by_status.update({str(status): count for status, count in (roomless or {}).items()})
    select_rooms = {room for v, room in pairs if room and has_active_select(v, today)}
    active = len(select_rooms)
    rules = ["S11"]
    notes = []
    flags: list[str] = []
    tier_rooms: int | None = None
    if enterprise_tier is not None:
        tier_rooms = TIER_ROOMS[enterprise_tier]
        spares = TIER_SPARES[enterprise_tier]  # S11: enterprise plans by tier
        dsm = True  # S10: an enterprise plan
        rules += ["S3", "S10"]
        notes.append(
            f"enterprise plan {enterprise_tier}: {spares} on-site spare(s) (S11), "
            "dedicated service manager (S10)"
        )
        if tier_rooms is not None and active > tier_rooms:
            flags.append(TIER_EXCEEDED)  # S3: plans do not stack; the customer must upgrade
            notes.append(f"{active} rooms served exceed the {enterprise_tier}-room tier (S3)")
    else:
        spares = active // ROOMS_PER_SPARE  # S11: counted from rooms with an active licence
        dsm = active >= DSM_ROOMS  # S10
        rules.append("S10")
        notes.append(
            f"{active} room(s) with an active SELECT licence: {spares} on-site spare(s) "
            f"(1 per {ROOMS_PER_SPARE}, S11); dedicated service manager "
            f"{'yes' if dsm else f'from {DSM_ROOMS} rooms'} (S10)"
        )
    return SiteSummary(
        rooms=len(all_rooms),
        units=len(pairs) + sum((roomless or {}).values()),
        by_status={str(status): by_status.get(str(status), 0) for status in URGENCY},
        select_rooms_active=active,
        spares_due=spares,
        dedicated_service_manager=dsm,
        enterprise_tier=enterprise_tier,
        tier_rooms=tier_rooms,
        flags=tuple(sorted(flags)),
        rules=tuple(sorted(rules)),
        notes=tuple(notes),
    )
