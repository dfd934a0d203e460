"""Run code that makes real ``ioctl()`` calls on an emulated ``/dev/videoN`` or ``/dev/hidrawN``.

A test builds an :class:`IoctlTestbed`: an umockdev testbed (sysfs tree and device nodes) whose
nodes are answered by Python callbacks of the test, through umockdev's custom ioctl handler
API (``UMockdev.IoctlBase`` ``handle-ioctl``, ``Testbed.attach_ioctl``). The code under test
runs with :meth:`IoctlTestbed.run` and makes ordinary ``os.open``/``fcntl.ioctl`` calls; every
request reaches the test's callback byte for byte and is recorded in
:attr:`IoctlTestbed.requests`::

    with IoctlTestbed.required() as bed:        # or IoctlTestbed() outside pytest
        bed.add_uvc_device(SYSFS, vid=0x046D, pid=0x08E2, answer=lambda q: REPLIES[q.query])
        version = bed.run(read_firmware, "/dev/video0")   # a module-level function
        assert bed.requests == [UvcQuery("/dev/video0", 8, 1, UVC_GET_LEN, 2, b"\\0\\0"), ...]

Where things run (tried both ways on Debian 12, umockdev 0.17.16):

* umockdev reaches ``open``/``ioctl`` through ``LD_PRELOAD=libumockdev-preload.so.0``, which
  must be there when the process starts: it cannot be added to a running pytest. Testbed,
  handler and code under test *can* share one process, but only one that was started under
  ``umockdev-wrapper``: that would mean running all of pytest (every other test) under the
  preload, or re-executing pytest per test (seconds each). Not done.
* The testbed itself needs no preload when it is built with ``add_device(…, parent=None)``
  with the full path (a parent given by path is checked through ``/sys``, which only the
  preload maps; that call fails in a plain process). So the :class:`IoctlTestbed` lives in
  the test process, and umockdev's own worker thread (started by ``Testbed.new()``, with its
  GLib main loop) runs the handler there: the callbacks are plain closures of the test and
  see its state, with no main loop to iterate by the test.
* The code under test runs in a **child Python** (``sys.executable``) started with
  ``LD_PRELOAD`` and ``UMOCKDEV_DIR``: :meth:`IoctlTestbed.run` pickles the function (by
  reference: it must be importable at module level, e.g. from the test module or from
  ``agent``) and its arguments to the child's stdin, and returns what it returned (or raises
  what it raised, with the child's traceback as a note). About 60 ms a call, plus importing
  the function's module (a test module imports pytest: about 0.1 s more).
  :meth:`IoctlTestbed.env` gives the environment for any other subprocess
  (``python -m agent …``).

The test process is left as it was: ``Testbed.new()`` sets ``UMOCKDEV_DIR`` in the C
environment, and it is unset at once (a child gets it explicitly). Each testbed leaves about
three file descriptors in the test process when it is closed (umockdev's fallback handler and
its worker context are never freed); the directory and the handlers are removed.

Safety: the child checks a token in the emulated ``/sys`` before running anything, so code
never runs against the real sysfs when the preload did not load. umockdev maps a ``/dev`` path
only when the testbed has that node, so the child also refuses (``ENOENT``) ``os.open``/``open``
of a ``/dev/video*``, ``/dev/hidraw*``, ``/dev/v4l*``, ``/dev/media*`` or ``/dev/bus/usb`` path
the testbed does not emulate: no real camera of a developer's machine is ever opened.

What the handler sees and answers (each call appends its record to ``bed.requests`` first):

* ``UVCIOC_CTRL_QUERY`` on a video node → ``answer(UvcQuery)``; ``q.data`` is the ``size``
  bytes the caller's ``data`` buffer held (what a ``SET_CUR`` sends). Return the reply bytes
  for a GET query (exactly ``size`` of them: the driver fills the buffer), ``None`` for
  ``SET_CUR``; an ``int`` (or raising :class:`OSError` with an errno) fails the ioctl with
  that errno.
* ``HIDIOCGFEATURE``/``HIDIOCSFEATURE`` on a hidraw node → ``answer(HidFeature)``; ``f.data``
  is the caller's whole buffer (byte 0 the report id). GET returns the report (report id
  first, at most the buffer's length; the ioctl returns its length); SET returns ``None``
  (the ioctl returns the buffer's length). An ``int`` or an :class:`OSError` fails it.
* ``VIDIOC_QUERYCAP``, ``HIDIOCGRAWINFO``/``NAME``/``PHYS``/``UNIQ``, ``HIDIOCGRDESCSIZE``/
  ``HIDIOCGRDESC`` are answered from the device's description (``querycap=`` overrides);
  any other ioctl is recorded as :class:`Ioctl` and goes to ``other=`` (default ``ENOTTY``,
  as a driver answers an ioctl it does not know). ``read``/``write`` on a node are recorded
  (:class:`Read`, :class:`Write`) and fail with ``EAGAIN``/``EIO``.
* Any other exception from a callback (an ``assert`` on a forbidden request, a reply of the
  wrong length) fails that ioctl with ``EIO`` and is raised again in the test by
  :meth:`~IoctlTestbed.run`, :meth:`~IoctlTestbed.check` and on leaving the ``with`` block,
  so a test fails even when the code under test swallows the error.
"""

