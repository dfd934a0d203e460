"""Turning observations into devices placed in rooms.

Today: one device per observation, USB units of this host placed in the configured room
(every unit on a room PC's or Pi's own USB stands in that room). Merging observations of one
unit seen through several channels, room maps for LAN devices and systems with primary
units build on this (issue [4/7]).
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.catalog import Catalog
from agent.model import OTHER, Device, Observation, Room, Transport

#: Sources whose USB observations are of this host's own buses (a replayed recording stands
#: for a device on the buses of the host it was recorded on: run it with that host's config).
LOCAL_USB_SOURCES = frozenset({"usb", "replay"})


def room_for(obs: Observation, local_room: Room | None) -> str | None:
    if obs.room:
        return obs.room
    if local_room is not None and obs.transport is Transport.USB and obs.source in LOCAL_USB_SOURCES:
        return local_room.id
    return None


def devices_from_observations(observations: Iterable[Observation],
                              local_room: Room | None, catalog: Catalog | None = None) -> list[Device]:
    devices = [Device.from_observation(o, room=room_for(o, local_room)) for o in observations]
    if catalog is not None:
        for device in devices:
            _categorise(device, catalog)
    devices.sort(key=lambda d: (d.room or "", d.transport, d.address))
    return devices


def _categorise(device: Device, catalog: Catalog) -> None:
    product = catalog.get(device.product)
    device.category = product.family if product is not None else OTHER
    for child in device.children:
        _categorise(child, catalog)
