"""PyUsbTransport: the Sync Agent interface of a real device, through pyusb/libusb.

Small on purpose; it cannot be exercised against hardware in CI. What it does:

* finds the Sync Agent interface (class 0xFF, subclass 118) and its bulk endpoints in the
  *active* configuration's descriptors (:mod:`agent.collectors.sync.interfaces`); never
  the firmware-update (117) or ADB (66) interfaces, never a hard-coded endpoint;
* detaches a kernel driver from that one interface only if one is bound, claims it, and on
  close always releases it (and re-attaches what it detached), even after an error;
* never changes the configuration or the alternate setting;
* passes every write through the read-only gate (:func:`~agent.collectors.sync.guard.check_outgoing`)
  before libusb sees it.

Usage::

    with PyUsbTransport(usb_device) as transport:
        reply = SyncClient(transport).get_device_info()
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any

import usb.core
import usb.util

from agent.collectors.sync.errors import TransportError, TransportTimeout
from agent.collectors.sync.guard import check_outgoing
from agent.collectors.sync.interfaces import (
    EndpointInfo,
    InterfaceInfo,
    SyncEndpoints,
    select_sync_interface,
)


def kernel_driver_active(device: Any, number: int) -> bool:
    """Whether a kernel driver holds interface ``number``. Cannot tell (a backend without
    kernel drivers, an ioctl the platform refuses): ``False``, detach nothing — if a driver
    does hold the interface, claiming it fails with "busy" and the error says so."""
    try:
        return bool(device.is_kernel_driver_active(number))
    except (NotImplementedError, usb.core.USBError):
        return False


def interfaces_of(configuration: Any) -> list[InterfaceInfo]:
    """A pyusb Configuration's interfaces as plain data (cached descriptors, no I/O)."""
    return [
        InterfaceInfo(
            intf.bInterfaceNumber,
            intf.bAlternateSetting,
            intf.bInterfaceClass,
            intf.bInterfaceSubClass,
            intf.bInterfaceProtocol,
            tuple(EndpointInfo(ep.bEndpointAddress, ep.bmAttributes) for ep in intf),
        )
        for intf in configuration
    ]


def find_sync_endpoints(device: Any) -> SyncEndpoints:
    """The Sync Agent interface of a pyusb device's active configuration."""
    try:
        configuration = device.get_active_configuration()
    except (usb.core.USBError, NotImplementedError) as exc:
        raise TransportError(f"cannot read the active configuration: {exc}") from exc
    return select_sync_interface(interfaces_of(configuration))


def _ms(seconds: float) -> int:
    # pyusb/libusb read a timeout of 0 as "wait forever": never pass it.
    return max(1, int(seconds * 1000))


class PyUsbTransport:
    """Bulk transfers on the Sync Agent interface of one pyusb ``usb.core.Device``."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.endpoints = find_sync_endpoints(device)
        self._claimed = False
        self._reattach = False

    def open(self) -> PyUsbTransport:
        number = self.endpoints.interface
        try:
            if self._kernel_driver_active(number):
                self.device.detach_kernel_driver(number)
                self._reattach = True
            usb.util.claim_interface(self.device, number)
            self._claimed = True
        except usb.core.USBError as exc:
            self.close()
            raise TransportError(
                f"cannot claim Sync Agent interface {number} (is Logitech "
                f"Sync or another program using it?): {exc}"
            ) from exc
        return self

    def close(self) -> None:
        """Release the interface and give back a detached kernel driver. Never raises."""
        number = self.endpoints.interface
        # Each step on its own: a device that vanished must not stop the next one.
        if self._claimed:
            with contextlib.suppress(usb.core.USBError):
                usb.util.release_interface(self.device, number)
            self._claimed = False
        if self._reattach:
            with contextlib.suppress(usb.core.USBError, NotImplementedError):
                self.device.attach_kernel_driver(number)
            self._reattach = False
        with contextlib.suppress(usb.core.USBError):
            usb.util.dispose_resources(self.device)

    def __enter__(self) -> PyUsbTransport:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def write(self, data: bytes, timeout: float) -> None:
        check_outgoing(data)  # read-only gate: refuses anything but the GetDeviceInfo exchange
        if not self._claimed:
            raise TransportError("Sync Agent interface is not claimed: call open() first")
        try:
            written = self.device.write(self.endpoints.out_address, data, timeout=_ms(timeout))
        except usb.core.USBTimeoutError as exc:
            raise TransportTimeout(f"bulk OUT write timed out after {timeout:g} s") from exc
        except usb.core.USBError as exc:
            raise TransportError(f"bulk OUT write failed: {exc}") from exc
        if written != len(data):
            raise TransportError(f"bulk OUT wrote {written} of {len(data)} bytes")

    def read(self, size: int, timeout: float) -> bytes:
        if not self._claimed:
            raise TransportError("Sync Agent interface is not claimed: call open() first")
        try:
            return bytes(self.device.read(self.endpoints.in_address, size, timeout=_ms(timeout)))
        except usb.core.USBTimeoutError as exc:
            raise TransportTimeout(f"bulk IN read timed out after {timeout:g} s") from exc
        except usb.core.USBError as exc:
            raise TransportError(f"bulk IN read failed: {exc}") from exc

    def _kernel_driver_active(self, number: int) -> bool:
        return kernel_driver_active(self.device, number)
