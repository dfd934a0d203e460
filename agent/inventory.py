"""Turning observations into devices placed in rooms, and rooms into systems.

Placement, most explicit first (issue [4/7], part 1):

1. a room the source knows (``Observation.room``: a configured SSH host's ``room``, and the
   units on that PC's USB; a configured CollabOS device's ``room``, and its Tap IP) — never
   overridden;
2. this host's own USB units (:data:`LOCAL_USB_SOURCES`) stand in the configured room;
3. the room map (:mod:`agent.roommap`) places the rest by serial, host name, address or CIDR.
   A unit on a room PC's USB (``attributes["attached_to"]`` names the PC's address), or paired
   with a bar that reported it (a Tap IP: ``attributes["paired_with"]`` names the bar's
   address), goes where the map puts that PC or bar, unless a ``serial`` row names the unit
   itself;
4. anything else is *unassigned*: listed, never dropped.

Each room's units are then grouped into systems with a primary unit and a ticket serial by
:func:`agent.systems.summarize_room` (part 2); :func:`summarize_rooms` does it for every room.

Placement is per reading (one channel's view of a unit); :func:`units_from_observations`
then merges the readings of one unit into one device (:mod:`agent.identity`,
docs/identity.md), as the store does across scans.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from agent.catalog import Catalog
from agent.identity import MergeRules, merge_readings
from agent.model import OTHER, Device, Observation, Room, Transport
from agent.roommap import MatchKind, RoomMap
from agent.systems import RoomSummary, summarize_room

#: Sources whose USB observations are of this host's own buses (a replayed recording stands
#: for a device on the buses of the host it was recorded on: run it with that host's config).
LOCAL_USB_SOURCES = frozenset({"usb", "replay"})
#: The attribute a unit read through a room PC carries: the PC's address in the inventory.
ATTACHED_TO = "attached_to"
#: The attribute a unit a CollabOS bar reports as paired with it carries (a Tap IP): the
#: bar's address. Placement follows the bar as it follows a room PC.
PAIRED_WITH = "paired_with"


def room_for(obs: Observation, local_room: Room | None) -> str | None:
    if obs.room:
        return obs.room
    if local_room is not None and obs.transport is Transport.USB and obs.source in LOCAL_USB_SOURCES:
        return local_room.id
    return None


def devices_from_observations(
    observations: Iterable[Observation],
    local_room: Room | None,
    catalog: Catalog | None = None,
    room_map: RoomMap | None = None,
) -> list[Device]:
    devices = [Device.from_observation(o, room=room_for(o, local_room)) for o in observations]
    if room_map is not None:
        for device, room in zip(devices, map_rooms(devices, room_map), strict=True):
            _set_room(device, room)
    if catalog is not None:
        for device in devices:
            _categorise(device, catalog)
    devices.sort(key=lambda d: (d.room or "", d.transport, d.address))
    return devices


def merge_rules(catalog: Catalog | None) -> MergeRules:
    """What the catalog adds to the merge rules (its generic product names)."""
    if catalog is None:
        return MergeRules()
    return MergeRules(generic_products=frozenset(p.name for p in catalog.products.values() if p.generic))


def units_from_readings(readings: Sequence[Device], catalog: Catalog | None = None) -> list[Device]:
    """One device per unit from a scan's readings (placed and categorised), sorted as
    :func:`devices_from_observations` sorts."""
    units = merge_readings(readings, merge_rules(catalog))
    units.sort(key=lambda d: (d.room or "", d.transport, d.address))
    return units


def map_rooms(devices: Sequence[Device], room_map: RoomMap) -> list[str | None]:
    """The room of each of ``devices``: its own when it has one, else the map's (the order
    above). Pure: the devices are not changed."""
    rooms = [d.room or _room_of(d, room_map) for d in devices]
    pcs = {d.address: i for i, d in enumerate(devices) if _pc_address(d) is None}
    for i, device in enumerate(devices):
        pc = _pc_address(device)
        if device.room or pc is None or pc not in pcs:
            continue
        own = room_map.match(device)
        if own is not None and own.rule.match is MatchKind.SERIAL:
            rooms[i] = own.room
        elif rooms[pcs[pc]] is not None:
            rooms[i] = rooms[pcs[pc]]
    return rooms


def _room_of(device: Device, room_map: RoomMap) -> str | None:
    found = room_map.match(device)
    return found.room if found else None


def _pc_address(device: Device) -> str | None:
    """The address of the unit ``device`` goes with: the PC it is attached to, or the bar it
    is paired with."""
    for key in (ATTACHED_TO, PAIRED_WITH):
        value = device.attributes.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _set_room(device: Device, room: str | None) -> None:
    device.room = room
    for child in device.children:
        _set_room(child, room)


def _categorise(device: Device, catalog: Catalog) -> None:
    product = catalog.get(device.product)
    device.category = product.family if product is not None else OTHER
    for child in device.children:
        _categorise(child, catalog)


# --------------------------------------------------------------------------- rooms


@dataclass(frozen=True, slots=True)
class RoomsReport:
    """Every room with its summary (sorted by room id), and the units placed in none."""

    rooms: tuple[RoomSummary, ...] = ()
    unassigned: tuple[Device, ...] = ()
    #: What is known of each room (configuration, room map); a room only seen on devices is
    #: a bare :class:`Room` with its id.
    directory: dict[str, Room] = field(default_factory=dict)

    def room(self, room_id: str) -> Room:
        return self.directory.get(room_id) or Room(room_id)


def known_rooms(local_room: Room | None, room_map: RoomMap | None) -> list[Room]:
    """The rooms the configuration and the room map name. Where both describe one room, the
    configuration's details win and the map's fill the gaps."""
    found: dict[str, Room] = dict(room_map.rooms) if room_map is not None else {}
    if local_room is not None:
        mapped = found.get(local_room.id)
        found[local_room.id] = (
            local_room
            if mapped is None
            else replace(
                local_room,
                name=local_room.name if local_room.name is not None else mapped.name,
                group=local_room.group if local_room.group is not None else mapped.group,
                location=local_room.location if local_room.location is not None else mapped.location,
                seat_count=local_room.seat_count if local_room.seat_count is not None else mapped.seat_count,
                platform=local_room.platform if local_room.platform is not None else mapped.platform,
            )
        )
    return list(found.values())


def merge_rooms(stored: Iterable[Room], configured: Iterable[Room]) -> list[Room]:
    """The rooms a report lists: those the store knows, overlaid by those the configuration
    and the room map name now (their details win)."""
    rooms = {r.id: r for r in stored}
    rooms.update({r.id: r for r in configured})
    return list(rooms.values())


def summarize_rooms(devices: Iterable[Device], catalog: Catalog, rooms: Iterable[Room] = ()) -> RoomsReport:
    """Group placed devices by room and summarise each room (systems, primary unit, ticket
    serial, key devices, flags). Every room in ``rooms`` is listed, found empty or not; a
    device with no room is listed under ``unassigned``."""
    directory = {r.id: r for r in rooms}
    by_room: dict[str, list[Device]] = {room_id: [] for room_id in directory}
    unassigned: list[Device] = []
    for device in devices:
        if device.room is None:
            unassigned.append(device)
        else:
            by_room.setdefault(device.room, []).append(device)
            directory.setdefault(device.room, Room(device.room))
    summaries = tuple(summarize_room(room_id, by_room[room_id], catalog) for room_id in sorted(by_room))
    return RoomsReport(summaries, tuple(unassigned), directory)
