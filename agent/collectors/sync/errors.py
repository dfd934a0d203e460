"""The errors of the Sync-interface collector, in one place.

Everything this package raises on bad input, a misbehaving device or a broken recording is
a :class:`SyncError`, so the USB source can catch one type, report the device as unreadable
and go on with the scan (one broken device never takes the others down). The subclasses say
*which layer* failed, and their messages say what was wrong and where.
"""

from __future__ import annotations

from agent.readonly import ReadOnlyViolation as _ReadOnlyViolation


class SyncError(Exception):
    """Base class: the Sync interface of one device could not be read."""


class FrameError(SyncError, ValueError):
    """A transfer is not a well-formed Sync frame (truncated, oversized, unknown command)."""


class ProtoError(SyncError, ValueError):
    """A frame payload is not a ``UsbMsg`` this collector understands."""


class ReadOnlyViolation(SyncError, _ReadOnlyViolation):
    """Something tried to send the device a frame other than the read-only GetDeviceInfo
    exchange. Raised before a single byte leaves the process."""


class TransportError(SyncError):
    """The bulk transport failed (device gone, permission denied, pipe error…)."""


class TransportTimeout(TransportError, TimeoutError):
    """One read got no data within its timeout (libusb ``LIBUSB_ERROR_TIMEOUT``, -7)."""


class SyncTimeout(SyncError, TimeoutError):
    """The device did not complete the exchange within the deadline or the retry budget."""


class SyncProtocolError(SyncError):
    """The device answered, but not as the protocol says (Nack, wrong ack, flood…)."""


class ReplayError(SyncError):
    """A recorded session cannot answer what the client sent, or is itself unusable."""


class DeviceInfoError(SyncError, ValueError):
    """A GetDeviceInfo JSON document is unusable (not JSON, too large, too deep, no device)."""