from __future__ import annotations

import errno as errnos
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

REPO = Path(__file__).resolve().parents[1]
PRELOAD = "libumockdev-preload.so.0"
#: Written into the emulated sysfs; the child refuses to run unless it reads it back.
TOKEN_FILE = ".roomsync-ioctl-testbed"
_TOKEN_ENV = "RS_IOCTL_TESTBED_TOKEN"
_DEV_ENV = "RS_IOCTL_TESTBED_NODES"
_GUARDED = ("/dev/video", "/dev/hidraw", "/dev/v4l", "/dev/media", "/dev/bus/usb/", "/dev/usb/")

T = TypeVar("T")

# --------------------------------------------------------------------------- ioctl numbers

_IOC_WRITE, _IOC_READ = 1, 2


def ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """``_IOC()`` of asm-generic (x86-64, arm64)."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


def ioc_dir(request: int) -> int:
    return (request >> 30) & 0x3


def ioc_type(request: int) -> str:
    return chr((request >> 8) & 0xFF)


def ioc_nr(request: int) -> int:
    return request & 0xFF


def ioc_size(request: int) -> int:
    return (request >> 16) & 0x3FFF


UVCIOC_CTRL_QUERY = ioc(_IOC_READ | _IOC_WRITE, "u", 0x21, 16)  # 0xC0107521
VIDIOC_QUERYCAP = ioc(_IOC_READ, "V", 0x00, 104)  # 0x80685600
UVC_SET_CUR, UVC_GET_CUR, UVC_GET_MIN, UVC_GET_MAX = 0x01, 0x81, 0x82, 0x83
UVC_GET_RES, UVC_GET_LEN, UVC_GET_INFO, UVC_GET_DEF = 0x84, 0x85, 0x86, 0x87

HIDIOCGRDESCSIZE = ioc(_IOC_READ, "H", 0x01, 4)
HIDIOCGRDESC = ioc(_IOC_READ, "H", 0x02, 4 + 4096)
HIDIOCGRAWINFO = ioc(_IOC_READ, "H", 0x03, 8)


def hidiocgfeature(length: int) -> int:
    return ioc(_IOC_READ | _IOC_WRITE, "H", 0x07, length)


def hidiocsfeature(length: int) -> int:
    return ioc(_IOC_READ | _IOC_WRITE, "H", 0x06, length)


def hidiocgrawname(length: int) -> int:
    return ioc(_IOC_READ, "H", 0x04, length)


def hidiocgrawphys(length: int) -> int:
    return ioc(_IOC_READ, "H", 0x05, length)


def hidiocgrawuniq(length: int) -> int:
    return ioc(_IOC_READ, "H", 0x08, length)


V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_META_CAPTURE = 0x00800000
V4L2_CAP_EXT_PIX_FORMAT = 0x00200000
V4L2_CAP_STREAMING = 0x04000000
V4L2_CAP_DEVICE_CAPS = 0x80000000
#: What uvcvideo reports for a camera's capture node and for its metadata node.
CAPTURE_CAPS = V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_STREAMING | V4L2_CAP_EXT_PIX_FORMAT
METADATA_CAPS = V4L2_CAP_META_CAPTURE | V4L2_CAP_STREAMING | V4L2_CAP_EXT_PIX_FORMAT


def querycap_reply(
    card: str,
    bus_info: str,
    *,
    device_caps: int = CAPTURE_CAPS,
    driver: str = "uvcvideo",
    version: int = 0x00060100,
) -> bytes:
    """``struct v4l2_capability`` (104 bytes) as uvcvideo fills it."""
    capabilities = CAPTURE_CAPS | METADATA_CAPS | V4L2_CAP_DEVICE_CAPS
    return struct.pack(
        "=16s32s32sIII12x",
        driver.encode()[:15],
        card.encode()[:31],
        bus_info.encode()[:31],
        version,
        capabilities,
        device_caps,
    )


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class UvcQuery:
    """One ``UVCIOC_CTRL_QUERY``: the struct's fields and the ``size`` bytes at ``data``."""

    node: str
    unit: int
    selector: int
    query: int
    size: int
    data: bytes
    request: int = UVCIOC_CTRL_QUERY


@dataclass(frozen=True)
class HidFeature:
    """One ``HIDIOCGFEATURE`` (``op="get"``) or ``HIDIOCSFEATURE`` (``"set"``): the caller's
    whole buffer (its length is the request's size; byte 0 is the report id)."""

    node: str
    op: Literal["get", "set"]
    data: bytes
    #: The request number the caller used; by default the canonical one for ``op`` and
    #: ``len(data)``.
    request: int = -1

    def __post_init__(self) -> None:
        if self.request == -1:
            canonical = hidiocgfeature if self.op == "get" else hidiocsfeature
            object.__setattr__(self, "request", canonical(len(self.data)))

    @property
    def report_id(self) -> int:
        return self.data[0] if self.data else 0


