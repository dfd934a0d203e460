"""Systems and primary units: how the units of one room form products and bundles, whose
serial is registered, whose serial support tickets quote, and which key devices need one.

Pure functions of (the devices of one room, the catalog). Which products form which system
is catalog data (``[[system]]`` in ``agent/data/catalog.toml``); nothing here names a product.

Grouping (:func:`group_systems`)
--------------------------------
The catalog's kinds of system are tried in their order (bundles first). A system is formed
when the room still holds a unit for each of its *required* roles; its other roles then take
units up to their ``max``. A unit's children (a bar's Sight and mic pods read over its Sync
interface) always go with it, filling their role (or ``attached`` when they fill none) and
counting towards that role's ``max``. Units are taken in a fixed order — those with a
label-grade serial first, then by identity, then address — so the result never depends on the order the
sources reported them in. Units that fit no system stay *standalone*. Every unit given ends in
exactly one system or among the standalone units, never lost and never twice.

Decisions, with the rule ids of domain.md they rest on (each in :attr:`RoomSummary.rules`)
-----------------------------------------------------------------------------------------
* **P1** — a product made of several components registers only its primary unit's serial.
  Each system names its primary role (the Rally Camera of a Rally system, the bar of a
  CollabOS bar). The room's ``primary_unit`` is the primary unit of its first system. A room
  with no system falls back on its standalone primary units (key devices first, then catalog
  order): a unit sold on its own is its own primary unit.
* **P2** — a Tap bundle's tickets quote the Tap's serial, never the Rally's, MeetUp's or PC's.
  Each system names its ticket role; ``ticket_serial`` is that unit's serial, and is never
  taken from another unit when it is unknown. Without a system the ticket quotes the primary
  unit (P1).
* **S-list** — the key devices whose serial must be registered to a room (domain.md, seed 003:
  the main camera, Rally Bar, Tap, Swytch, Scribe; catalog ``key_device``). It has no number in
  domain.md; the issue calls it the S-list.

A serial counts only when it is label-grade (the one on the label): a USB chip's serial on a
warranty form or ticket is worse than none. ``primary_unit`` and ``ticket_serial`` are
``None`` when their unit's serial is not label-grade, and a flag says so.

Flags (sorted, in :attr:`RoomSummary.flags`)
--------------------------------------------
``key-device-unregistered``      a key device has no label-grade serial (S-list)
``primary-unit-serial-unknown``  the room's primary unit has no label-grade serial (P1)
``ticket-serial-unknown``        the unit tickets quote has no label-grade serial (P1, P2)
``primary-unit-ambiguous``       more than one system (two bars…) or, with none, more than one
                                 equally ranked standalone primary unit: the first is used (P1)
``system-incomplete``            a system lacks an *expected* unit (a Tap bundle whose Room PC
                                 was not found; the ticket still quotes the Tap, P2)
``no-primary-unit``              the room has units but none is a primary unit (only hubs…)
``no-devices-found``             the room is known but nothing was found in it
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from agent.catalog import Catalog, SystemSpec
from agent.model import Device

__all__ = [
    "ATTACHED",
    "KEY_DEVICE_RULE",
    "KeyDevice",
    "RoomSummary",
    "RuleNote",
    "System",
    "SystemMember",
    "group_systems",
    "label_serial",
    "summarize_room",
    "units",
]

#: The role of a unit attached to a system's unit that fills none of the system's roles.
ATTACHED = "attached"
#: The rule id cited for key devices (domain.md's list from seed 003).
KEY_DEVICE_RULE = "S-list"
#: A unit sold on its own is its own primary unit.
_STANDALONE_RULES = ("P1",)


@dataclass(frozen=True, slots=True)
class RuleNote:
    """One decision and the rule ids it rests on, for an administrator to check by hand."""

    ids: tuple[str, ...]
    text: str

    def __str__(self) -> str:
        return f"{', '.join(self.ids)}: {self.text}"

    def to_dict(self) -> dict[str, Any]:
        return {"rules": list(self.ids), "decision": self.text}


@dataclass(frozen=True, slots=True)
class SystemMember:
    """A unit in a system: its role, and the identity of the unit it is attached to when it
    was read through that unit (a bar's Sight)."""

    role: str
    device: Device
    attached_to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "identity": self.device.identity,
            "product": self.device.product,
            "serial": self.device.serial,
            "serial_label_grade": self.device.serial_label_grade,
            "attached_to": self.attached_to,
        }


