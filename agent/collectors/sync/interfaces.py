"""Finding the Sync Agent interface among a device's USB interfaces.

Pure logic over a plain description of the interfaces, so the same rule serves a live pyusb
device and the descriptors stored in a recording (protocols.md; recorded Rally Bar):

* the Sync Agent interface is class 0xFF, subclass 118, protocol 1 (interface 3 on the
  recorded bar) with one bulk OUT and one bulk IN endpoint (0x02 / 0x84 there — found here,
  never hard-coded);
* subclass 117 is the firmware-update interface and subclass 66 is ADB: they are never
  selected, whatever else is wrong with the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.collectors.sync.errors import TransportError

VENDOR_CLASS = 0xFF
SYNC_SUBCLASS = 118
SYNC_PROTOCOL = 1
#: Interfaces of the same vendor class that roomsync must never touch.
FORBIDDEN_SUBCLASSES = {117: "firmware update", 66: "ADB"}
_BULK = 0x02
_DIR_IN = 0x80


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    address: int
    #: bmAttributes; ``None`` when the source did not record it (fwupd recordings store
    #: only the address), in which case the endpoint is taken to be bulk.
    attributes: int | None = _BULK

    @property
    def is_in(self) -> bool:
        return bool(self.address & _DIR_IN)

    @property
    def is_bulk(self) -> bool:
        return self.attributes is None or self.attributes & 0x03 == _BULK


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    number: int
    alternate: int
    cls: int
    subclass: int
    protocol: int
    endpoints: tuple[EndpointInfo, ...] = ()

    @property
    def is_sync(self) -> bool:
        return (self.cls, self.subclass, self.protocol) == (VENDOR_CLASS, SYNC_SUBCLASS, SYNC_PROTOCOL)


@dataclass(frozen=True, slots=True)
class SyncEndpoints:
    """Where to talk: the interface number and its bulk endpoint addresses."""

    interface: int
    out_address: int
    in_address: int


def select_sync_interface(interfaces: Iterable[InterfaceInfo]) -> SyncEndpoints:
    """The Sync Agent interface and its two bulk endpoints.

    Only alternate setting 0 is considered: selecting another one would send
    SET_INTERFACE, a state change roomsync does not make. Raises
    :class:`~agent.collectors.sync.errors.TransportError` when there is none or its
    endpoints are not one bulk OUT plus one bulk IN.
    """
    seen = list(interfaces)
    candidates = [
        i for i in seen if i.is_sync and i.alternate == 0 and i.subclass not in FORBIDDEN_SUBCLASSES
    ]
    if not candidates:
        listed = ", ".join(f"{i.number}:{i.cls:#04x}/{i.subclass}/{i.protocol}" for i in seen)
        raise TransportError(
            f"no Sync Agent interface (class 0xff, subclass {SYNC_SUBCLASS}, "
            f"protocol {SYNC_PROTOCOL}) among interfaces [{listed}]"
        )
    chosen = min(candidates, key=lambda i: i.number)
    outs = [e.address for e in chosen.endpoints if e.is_bulk and not e.is_in]
    ins = [e.address for e in chosen.endpoints if e.is_bulk and e.is_in]
    if len(outs) != 1 or len(ins) != 1:
        raise TransportError(
            f"Sync Agent interface {chosen.number} has {len(outs)} bulk OUT "
            f"and {len(ins)} bulk IN endpoints; expected one of each"
        )
    return SyncEndpoints(chosen.number, outs[0], ins[0])