@dataclass(frozen=True)
class Ioctl:
    """Any other ioctl: the request number and, for one that passes data to the driver
    (``_IOC_WRITE`` with a size), the bytes of its argument."""

    node: str
    request: int
    data: bytes = b""


@dataclass(frozen=True)
class Read:
    node: str
    size: int


@dataclass(frozen=True)
class Write:
    node: str
    data: bytes


Request = UvcQuery | HidFeature | Ioctl | Read | Write
#: What an answer callback returns: reply bytes, ``None`` (success without data) or an errno.
Reply = bytes | bytearray | int | None
UvcAnswer = Callable[[UvcQuery], Reply]
HidAnswer = Callable[[HidFeature], Reply]
OtherAnswer = Callable[[Ioctl], Reply]


@dataclass(frozen=True)
class EmulatedNode:
    """What :meth:`IoctlTestbed.add_uvc_device`/:meth:`~IoctlTestbed.add_hidraw_device` made."""

    node: str  #: ``/dev/video0``
    sysfs: str  #: the class device, ``/sys/devices/…/1-2:1.0/video4linux/video0``
    usb: str  #: the USB device, ``/sys/devices/…/1-2``


class WorkerDied(RuntimeError):
    """The child process ended without handing back a result."""


class _HandlerFailure(Exception):
    pass


# --------------------------------------------------------------------------- availability


def unavailable_reason() -> str | None:
    """Why an :class:`IoctlTestbed` cannot be made here (what to install), or ``None``."""
    try:
        import gi  # type: ignore[import-untyped]
    except ImportError:
        return (
            "PyGObject (gi) is not importable from this Python: install the Debian packages "
            "python3-gi and gir1.2-umockdev-1.0 and link gi into the venv (run ./scripts/bootstrap)"
        )
    try:
        gi.require_version("UMockdev", "1.0")
        from gi.repository import UMockdev  # type: ignore[import-untyped]  # noqa: F401
    except (ValueError, ImportError) as exc:
        return f"no UMockdev typelib ({exc}): install gir1.2-umockdev-1.0 (run ./scripts/bootstrap)"
    multiarch = _multiarch()
    candidates = [Path(d) / PRELOAD for d in (f"/usr/lib/{multiarch}", "/usr/lib64", "/usr/lib") if d]
    if not any(p.exists() for p in candidates):
        return f"{PRELOAD} is missing: install the Debian package umockdev (run ./scripts/bootstrap)"
    return None


def _multiarch() -> str:
    import sysconfig

    value = sysconfig.get_config_var("MULTIARCH")
    if value:
        return str(value)
    machine = os.uname().machine
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine, f"{machine}-linux-gnu")


# --------------------------------------------------------------------------- the testbed


@dataclass
class _Node:
    kind: Literal["video", "hidraw"]
    path: str
    answer: Callable[[Any], Reply]
    defaults: dict[int, Callable[[bytes], tuple[bytes, int]]] = field(default_factory=dict)
    querycap: bytes | int | None = None
    other: OtherAnswer | None = None


