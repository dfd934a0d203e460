"""The Sync Agent interface of CollabOS bars (Rally Bar, Mini, Huddle, 0x0963), read over USB
the way Logitech Sync reads it — read-only: the one request ever sent is GetDeviceInfo.

Layers, bottom up (each its own small module):

* :mod:`.frames` — the 12-byte frame header, acks;
* :mod:`.proto` — the ``UsbMsg`` protobuf envelope, declared in code;
* :mod:`.guard` — the outgoing gate every written byte passes;
* :mod:`.client` — :class:`SyncClient`, the GetDeviceInfo exchange over a transport;
* :mod:`.pyusb_transport` / :mod:`.replay` — a real device, or a recorded session;
* :mod:`.device_info` — the JSON answer → observations.

Typical use::

    with PyUsbTransport(usb_device) as transport:            # or ReplayTransport.from_file(p)
        observation = read_device_info(transport, address="2-1.1", now=now)

Everything raised is a :class:`SyncError`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent.catalog import Catalog
from agent.collectors.sync.client import DeviceInfoReply, SyncClient, SyncTransport
from agent.collectors.sync.device_info import NAME, parse_device_info
from agent.collectors.sync.errors import (
    DeviceInfoError,
    FrameError,
    ProtoError,
    ReadOnlyViolation,
    ReplayError,
    SyncError,
    SyncProtocolError,
    SyncTimeout,
    TransportError,
    TransportTimeout,
)
from agent.collectors.sync.guard import check_outgoing
from agent.collectors.sync.interfaces import SyncEndpoints, select_sync_interface
from agent.collectors.sync.pyusb_transport import PyUsbTransport, find_sync_endpoints
from agent.collectors.sync.replay import (
    RecordedDevice,
    Recording,
    ReplayTransport,
    load_recording,
)
from agent.model import Observation

__all__ = [
    "NAME",
    "DeviceInfoError",
    "DeviceInfoReply",
    "FrameError",
    "ProtoError",
    "PyUsbTransport",
    "ReadOnlyViolation",
    "RecordedDevice",
    "Recording",
    "ReplayError",
    "ReplayTransport",
    "SyncClient",
    "SyncEndpoints",
    "SyncError",
    "SyncProtocolError",
    "SyncTimeout",
    "SyncTransport",
    "TransportError",
    "TransportTimeout",
    "check_outgoing",
    "find_sync_endpoints",
    "load_recording",
    "parse_device_info",
    "read_device_info",
    "select_sync_interface",
]


def read_device_info(
    transport: SyncTransport,
    *,
    address: str,
    now: datetime,
    catalog: Catalog | None = None,
    source: str = NAME,
    **client_options: Any,
) -> Observation:
    """GetDeviceInfo over ``transport``, parsed: the bar with its devices and peripherals
    as children. How the exchange went is kept in ``attributes["sync_exchange"]``.

    ``client_options`` go to :class:`SyncClient` (``deadline``, ``read_timeout``…).
    Raises :class:`SyncError` (one of its subclasses) when the device cannot be read.
    """
    reply = SyncClient(transport, **client_options).get_device_info()
    observation = parse_device_info(reply.json_text, address=address, now=now, catalog=catalog, source=source)
    observation.attributes["sync_exchange"] = {
        "attempts": reply.attempts,
        "read_timeouts": reply.read_timeouts,
        "unsolicited": reply.unsolicited,
        "closed": reply.closed,
    }
    return observation