@dataclass(frozen=True, slots=True)
class System:
    """Units of one room forming one product or bundle (a catalog ``[[system]]``)."""

    name: str
    members: tuple[SystemMember, ...]
    primary: Device
    ticket: Device
    #: Expected roles with no unit (a Tap bundle's ``room-pc``).
    missing: tuple[str, ...] = ()
    #: Rule ids behind the primary unit (P1) and behind the serial tickets quote (P2, P1).
    primary_rules: tuple[str, ...] = _STANDALONE_RULES
    ticket_rules: tuple[str, ...] = _STANDALONE_RULES
    rules: tuple[RuleNote, ...] = ()

    @property
    def primary_serial(self) -> str | None:
        return label_serial(self.primary)

    @property
    def ticket_serial(self) -> str | None:
        return label_serial(self.ticket)

    @property
    def devices(self) -> list[Device]:
        return [m.device for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "primary": self.primary.identity,
            "ticket": self.ticket.identity,
            "primary_serial": self.primary_serial,
            "ticket_serial": self.ticket_serial,
            "members": [m.to_dict() for m in self.members],
            "missing": list(self.missing),
            "rules": [r.to_dict() for r in self.rules],
        }


@dataclass(frozen=True, slots=True)
class KeyDevice:
    """A unit whose serial must be registered to its room (S-list), as the Service Portal CSV
    (S14) lists it."""

    identity: str
    product: str
    model: str | None
    serial: str | None
    label_grade: bool
    firmware: str | None = None
    system: str | None = None

    @property
    def registrable(self) -> bool:
        return self.serial is not None and self.label_grade

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "product": self.product,
            "model": self.model,
            "serial": self.serial,
            "label_grade": self.label_grade,
            "firmware": self.firmware,
            "system": self.system,
        }


@dataclass(frozen=True, slots=True)
class RoomSummary:
    """What a room holds, which serial is registered for it and which one tickets quote."""

    room_id: str
    systems: tuple[System, ...] = ()
    #: Top-level units in no system (their children with them), in grouping order.
    standalone: tuple[Device, ...] = ()
    #: The label-grade serial of the room's primary unit (P1), else ``None``.
    primary_unit: str | None = None
    primary_product: str | None = None
    #: The label-grade serial support tickets quote (P2, P1), else ``None``.
    ticket_serial: str | None = None
    ticket_product: str | None = None
    key_devices: tuple[KeyDevice, ...] = ()
    flags: tuple[str, ...] = ()
    rules: tuple[RuleNote, ...] = ()

    @property
    def devices(self) -> list[Device]:
        """Every unit of the room, children included: systems first, then standalone."""
        out = [m.device for s in self.systems for m in s.members]
        out.extend(units(self.standalone))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "room": self.room_id,
            "primary_unit": self.primary_unit,
            "primary_product": self.primary_product,
            "ticket_serial": self.ticket_serial,
            "ticket_product": self.ticket_product,
            "systems": [s.to_dict() for s in self.systems],
            "standalone": [d.identity for d in self.standalone],
            "key_devices": [k.to_dict() for k in self.key_devices],
            "flags": list(self.flags),
            "rules": [r.to_dict() for r in self.rules],
        }


# --------------------------------------------------------------------------- helpers


def label_serial(device: Device) -> str | None:
    """The device's serial when it is the one on its label, else ``None``."""
    return device.serial if device.serial and device.serial_label_grade else None


def units(devices: Iterable[Device]) -> Iterator[Device]:
    """Each device followed by its children (depth first)."""
    for device in devices:
        yield device
        yield from units(device.children)


def _order(device: Device) -> tuple[int, str, str, str]:
    """Grouping order: units with a label-grade serial first, then by identity (and where
    they were seen, for two units that claim one identity)."""
    return (0 if label_serial(device) else 1, device.identity, device.transport, device.address)


def _serial_text(device: Device) -> str:
    if label_serial(device):
        return f"serial {device.serial}"
    if device.serial:
        return f"serial {device.serial} is not label-grade"
    return "no serial read"


def _unit_text(device: Device) -> str:
    return f"{device.product} ({_serial_text(device)})"


def _unique(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ids))


# --------------------------------------------------------------------------- grouping


def group_systems(devices: Iterable[Device], catalog: Catalog) -> tuple[list[System], list[Device]]:
    """The systems the (top-level) ``devices`` of one room form, and the standalone rest.

    Linear in the number of units: the room's units wait in one queue per product, in the
    fixed order, and a unit once taken leaves its queue for good (a room of 50,000 units groups
    in well under a second; the earlier scan of the whole pool per system was quadratic)."""
    pool = sorted(devices, key=_order)
    queues: dict[str | None, deque[tuple[int, Device]]] = {}
    for position, device in enumerate(pool):
        queues.setdefault(device.product, deque()).append((position, device))
    taken: set[int] = set()
    systems: list[System] = []
    for spec in catalog.systems:
        while (system := _take(spec, queues, taken)) is not None:
            systems.append(system)
    return systems, [d for d in pool if id(d) not in taken]