class IoctlTestbed:
    """An umockdev testbed whose device nodes are answered by the test's callbacks.

    Use it as a context manager (``with IoctlTestbed() as bed``), or call :meth:`close`. In a
    pytest test, :meth:`required` reports a missing umockdev/PyGObject through
    ``tests.shared.missing`` (a failure under ``CI=true``)."""

    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        import gi

        gi.require_version("UMockdev", "1.0")
        from gi.repository import UMockdev

        self._umockdev = UMockdev
        self._lock = threading.Lock()
        self._testbed: Any = UMockdev.Testbed.new()
        # The testbed exported UMOCKDEV_DIR into this process's C environment: take it out
        # again, so that no other subprocess of the test run inherits it.
        os.unsetenv("UMOCKDEV_DIR")
        self.root = Path(self._testbed.get_root_dir())
        self.sys = Path(self._testbed.get_sys_dir())
        self._token = os.urandom(16).hex()
        (self.sys / TOKEN_FILE).write_text(self._token, encoding="ascii")
        #: Every request the code under test made, in order (clear it between runs at will).
        self.requests: list[Request] = []
        #: Exceptions raised by the test's callbacks, not yet raised in the test.
        self.failures: list[BaseException] = []
        #: stdout and stderr of the last :meth:`run`.
        self.last_stdout = ""
        self.last_stderr = ""
        self._nodes: dict[str, _Node] = {}
        self._handlers: list[tuple[str, Any, list[int]]] = []
        self._usb: dict[str, tuple[int, int]] = {}
        self._made: set[str] = set()
        self._devnum = 1
        self._hid_seq = 0
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def required(cls) -> IoctlTestbed:
        """A new testbed; in a test, ``tests.shared.missing`` when umockdev is absent."""
        reason = unavailable_reason()
        if reason is not None:
            from tests.shared import missing

            missing(reason)
        return cls()

    def __enter__(self) -> IoctlTestbed:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
        if exc is None:
            self.check()
        else:
            for failure in self.failures:
                exc.add_note(f"an ioctl handler raised too: {failure!r}")

    def close(self) -> None:
        """Detach the handlers and remove the testbed (its directory and its sockets)."""
        if self._closed:
            return
        self._closed = True
        for node, handler, ids in self._handlers:
            try:
                self._testbed.detach_ioctl(node)
            finally:
                for handler_id in ids:
                    handler.disconnect(handler_id)
        self._handlers.clear()
        root = self.root
        self._testbed = None  # the last reference: umockdev removes the directory
        os.unsetenv("UMOCKDEV_DIR")
        if root.exists():  # pragma: no cover - only if something else still holds the testbed
            import shutil

            shutil.rmtree(root, ignore_errors=True)

    def check(self) -> None:
        """Raise the first exception a callback raised (and forget them all)."""
        with self._lock:
            failures, self.failures = self.failures, []
        if failures:
            first = failures[0]
            for other in failures[1:]:
                first.add_note(f"the handler also raised: {other!r}")
            raise first

    # ----------------------------------------------------------------- sysfs

    def add_replayed_usb_device(self, description: str, sysfs: str, pcap: Path) -> None:
        """A USB device given as umockdev text (``tests.usbfake.FakeUsbDevice.umockdev()``:
        its sysfs entry and its ``/dev/bus/usb`` node), whose usbdevfs requests umockdev answers
        from the usbmon capture ``pcap`` (``Testbed.load_pcap``, as ``umockdev-run --pcap``), in
        its worker thread in this process. libusb in a child then talks to the testbed's node,
        never a real one, and a frame that differs from the capture gets no answer."""
        testbed = self._testbed
        if testbed is None:
            raise RuntimeError("this IoctlTestbed is closed")
        testbed.add_from_string(description)
        if not testbed.load_pcap(sysfs, str(pcap)):
            raise RuntimeError(f"umockdev could not load {pcap} for {sysfs}")

    def add_usb_device(
        self,
        sysfs: str,
        *,
        vid: int,
        pid: int,
        bcd_device: int = 0x0100,
        manufacturer: str | None = "Logitech",
        product: str | None = None,
        serial: str | None = None,
        busnum: int | None = None,
        devnum: int | None = None,
        descriptors: bytes | None = None,
        attributes: dict[str, str | bytes] | None = None,
    ) -> str:
        """A USB device (``DEVTYPE=usb_device``) at ``sysfs`` (``/sys/devices/…/1-2``), also
        listed in ``/sys/bus/usb/devices``. Text attributes end in a newline as in sysfs;
        ``descriptors`` defaults to an 18-byte device descriptor. Returns ``sysfs``."""
        name = self._check_path(sysfs)
        if sysfs in self._usb:
            raise ValueError(f"{sysfs}: this USB device already exists")
        self._claim(f"usb/{name}")
        bus = busnum if busnum is not None else _busnum(sysfs)
        if devnum is None:
            self._devnum += 1
            devnum = self._devnum
        if descriptors is None:
            from tests.sysfs import device_descriptor

            descriptors = device_descriptor(vid, pid, bcd_device)
        attrs: dict[str, str | bytes] = {
            "idVendor": f"{vid:04x}",
            "idProduct": f"{pid:04x}",
            "bcdDevice": f"{bcd_device:04x}",
            "busnum": str(bus),
            "devnum": str(devnum),
            "devpath": name.split("-", 1)[-1],
            "speed": "480",
            "bDeviceClass": "ef",
            "bNumConfigurations": "1",
            "bConfigurationValue": "1",
            "descriptors": descriptors,
        }
        for key, value in (("manufacturer", manufacturer), ("product", product), ("serial", serial)):
            if value is not None:
                attrs[key] = value
        attrs.update(attributes or {})
        props = {
            "DEVTYPE": "usb_device",
            "PRODUCT": f"{vid:x}/{pid:x}/{bcd_device:x}",
            "BUSNUM": f"{bus:03d}",
        }
        props["DEVNUM"] = f"{devnum:03d}"
        self._add("usb", sysfs, attrs, props)
        self._usb[sysfs] = (vid, pid)
        return sysfs

    def add_uvc_device(
        self,
        sysfs: str,
        *,
        vid: int,
        pid: int,
        answer: UvcAnswer,
        video: int = 0,
        metadata_video: int | None = None,
        interface: int = 0,
        name: str | None = None,
        querycap: bytes | int | None = None,
        other: OtherAnswer | None = None,
        **usb: Any,
    ) -> EmulatedNode:
        """A UVC camera: the USB device at ``sysfs`` (made unless it exists; ``usb`` goes to
        :meth:`add_usb_device`), its video-control interface ``<name>:1.<interface>`` and
        ``video4linux/video<video>`` under it (``index`` 0, ``name``), answered by ``answer``.
        ``metadata_video`` adds the camera's metadata node (``index`` 1) with the same answers.
        ``querycap`` overrides the ``VIDIOC_QUERYCAP`` answer (bytes, or an errno)."""
        card = name or usb.get("product") or f"Camera {vid:04x}:{pid:04x}"
        usb.setdefault("product", card)
        nodes = [(video, 0, CAPTURE_CAPS)]
        if metadata_video is not None:
            nodes.append((metadata_video, 1, METADATA_CAPS))
        self._check_free([f"video4linux/video{minor}" for minor, _, _ in nodes])
        iface = self._interface(sysfs, vid, pid, interface, 0x0E, 0x01, "uvcvideo", usb)
        made = []
        for minor, index, caps in nodes:
            node = f"/dev/video{minor}"
            path = f"{iface}/video4linux/video{minor}"
            self._claim(f"video4linux/video{minor}")
            attrs = {"index": str(index), "name": card, "dev": f"81:{minor}"}
            self._add("video4linux", path, attrs, {"MAJOR": "81", "MINOR": str(minor), "DEVNAME": node})
            bus_info = f"usb-{_pci(sysfs)}-{Path(sysfs).name.split('-', 1)[-1]}"
            reply = querycap if querycap is not None else querycap_reply(card, bus_info, device_caps=caps)
            self._attach(_Node("video", node, answer, querycap=reply, other=other))
            made.append(EmulatedNode(node, path, sysfs))
        return made[0]

    def add_hidraw_device(
        self,
        sysfs: str,
        *,
        vid: int,
        pid: int,
        answer: HidAnswer,
        hidraw: int = 0,
        interface: int = 0,
        name: str | None = None,
        report_descriptor: bytes = b"",
        other: OtherAnswer | None = None,
        **usb: Any,
    ) -> EmulatedNode:
        """A HID interface ``<name>:1.<interface>`` of the USB device at ``sysfs`` (made unless
        it exists), its HID device ``0003:VVVV:PPPP.NNNN`` and ``hidraw/hidraw<hidraw>``
        under that, answered by ``answer``. ``HIDIOCGRAWINFO``/``NAME``/``PHYS``/``UNIQ`` and
        the report descriptor ioctls are answered from these values."""
        hid_name = name or usb.get("product") or f"Logitech {pid:04x}"
        self._check_free([f"hidraw/hidraw{hidraw}"])
        iface = self._interface(sysfs, vid, pid, interface, 0x03, 0x00, "usbhid", usb)
        self._hid_seq += 1
        hid = f"{iface}/0003:{vid:04X}:{pid:04X}.{self._hid_seq:04X}"
        phys = f"usb-{_pci(sysfs)}-{Path(sysfs).name.split('-', 1)[-1]}/input{interface}"
        uniq = str(usb.get("serial") or "")
        self._claim(f"hid/{Path(hid).name}")
        hid_props = {
            "DRIVER": "hid-generic",
            "HID_ID": f"0003:{vid:08X}:{pid:08X}",
            "HID_NAME": hid_name,
            "HID_PHYS": phys,
            "HID_UNIQ": uniq,
            "MODALIAS": f"hid:b0003g0001v{vid:08X}p{pid:08X}",
        }
        self._add("hid", hid, {"report_descriptor": report_descriptor}, hid_props)
        node = f"/dev/hidraw{hidraw}"
        path = f"{hid}/hidraw/hidraw{hidraw}"
        self._claim(f"hidraw/hidraw{hidraw}")
        attrs = {"dev": f"243:{hidraw}"}
        self._add("hidraw", path, attrs, {"MAJOR": "243", "MINOR": str(hidraw), "DEVNAME": node})
        defaults = _hidraw_defaults(vid, pid, hid_name, phys, uniq, report_descriptor)
        self._attach(_Node("hidraw", node, answer, defaults=defaults, other=other))
        return EmulatedNode(node, path, sysfs)

    def _interface(
        self,
        sysfs: str,
        vid: int,
        pid: int,
        number: int,
        cls: int,
        subcls: int,
        driver: str,
        usb: dict[str, Any],
    ) -> str:
        if sysfs in self._usb:
            if self._usb[sysfs] != (vid, pid):
                raise ValueError(f"{sysfs} is {self._usb[sysfs][0]:04x}:{self._usb[sysfs][1]:04x} already")
        else:
            self.add_usb_device(sysfs, vid=vid, pid=pid, **usb)
        iface = f"{sysfs}/{Path(sysfs).name}:1.{number}"
        if iface not in self._made:
            self._claim(f"usb/{Path(iface).name}")
            attrs = {
                "bInterfaceNumber": f"{number:02x}",
                "bAlternateSetting": " 0",
                "bInterfaceClass": f"{cls:02x}",
                "bInterfaceSubClass": f"{subcls:02x}",
                "bInterfaceProtocol": "00",
                "bNumEndpoints": "01",
            }
            self._add("usb", iface, attrs, {"DEVTYPE": "usb_interface", "DRIVER": driver})
            self._link(iface, "driver", f"bus/usb/drivers/{driver}")
        return iface

    def _check_path(self, sysfs: str) -> str:
        self._check_open()
        parts = sysfs.split("/")
        if not sysfs.startswith("/sys/devices/") or any(p in ("", ".", "..") for p in parts[1:]):
            raise ValueError(f"{sysfs!r}: a USB device path must be /sys/devices/…/<name>, normalised")
        return parts[-1]

    def _claim(self, key: str) -> None:
        # umockdev aborts the whole process on a second device of one name: refuse it here.
        if key in self._made:
            raise ValueError(f"{key} exists already in this testbed")
        self._made.add(key)

    def _check_free(self, keys: list[str]) -> None:
        """Before anything is made: the nodes must be new (and distinct)."""
        self._check_open()
        taken = [k for k in keys if k in self._made] + [k for k in set(keys) if keys.count(k) > 1]
        if taken:
            raise ValueError(f"{', '.join(taken)}: exists already in this testbed")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this IoctlTestbed is closed")

    def _add(
        self, subsystem: str, path: str, attrs: Mapping[str, str | bytes], props: dict[str, str]
    ) -> None:
        self._made.add(path)
        text: list[str] = []
        binary: dict[str, bytes] = {}
        for key, value in attrs.items():
            if isinstance(value, bytes):
                binary[key] = value
            else:
                text += [key, value if key == "dev" else value + "\n"]
        flat_props = [item for pair in props.items() for item in pair]
        made = self._testbed.add_device(subsystem, path.removeprefix("/sys/devices/"), None, text, flat_props)
        if made != path:
            raise RuntimeError(f"umockdev made {made!r}, not {path!r}")
        for key, value in binary.items():
            self._testbed.set_attribute_binary(path, key, value)
        if "DEVNAME" in props:
            dev = self.root / props["DEVNAME"].removeprefix("/")
            dev.parent.mkdir(parents=True, exist_ok=True)
            dev.write_bytes(b"\0")  # a plain file: umockdev then opens no PTY for it

    def _link(self, path: str, name: str, target_in_sys: str) -> None:
        depth = len(Path(path).relative_to("/sys").parts)
        (self.sys / target_in_sys).mkdir(parents=True, exist_ok=True)
        self._testbed.set_attribute_link(path, name, "../" * depth + target_in_sys)

    # ----------------------------------------------------------------- the handler

    def _attach(self, node: _Node) -> None:
        handler = self._umockdev.IoctlBase()
        ids = [
            handler.connect("handle-ioctl", self._on_ioctl),
            handler.connect("handle-read", self._on_read),
            handler.connect("handle-write", self._on_write),
        ]
        self._testbed.attach_ioctl(node.path, handler)
        self._nodes[node.path] = node
        self._handlers.append((node.path, handler, ids))

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _fail(self, client: Any, exc: BaseException, what: str) -> bool:
        exc.add_note(f"raised by the ioctl handler for {what}; the caller got EIO")
        with self._lock:
            self.failures.append(exc)
        client.complete(-1, errnos.EIO)
        return True

    def _on_ioctl(self, _handler: Any, client: Any) -> bool:
        """umockdev's worker thread: one ioctl of the child."""
        request = int(client.get_request())
        devnode = str(client.get_devnode())
        node = self._nodes[devnode]
        what = f"ioctl 0x{request:08x} on {devnode}"
        try:
            if node.kind == "video" and ioc_type(request) == "u" and ioc_nr(request) == 0x21:
                return self._uvc(client, node, request)
            if node.kind == "hidraw" and ioc_type(request) == "H" and ioc_nr(request) in (0x06, 0x07):
                return self._hid_feature(client, node, request)
            return self._other(client, node, request)
        except _HandlerFailure as exc:
            return self._fail(client, exc.args[0], what)
        except OSError as exc:
            return _complete(client, -1, exc.errno or errnos.EIO)
        except Exception as exc:
            return self._fail(client, exc, what)

    def _uvc(self, client: Any, node: _Node, request: int) -> bool:
        arg = client.get_arg().resolve(0, ioc_size(request))
        raw = bytes(arg.retrieve())
        unit, selector, query, size = struct.unpack_from("=BBBxH", raw)
        data = arg.resolve(8, size) if size else None
        sent = bytes(data.retrieve()) if data is not None else b""
        record = UvcQuery(node.path, unit, selector, query, size, sent, request)
        self._record(record)
        reply = _call(node.answer, record)
        if isinstance(reply, int):
            return _complete(client, -1, reply)
        if query & 0x80:
            if reply is None or len(reply) != size:
                raise ValueError(
                    f"the answer to UVC query 0x{query:02x} (unit {unit} selector {selector}) must be "
                    f"{size} bytes (the driver fills the caller's buffer), not {reply!r}"
                )
            if data is not None:
                data.update(0, bytes(reply))
        elif reply:
            raise ValueError(f"a SET query is answered with None or an errno, not {reply!r}")
        return _complete(client, 0, 0)

    def _hid_feature(self, client: Any, node: _Node, request: int) -> bool:
        length = ioc_size(request)
        arg = client.get_arg().resolve(0, length) if length else None
        sent = bytes(arg.retrieve()) if arg is not None else b""
        op: Literal["get", "set"] = "get" if ioc_nr(request) == 0x07 else "set"
        record = HidFeature(node.path, op, sent, request)
        self._record(record)
        reply = _call(node.answer, record)
        if isinstance(reply, int):
            return _complete(client, -1, reply)
        if op == "set":
            if reply:
                raise ValueError(f"a SET_FEATURE is answered with None or an errno, not {reply!r}")
            return _complete(client, length, 0)
        if reply is None or len(reply) > length:
            raise ValueError(f"a GET_FEATURE of {length} bytes is answered with at most {length} bytes")
        if arg is not None and reply:
            arg.update(0, bytes(reply))
        return _complete(client, len(reply), 0)

    def _other(self, client: Any, node: _Node, request: int) -> bool:
        size = ioc_size(request)
        arg = client.get_arg().resolve(0, size) if size else None
        sent = bytes(arg.retrieve()) if arg is not None and ioc_dir(request) & _IOC_WRITE else b""
        record = Ioctl(node.path, request, sent)
        self._record(record)
        reply: Reply
        result = 0
        key = request if request in node.defaults else -ioc_nr(request)
        sized = node.kind == "hidraw" and ioc_type(request) == "H" and ioc_dir(request) == _IOC_READ
        if node.kind == "video" and request == VIDIOC_QUERYCAP and node.querycap is not None:
            reply = node.querycap
        elif request in node.defaults or (sized and key in node.defaults):
            given = bytes(arg.retrieve()) if arg is not None else b""
            reply, result = node.defaults[key](given)
        elif node.other is not None:
            reply = _call(node.other, record)
        else:
            reply = errnos.ENOTTY
        if isinstance(reply, int):
            return _complete(client, -1, reply)
        if reply:
            if arg is None or len(reply) > size:
                raise ValueError(f"the answer to ioctl 0x{request:08x} is longer than its {size} bytes")
            arg.update(0, bytes(reply))
        return _complete(client, result, 0)

    def _on_read(self, _handler: Any, client: Any) -> bool:
        data = client.get_arg()
        self._record(Read(str(client.get_devnode()), len(bytes(data.retrieve()))))
        return _complete(client, -1, errnos.EAGAIN)

    def _on_write(self, _handler: Any, client: Any) -> bool:
        self._record(Write(str(client.get_devnode()), bytes(client.get_arg().retrieve())))
        return _complete(client, -1, errnos.EIO)

    # ----------------------------------------------------------------- running code

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process that sees this testbed (``LD_PRELOAD``,
        ``UMOCKDEV_DIR``, the repository on ``PYTHONPATH``)."""
        self._check_open()
        env = dict(os.environ if base is None else base)
        env["LD_PRELOAD"] = ":".join(p for p in (PRELOAD, env.get("LD_PRELOAD", "")) if p)
        env["UMOCKDEV_DIR"] = str(self.root)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env[_TOKEN_ENV] = self._token
        env[_DEV_ENV] = os.pathsep.join(sorted(self._nodes))
        return env

    def run(self, func: Callable[..., T], /, *args: Any, timeout: float = 30.0, **kwargs: Any) -> T:
        """Call ``func(*args, **kwargs)`` in a child Python that sees this testbed, and return
        what it returned. ``func`` must be importable by name (a module-level function);
        arguments and result are pickled. An exception it raised is raised here (with the
        child's traceback as a note); an exception of a callback is raised first."""
        self._check_open()
        payload = pickle.dumps((func, args, kwargs))
        with tempfile.TemporaryDirectory(prefix="ioctl-testbed-") as tmp:
            result_file = Path(tmp) / "result.pickle"
            code = "from tests.umockdev_ioctl import _child_main; _child_main()"
            try:
                proc = subprocess.run(
                    [sys.executable, "-c", code, str(result_file)],
                    input=payload,
                    env=self.env(),
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                self.check()
                raise WorkerDied(f"{func.__qualname__} did not end within {timeout} s") from exc
            self.last_stdout = proc.stdout.decode(errors="replace")
            self.last_stderr = proc.stderr.decode(errors="replace")
            self.check()
            if not result_file.exists():
                raise WorkerDied(
                    f"the child running {func.__qualname__} exited {proc.returncode} without a result; "
                    f"stderr:\n{self.last_stderr}"
                )
            outcome = pickle.loads(result_file.read_bytes())
        if outcome[0] == "return":
            return outcome[1]  # type: ignore[no-any-return]
        raised, child_tb = outcome[1], outcome[2]
        raised.add_note(f"raised in the child process:\n{child_tb}")
        raise raised


def _busnum(sysfs: str) -> int:
    for part in reversed(sysfs.split("/")):
        if part.startswith("usb") and part[3:].isdigit():
            return int(part[3:])
    return int(Path(sysfs).name.split("-")[0]) if Path(sysfs).name.split("-")[0].isdigit() else 1


def _pci(sysfs: str) -> str:
    for part in reversed(sysfs.split("/")):
        if part.count(":") == 2 and "." in part:  # domain:bus:device.function
            return part
    return "0000:00:14.0"


def _hidraw_defaults(
    vid: int, pid: int, name: str, phys: str, uniq: str, rdesc: bytes
) -> dict[int, Callable[[bytes], tuple[bytes, int]]]:
    def text(value: str) -> Callable[[bytes], tuple[bytes, int]]:
        def reply(given: bytes) -> tuple[bytes, int]:
            encoded = (value.encode() + b"\0")[: len(given)]
            return encoded, len(encoded)

        return reply

    def rdesc_reply(given: bytes) -> tuple[bytes, int]:
        (wanted,) = struct.unpack_from("=I", given)
        if wanted > 4095:
            raise OSError(errnos.EINVAL, "HIDIOCGRDESC size")
        return struct.pack("=I", wanted) + rdesc[:wanted], 0

    return {
        HIDIOCGRAWINFO: lambda _given: (struct.pack("=IHH", 3, vid, pid), 0),
        HIDIOCGRDESCSIZE: lambda _given: (struct.pack("=I", len(rdesc)), 0),
        HIDIOCGRDESC: rdesc_reply,
        -0x04: text(name),
        -0x05: text(phys),
        -0x08: text(uniq),
    }


def _call(answer: Callable[[Any], Reply], record: Any) -> Reply:
    try:
        reply = answer(record)
    except OSError:
        raise
    except BaseException as exc:
        raise _HandlerFailure(exc) from None
    if isinstance(reply, bool) or not isinstance(reply, bytes | bytearray | int | None):
        raise _HandlerFailure(TypeError(f"an answer is bytes, None or an errno, not {reply!r}"))
    if isinstance(reply, int) and reply <= 0:
        raise _HandlerFailure(ValueError(f"an errno answer must be positive, not {reply}"))
    return reply


def _complete(client: Any, result: int, error: int) -> bool:
    client.complete(result, error)
    return True


# --------------------------------------------------------------------------- the child side


def _child_main() -> None:
    """Entry point of the child Python (``run``): check the testbed, guard ``/dev``, run."""
    result_file = Path(sys.argv[1])
    marker = Path("/sys") / TOKEN_FILE
    try:
        seen = marker.read_text(encoding="ascii")
    except OSError:
        seen = ""
    if seen != os.environ.get(_TOKEN_ENV):
        sys.stderr.write(f"umockdev_ioctl: no testbed in /sys ({PRELOAD} not loaded?): not running\n")
        sys.exit(3)
    _guard_dev(set(filter(None, os.environ.get(_DEV_ENV, "").split(os.pathsep))))
    func, args, kwargs = pickle.loads(sys.stdin.buffer.read())
    try:
        outcome: tuple[Any, ...] = ("return", func(*args, **kwargs))
    except BaseException as exc:
        outcome = ("raise", exc, traceback.format_exc())
    try:
        data = pickle.dumps(outcome)
    except Exception as exc:
        text = traceback.format_exc() if outcome[0] == "return" else outcome[2]
        failure = RuntimeError(f"cannot pickle the outcome {outcome[:2]!r}: {exc}")
        data = pickle.dumps(("raise", failure, text))
    sys.stdout.flush()
    sys.stderr.flush()
    result_file.write_bytes(data)


def _guard_dev(emulated: set[str]) -> None:
    """Refuse, in the child, a device node of a kind under test that the testbed lacks."""
    import builtins
    import io

    def refused(path: Any) -> bool:
        try:
            text = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return False  # an fd
        return text.startswith(_GUARDED) and text not in emulated

    def deny(path: Any) -> OSError:
        return FileNotFoundError(
            errnos.ENOENT, "not emulated by the IoctlTestbed (no real node is opened)", path
        )

    real_os_open, real_io_open = os.open, io.open

    def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is None and refused(path):
            raise deny(path)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def io_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(file, int) and refused(file):
            raise deny(file)
        return real_io_open(file, *args, **kwargs)

    os.open = os_open
    builtins.open = io_open
    io.open = io_open


def iter_requests(requests: list[Request], kind: type[T]) -> Iterator[T]:
    """The records of one kind (``iter_requests(bed.requests, UvcQuery)``)."""
    return (r for r in requests if isinstance(r, kind))
