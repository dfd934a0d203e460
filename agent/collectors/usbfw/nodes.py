"""The device nodes the firmware collectors talk to, found from sysfs, and how they are used.

* :class:`VideoNode` — a video4linux node (``/dev/videoN``): the unit's capture node is the
  one whose sysfs ``index`` is 0 under one of its interfaces (index 1 is the metadata node of
  the same camera). UVC extension-unit queries go through ``UVCIOC_CTRL_QUERY``.
* :class:`HidrawNode` — a hidraw node (``/dev/hidrawN``) under one of the unit's interfaces:
  feature reports go through ``HIDIOCGFEATURE``/``HIDIOCSFEATURE``.

A node is opened read-write only because the kernel wants that for these ioctls; it is always
closed (``with``). Every request passes the collector's gate before the ioctl is built. A node
that is absent, busy or not ours to open is :class:`NodeUnavailable` (the descriptor facts
stand, with an info note); a reached node whose ioctl fails is :class:`NodeFailed`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from agent.collectors.usbfw.requests import (
    UVC_SET_CUR,
    VIDIOC_QUERYCAP,
    HidRequest,
    UvcRequest,
    check_hid_request,
    check_uvc_request,
    hidiocgfeature,
    hidiocsfeature,
)

#: Where device nodes live (a test or umockdev may point elsewhere).
DEV = Path("/dev")
_UNAVAILABLE = {errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EBUSY, errno.EACCES, errno.EPERM}


class NodeUnavailable(Exception):
    """The node is absent, busy or not ours to open: a normal state on many hosts."""


class NodeFailed(Exception):
    """The node was opened, but a request to it failed (the device errored or went away)."""


def _children(record_path: Path, subsystem: str) -> list[Path]:
    """The ``subsystem`` class devices under the USB device at ``record_path`` (any depth
    below its interfaces: hidraw sits under the interface's HID device)."""
    found: list[Path] = []
    for pattern in (f"*:*/{subsystem}/*", f"*:*/*/{subsystem}/*"):
        found.extend(
            p for p in record_path.glob(pattern) if p.name.startswith(subsystem.replace("4linux", ""))
        )
    return sorted(set(found), key=lambda p: (len(p.name), p.name))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def video_capture_node(record_path: Path) -> str | None:
    """The name (``video0``) of the unit's capture node: index 0 under one of its interfaces."""
    for node in _children(record_path, "video4linux"):
        if _read(node / "index") == "0":
            return node.name
    return None


def hidraw_nodes(record_path: Path) -> list[str]:
    """The names (``hidraw3``) of the hidraw nodes under the unit's interfaces, in order."""
    return [node.name for node in _children(record_path, "hidraw")]


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _UNAVAILABLE:
            raise NodeUnavailable(f"{path}: {exc.strerror}") from None
        raise NodeFailed(f"{path}: cannot open: {exc.strerror or exc}") from None


class _XuQuery(ctypes.Structure):
    """``struct uvc_xu_control_query`` (linux/uvcvideo.h)."""

    _fields_ = (
        ("unit", ctypes.c_uint8),
        ("selector", ctypes.c_uint8),
        ("query", ctypes.c_uint8),
        ("size", ctypes.c_uint16),
        ("data", ctypes.POINTER(ctypes.c_uint8)),
    )


#: ``_IOWR('u', 0x21, struct uvc_xu_control_query)`` for this process's own struct size: the
#: documented 0xC0107521 on LP64 (x86-64, arm64); a 32-bit process's 12-byte struct has its
#: own number, which its kernel (or an arm64 kernel's compat layer) expects.
UVCIOC_CTRL_QUERY_NATIVE = 0xC0000000 | (ctypes.sizeof(_XuQuery) << 16) | (ord("u") << 8) | 0x21


class _Node:
    """A device node (``path``), open (``fd``) for the ``with`` block and always closed after."""

    path: Path
    fd: int

    def __enter__(self) -> Self:
        self.fd = _open(self.path)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(slots=True)
class VideoNode(_Node):
    """A video4linux node of one unit, opened for one recipe's queries."""

    path: Path
    #: The USB device's raw descriptors (sysfs ``descriptors``), to find extension units.
    descriptors: bytes | None = None
    fd: int = -1

    def capabilities(self) -> int:
        """The node's device capabilities (``VIDIOC_QUERYCAP``; asks the driver, not the
        device)."""
        buf = bytearray(104)
        try:
            fcntl.ioctl(self.fd, VIDIOC_QUERYCAP, buf, True)
        except OSError as exc:
            raise NodeFailed(f"{self.path}: VIDIOC_QUERYCAP: {exc.strerror or exc}") from None
        caps, device_caps = int.from_bytes(buf[84:88], "little"), int.from_bytes(buf[88:92], "little")
        return device_caps if caps & 0x80000000 else caps

    def query(self, request: UvcRequest) -> bytes:
        """One extension-unit query, through the gate; the bytes the device answered."""
        check_uvc_request(request)
        buffer = (ctypes.c_uint8 * max(request.size, 1))()
        if request.data is not None:
            ctypes.memmove(buffer, request.data, len(request.data))
        query = _XuQuery(request.unit, request.selector, request.query, request.size, buffer)
        try:
            fcntl.ioctl(self.fd, UVCIOC_CTRL_QUERY_NATIVE, query, True)
        except OSError as exc:
            raise NodeFailed(
                f"{self.path}: UVC query 0x{request.query:02x} of unit {request.unit} selector "
                f"{request.selector}: {exc.strerror or exc}"
            ) from None
        return b"" if request.query == UVC_SET_CUR else bytes(buffer[: request.size])


@dataclass(slots=True)
class HidrawNode(_Node):
    """A hidraw node of one unit."""

    path: Path
    fd: int = -1

    def feature(self, request: HidRequest) -> bytes:
        """A SET_FEATURE (nothing back) or a GET_FEATURE (the report, its id first), through
        the gate."""
        check_hid_request(request)
        if request.kind == "set":
            assert request.data is not None
            buf = bytearray(request.data)
            number = hidiocsfeature(len(buf))
        else:
            buf = bytearray(request.length)
            buf[0] = request.report
            number = hidiocgfeature(len(buf))
        try:
            answered = fcntl.ioctl(self.fd, number, buf, True)
        except OSError as exc:
            raise NodeFailed(
                f"{self.path}: {request.kind.upper()}_FEATURE of report 0x{request.report:02x}: "
                f"{exc.strerror or exc}"
            ) from None
        if request.kind == "set":
            return b""
        return bytes(buf[: max(0, min(int(answered), len(buf)))])