def _next(
    products: Iterable[str], queues: dict[str | None, deque[tuple[int, Device]]], taken: set[int]
) -> Device | None:
    """The first unit (in the fixed order) of any of ``products`` not taken yet."""
    best: tuple[int, Device] | None = None
    for product in products:
        queue = queues.get(product)
        while queue and id(queue[0][1]) in taken:
            queue.popleft()
        if queue and (best is None or queue[0][0] < best[0]):
            best = queue[0]
    return best[1] if best is not None else None


def _take(
    spec: SystemSpec, queues: dict[str | None, deque[tuple[int, Device]]], taken: set[int]
) -> System | None:
    """One system of kind ``spec`` from the units not taken yet (marking its own taken), or
    ``None`` when a required role finds no unit."""
    chosen: dict[str, list[Device]] = {r.role: [] for r in spec.roles}
    for role in spec.roles:
        if role.required:
            first = _next(role.products, queues, taken)
            if first is None:
                return None
            chosen[role.role].append(first)
    taken.update(id(d) for picked in chosen.values() for d in picked)
    counts = Counter(_roles_of(spec, [d for picked in chosen.values() for d in picked]))
    for role in spec.roles:
        while role.max is None or counts[role.role] < role.max:
            device = _next(role.products, queues, taken)
            if device is None:
                break
            chosen[role.role].append(device)
            taken.add(id(device))
            counts.update(_roles_of(spec, [device]))
    members = tuple(m for role in spec.roles for d in chosen[role.role] for m in _members(spec, role.role, d))
    missing = tuple(r.role for r in spec.roles if r.need == "expected" and not counts[r.role])
    primary, ticket = chosen[spec.primary][0], chosen[spec.ticket][0]
    return System(
        spec.name,
        members,
        primary,
        ticket,
        missing,
        spec.primary_rules,
        spec.ticket_rules,
        _system_notes(spec, members, primary, ticket, missing),
    )


def _roles_of(spec: SystemSpec, devices: Sequence[Device]) -> Iterator[str]:
    """The roles ``devices`` and their children fill in a system of kind ``spec``."""
    for device in units(devices):
        role = spec.role_of(device.product)
        if role is not None:
            yield role.role


def _members(spec: SystemSpec, role: str, device: Device) -> Iterator[SystemMember]:
    yield SystemMember(role, device)
    for parent, child in _attached(device):
        found = spec.role_of(child.product)
        yield SystemMember(found.role if found else ATTACHED, child, parent.identity)


def _attached(device: Device) -> Iterator[tuple[Device, Device]]:
    for child in device.children:
        yield device, child
        yield from _attached(child)


def _system_notes(
    spec: SystemSpec,
    members: tuple[SystemMember, ...],
    primary: Device,
    ticket: Device,
    missing: tuple[str, ...],
) -> tuple[RuleNote, ...]:
    notes = [RuleNote(spec.primary_rules, f"{spec.name}: the primary unit is the {_unit_text(primary)}")]
    text = f"{spec.name}: support tickets quote the {ticket.product}'s serial"
    others = _unique(
        m.device.product for m in members if m.device is not ticket and m.device.product != ticket.product
    )
    if ticket is not primary and others:
        text += f", not the {', '.join(others)}'s"
    notes.append(RuleNote(spec.ticket_rules, text))
    for role in missing:
        products = " or ".join(spec.role(role).products)
        notes.append(
            RuleNote(
                _unique(spec.primary_rules + spec.ticket_rules),
                f"{spec.name}: no {products} found among the room's units "
                f"(role {role}; when the agent runs on that unit it does not list "
                "itself)",
            )
        )
    return tuple(notes)


# --------------------------------------------------------------------------- a room


def summarize_room(room_id: str, devices: Iterable[Device], catalog: Catalog) -> RoomSummary:
    """Systems, primary unit, ticket serial, key devices and flags of one room."""
    top = list(devices)
    systems, standalone = group_systems(top, catalog)
    notes: list[RuleNote] = []
    flags: set[str] = set()
    if not top:
        flags.add("no-devices-found")
    primary, ticket = _room_units(systems, standalone, catalog, notes, flags)
    first = systems[0] if systems else None
    if primary is not None and label_serial(primary) is None:
        flags.add("primary-unit-serial-unknown")
        notes.append(
            RuleNote(
                first.primary_rules if first else _STANDALONE_RULES,
                f"the primary unit {_unit_text(primary)} has no label-grade serial: read it from its label",
            )
        )
    if ticket is not None and label_serial(ticket) is None:
        flags.add("ticket-serial-unknown")
        notes.append(
            RuleNote(
                first.ticket_rules if first else _STANDALONE_RULES,
                f"the unit tickets quote, {_unit_text(ticket)}, has no label-grade "
                "serial: read it from its label; no other unit's serial stands in",
            )
        )
    if any(s.missing for s in systems):
        flags.add("system-incomplete")
    keys = _key_devices(systems, standalone, catalog, notes, flags)
    return RoomSummary(
        room_id=room_id,
        systems=tuple(systems),
        standalone=tuple(standalone),
        primary_unit=label_serial(primary) if primary else None,
        primary_product=primary.product if primary else None,
        ticket_serial=label_serial(ticket) if ticket else None,
        ticket_product=ticket.product if ticket else None,
        key_devices=keys,
        flags=tuple(sorted(flags)),
        rules=tuple(n for s in systems for n in s.rules) + tuple(notes),
    )


def _room_units(
    systems: Sequence[System],
    standalone: Sequence[Device],
    catalog: Catalog,
    notes: list[RuleNote],
    flags: set[str],
) -> tuple[Device | None, Device | None]:
    """The room's primary unit and the unit its tickets quote (P1, P2)."""
    if systems:
        first = systems[0]
        notes.append(
            RuleNote(
                first.primary_rules,
                f"the room's primary unit is the {_unit_text(first.primary)} of its {first.name}",
            )
        )
        if len(systems) > 1:
            flags.add("primary-unit-ambiguous")
            names = ", ".join(s.name for s in systems)
            notes.append(
                RuleNote(
                    first.primary_rules,
                    f"the room holds {len(systems)} systems "
                    f"({names}): the first gives the room's "
                    "primary unit and ticket serial; check the "
                    "room map",
                )
            )
        return first.primary, first.ticket
    candidates = _standalone_primaries(standalone, catalog)
    if not candidates:
        if standalone:
            flags.add("no-primary-unit")
            notes.append(
                RuleNote(
                    _STANDALONE_RULES, "no unit of the room is a primary unit: nothing to register or quote"
                )
            )
        return None, None
    chosen = candidates[0]
    tier = catalog.products[chosen.product].key_device
    if sum(1 for d in candidates if catalog.products[d.product].key_device == tier) > 1:
        flags.add("primary-unit-ambiguous")
    notes.append(
        RuleNote(
            _STANDALONE_RULES,
            f"no system in the room: the {_unit_text(chosen)} "
            "stands on its own and is its own primary unit; "
            "tickets quote it",
        )
    )
    return chosen, chosen


def _standalone_primaries(standalone: Sequence[Device], catalog: Catalog) -> list[Device]:
    """Standalone primary units (children included), key devices first, then catalog order."""
    rank = {name: i for i, name in enumerate(catalog.products)}
    found = [d for d in units(standalone) if (p := catalog.get(d.product)) is not None and p.primary_unit]
    return sorted(
        found, key=lambda d: (not catalog.products[d.product].key_device, rank[d.product], _order(d))
    )


def _key_devices(
    systems: Sequence[System],
    standalone: Sequence[Device],
    catalog: Catalog,
    notes: list[RuleNote],
    flags: set[str],
) -> tuple[KeyDevice, ...]:
    placed: list[tuple[Device, str | None]] = [(m.device, s.name) for s in systems for m in s.members]
    placed.extend((d, None) for d in units(standalone))
    keys = []
    for device, system in placed:
        product = catalog.get(device.product)
        if product is None or not product.key_device:
            continue
        key = KeyDevice(
            device.identity,
            device.product,
            device.model,
            device.serial,
            bool(device.serial and device.serial_label_grade),
            device.firmware,
            system,
        )
        keys.append(key)
        if key.registrable:
            notes.append(
                RuleNote((KEY_DEVICE_RULE,), f"key device {_unit_text(device)}: register it to the room")
            )
        else:
            flags.add("key-device-unregistered")
            notes.append(
                RuleNote(
                    (KEY_DEVICE_RULE,),
                    f"key device {_unit_text(device)} at "
                    f"{device.address}: read the serial from its "
                    "label and register it to the room",
                )
            )
    return tuple(keys)
