"""The USB devices of a host, as records, and their grouping into physical units.

Both sides use this module: the USB source (:mod:`agent.discovery.usb`) and the SSH source's
room-PC collector (:mod:`agent.collectors.room_pc`, which reads a PC's sysfs over SFTP) find
records with it, and the collectors (:mod:`agent.collectors.usb_descriptor`, the Sync
interface…) read the units it groups. It imports nothing above the catalog, so sources and
collectors both import downward.

``<root>/bus/usb/devices/*`` holds one entry per USB device (``1-1.2``, ``usb1``) and one per
interface (``1-1.2:1.0``, skipped). Each device entry has attribute files ``idVendor``,
``idProduct``, ``bcdDevice``, ``busnum``, ``devnum`` and, when the device has them,
``manufacturer``, ``product`` and ``serial``. The sysfs root is a parameter so that support
engineers can read a tree captured at a site (``roomsync scan --sysfs-root PATH``) and tests
can build trees in a temporary directory.

When sysfs lacks a string that the device descriptor says exists (index ≠ 0), the string is
read through libusb (pyusb), where libusb is installed and permissions allow. Every request
passes :func:`check_control_request` first, which lets only standard GET_DESCRIPTOR (string)
requests through: reading a string never changes a device.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from agent.catalog import LOGITECH_VID, Catalog, Product, UsbMatch
from agent.model import HealthIssue, Severity
from agent.readonly import ReadOnlyViolation
from agent.sanitize import CleanText, clean_serial, clean_text

#: sysfs attribute files are small; never read more than this from one.
MAX_ATTRIBUTE_BYTES = 4096
_DEVICE_NAME = re.compile(r"^(?:usb(?P<root>\d+)|(?P<bus>\d+)-(?P<ports>\d+(?:\.\d+)*))$")
STRING_FIELDS = ("manufacturer", "product", "serial")
# Offsets of iManufacturer, iProduct, iSerialNumber in the 18-byte device descriptor.
_STRING_INDEX_OFFSETS = {"manufacturer": 14, "product": 15, "serial": 16}


@cache
def _port_chain(name: str) -> tuple[int, ...]:
    m = _DEVICE_NAME.match(name)
    if not m or not m.group("ports"):
        return ()
    return tuple(int(p) for p in m.group("ports").split("."))


class UsbDiscoveryError(Exception):
    """The sysfs tree cannot be read at all (as opposed to one bad device entry)."""


@dataclass(slots=True)
class UsbRecord:
    """One USB device as sysfs (and perhaps libusb) describe it."""

    name: str
    path: Path
    vendor_id: int
    product_id: int
    bcd_device: int | None = None
    busnum: int | None = None
    devnum: int | None = None
    manufacturer: str | None = None
    product: str | None = None
    serial: str | None = None
    #: String descriptor indexes from the device descriptor (0 = the device has none).
    string_indexes: dict[str, int] = field(default_factory=dict)
    #: Where each string came from: ``sysfs`` or ``libusb``.
    string_sources: dict[str, str] = field(default_factory=dict)
    #: Repairs made to each string (``not-utf8``, ``placeholder``…); see agent.sanitize.
    string_problems: dict[str, tuple[str, ...]] = field(default_factory=dict)
    issues: list[HealthIssue] = field(default_factory=list)

    @property
    def is_root_hub(self) -> bool:
        return self.name.startswith("usb")

    @property
    def bus(self) -> int | None:
        m = _DEVICE_NAME.match(self.name)
        if not m:
            return self.busnum
        return int(m.group("root") or m.group("bus"))

    @property
    def port_chain(self) -> tuple[int, ...]:
        """Ports from the root hub down (``1-1.4.2`` → ``(1, 4, 2)``); ``()`` for a root hub."""
        return _port_chain(self.name)

    @property
    def release(self) -> str | None:
        """bcdDevice as text: 0x0020 → ``0.20``; 0x1205 → ``12.05``."""
        if self.bcd_device is None:
            return None
        return f"{self.bcd_device >> 8:x}.{self.bcd_device & 0xFF:02x}"

    def set_string(self, name: str, raw: bytes | str | None, source: str) -> None:
        cleaned: CleanText = clean_serial(raw) if name == "serial" else clean_text(raw)
        setattr(self, name, cleaned.value)
        self.string_sources[name] = source
        problems = tuple(p for p in cleaned.problems if p != "missing")
        if problems:
            self.string_problems[name] = problems
        else:
            self.string_problems.pop(name, None)


@dataclass(slots=True)
class UsbDiscovery:
    """What one pass over sysfs found."""

    root: Path
    bus_visible: bool
    records: list[UsbRecord] = field(default_factory=list)
    #: Entries that could not be used at all, as ``(entry name, message)``.
    errors: list[tuple[str, str]] = field(default_factory=list)
    message: str | None = None


class _AttributeDir:
    """Reads attribute files of one sysfs entry through a directory descriptor (openat):
    a scan reads ~10 files per device, and path building dominated the time otherwise."""

    __slots__ = ("fd", "issues")

    def __init__(self, path: str, issues: list[HealthIssue]) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        self.issues = issues

    def close(self) -> None:
        os.close(self.fd)

    def read(self, name: str) -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._unreadable(name, exc)
            return None
        try:
            return os.read(fd, MAX_ATTRIBUTE_BYTES)
        except OSError as exc:
            self._unreadable(name, exc)
            return None
        finally:
            os.close(fd)

    def _unreadable(self, name: str, exc: OSError) -> None:
        self.issues.append(attribute_unreadable(name, exc))


def attribute_unreadable(name: str, exc: OSError) -> HealthIssue:
    """The note for an attribute file that exists but cannot be read."""
    return HealthIssue(
        "usb-attribute-unreadable", f"{name}: cannot read ({exc.strerror or exc})", Severity.INFO
    )


def _parse_hex(raw: bytes | None, width: int = 4) -> int | None:
    if raw is None:
        return None
    text = raw.strip(b"\x00\n\r\t ").decode("ascii", errors="replace")
    if not text or len(text) > width or not re.fullmatch(r"[0-9a-fA-F]+", text):
        return None
    return int(text, 16)


def _parse_dec(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    text = raw.strip(b"\x00\n\r\t ").decode("ascii", errors="replace")
    return int(text) if text.isdigit() and len(text) <= 6 else None


#: Reads one attribute file of a device entry by name: its bytes (at most
#: :data:`MAX_ATTRIBUTE_BYTES`), or ``None`` when the file is absent or unreadable (the reader
#: records why on the issue list it was given).
AttributeReader = Callable[[str], bytes | None]


def parse_device(name: str, path: Path, read: AttributeReader, issues: list[HealthIssue]) -> UsbRecord:
    """Build the record of one device entry from its attribute files, whatever reads them
    (this host's sysfs through openat, or a room PC's sysfs over SFTP).

    Raises :class:`ValueError` when its ids are unusable.
    """
    vid = _parse_hex(read("idVendor"))
    pid = _parse_hex(read("idProduct"))
    if vid is None or pid is None:
        raise ValueError("idVendor/idProduct missing or not 4 hex digits")
    record = UsbRecord(
        name=name,
        path=path,
        vendor_id=vid,
        product_id=pid,
        bcd_device=_parse_hex(read("bcdDevice")),
        busnum=_parse_dec(read("busnum")),
        devnum=_parse_dec(read("devnum")),
        issues=issues,
    )
    descriptors = read("descriptors")
    if descriptors is not None and len(descriptors) >= 18 and descriptors[1] == 0x01:
        record.string_indexes = {k: descriptors[o] for k, o in _STRING_INDEX_OFFSETS.items()}
    for string_name in STRING_FIELDS:
        raw = read(string_name)
        if raw is not None:
            record.set_string(string_name, raw, "sysfs")
    return record


def read_device(path: str | os.PathLike[str], name: str) -> UsbRecord:
    """Read one sysfs device entry of this host. Raises :class:`ValueError` when its ids are
    unusable, :class:`OSError` when the entry cannot be opened."""
    issues: list[HealthIssue] = []
    attrs = _AttributeDir(os.fspath(path), issues)
    try:
        return parse_device(name, Path(path), attrs.read, issues)
    finally:
        attrs.close()


def read_sysfs(root: str | os.PathLike[str] = "/sys") -> UsbDiscovery:
    """Enumerate USB devices under ``<root>/bus/usb/devices``.

    Raises :class:`UsbDiscoveryError` only when ``root`` itself does not exist or is not a
    directory; a host with no USB bus gives ``bus_visible=False`` and a message.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise UsbDiscoveryError(f"sysfs root {root_path} does not exist or is not a directory")
    devices_dir = root_path / "bus" / "usb" / "devices"
    try:
        with os.scandir(devices_dir) as it:
            paths = {entry.name: entry.path for entry in it}
    except FileNotFoundError:
        return UsbDiscovery(root_path, False, message=f"no USB bus is visible ({devices_dir} is absent)")
    except OSError as exc:
        raise UsbDiscoveryError(f"cannot list {devices_dir}: {exc.strerror or exc}") from exc
    return read_entries(root_path, paths, lambda name: read_device(paths[name], name))


def read_entries(root: Path, names: Iterable[str], read_entry: Callable[[str], UsbRecord]) -> UsbDiscovery:
    """Read the device entries among the names listed in a ``bus/usb/devices`` directory, in
    topology order, with ``read_entry(name)`` (e.g. :func:`read_device`, or a reader of a room
    PC's sysfs over SFTP). Interface entries are skipped; an entry whose name is not a
    device's, or that ``read_entry`` rejects (:class:`ValueError`, :class:`OSError`), becomes
    one error and the rest is read.
    """
    result = UsbDiscovery(root, True)
    for name in sorted(names, key=_sort_key):
        if ":" in name:  # an interface (1-1.2:1.0), not a device
            continue
        if not _DEVICE_NAME.match(name):
            result.errors.append((name, "not a USB device entry name; skipped"))
            continue
        try:
            result.records.append(read_entry(name))
        except ValueError as exc:
            result.errors.append((name, str(exc)))
        except OSError as exc:
            result.errors.append((name, f"cannot read: {exc.strerror or exc}"))
    if not result.records and not result.errors:
        result.message = "no USB devices found"
    return result


def _sort_key(name: str) -> tuple[Any, ...]:
    m = _DEVICE_NAME.match(name.split(":", 1)[0])
    if not m:
        return (2, name)
    if m.group("root"):
        return (0, int(m.group("root")), ())
    return (1, int(m.group("bus")), tuple(int(p) for p in m.group("ports").split(".")))


# --------------------------------------------------------------------------- libusb


def missing_strings(record: UsbRecord) -> list[str]:
    """Strings the device descriptor announces but sysfs did not give us."""
    return [
        name
        for name in STRING_FIELDS
        if record.string_indexes.get(name) and name not in record.string_sources
    ]


def enrich_with_libusb(records: list[UsbRecord]) -> None:
    """Read strings that sysfs lacks through libusb, where possible.

    Failures (no libusb, no permission, a device that stalls) become informational issues
    on the record; they never stop the scan.
    """
    wanted = [r for r in records if missing_strings(r) and r.busnum is not None and r.devnum is not None]
    if not wanted:
        return
    try:
        import usb.core
        import usb.util
    except ImportError:  # pragma: no cover - pyusb is a dependency
        return
    try:
        found = {(d.bus, d.address): d for d in usb.core.find(find_all=True)}
    except usb.core.NoBackendError:
        for r in wanted:
            r.issues.append(
                HealthIssue(
                    "usb-strings-unavailable",
                    "libusb is not installed; strings missing from sysfs were not read",
                    Severity.INFO,
                )
            )
        return
    except usb.core.USBError as exc:
        for r in wanted:
            r.issues.append(HealthIssue("usb-strings-unavailable", f"libusb: {exc}", Severity.INFO))
        return
    for record in wanted:
        dev = found.get((record.busnum, record.devnum))
        if dev is None or (dev.idVendor, dev.idProduct) != (record.vendor_id, record.product_id):
            record.issues.append(
                HealthIssue(
                    "usb-strings-unavailable",
                    f"libusb does not see bus {record.busnum} device {record.devnum}",
                    Severity.INFO,
                )
            )
            continue
        langids: list[int] = []
        try:
            for name in missing_strings(record):
                text, malformed = _read_string(dev, record.string_indexes[name], langids)
                record.set_string(name, text, "libusb")
                if malformed:
                    record.string_problems[name] = ("not-utf8", *record.string_problems.get(name, ()))
        except (usb.core.USBError, ValueError, NotImplementedError) as exc:
            record.issues.append(
                HealthIssue("usb-strings-unavailable", f"libusb could not read strings: {exc}", Severity.INFO)
            )
        finally:
            with contextlib.suppress(usb.core.USBError):
                usb.util.dispose_resources(dev)


#: The one kind of control request the agent sends a USB device: a standard, device-to-host
#: GET_DESCRIPTOR of a string descriptor (USB 2.0 §9.4.3). pyusb asks for 254 bytes.
GET_DESCRIPTOR = 0x06
DEVICE_TO_HOST_STANDARD_DEVICE = 0x80
DESC_TYPE_STRING = 0x03
STRING_WLENGTH = 254
_SETUP = struct.Struct("<BBHHH")


def check_control_request(setup: bytes) -> None:
    """The gate of every USB control request the agent sends: the 8-byte setup packet must be
    a standard GET_DESCRIPTOR of a string descriptor, device-to-host, at most 255 bytes long.
    Anything else (SET_* requests, class or vendor requests, other descriptor types, a
    host-to-device transfer) raises :class:`~agent.readonly.ReadOnlyViolation`."""
    setup = bytes(setup)
    if len(setup) != _SETUP.size:
        raise ReadOnlyViolation(f"refused a USB control request of {len(setup)} bytes: a setup packet has 8")
    request_type, request, value, _index, length = _SETUP.unpack(setup)
    if request_type != DEVICE_TO_HOST_STANDARD_DEVICE or request != GET_DESCRIPTOR:
        raise ReadOnlyViolation(
            f"refused USB control request bmRequestType 0x{request_type:02x} bRequest 0x{request:02x}: "
            "only standard GET_DESCRIPTOR (0x80, 0x06) is sent"
        )
    if value >> 8 != DESC_TYPE_STRING:
        raise ReadOnlyViolation(f"refused GET_DESCRIPTOR of descriptor type 0x{value >> 8:02x}: only strings")
    if length > 255:
        raise ReadOnlyViolation(f"refused GET_DESCRIPTOR with wLength {length}: a string descriptor is ≤ 255")


def _string_descriptor(dev: Any, index: int, langid: int) -> bytes:
    """String descriptor ``index`` in ``langid`` (0, 0: the LANGID list), through the gate."""
    value = (DESC_TYPE_STRING << 8) | index
    setup = _SETUP.pack(DEVICE_TO_HOST_STANDARD_DEVICE, GET_DESCRIPTOR, value, langid, STRING_WLENGTH)
    check_control_request(setup)
    buf = bytes(
        dev.ctrl_transfer(DEVICE_TO_HOST_STANDARD_DEVICE, GET_DESCRIPTOR, value, langid, STRING_WLENGTH)
    )
    # bLength rounded down to even, as pyusb does (some devices report an odd length).
    return buf[2 : min(buf[0] & 0xFE, len(buf))] if len(buf) >= 2 else b""


def _read_string(dev: Any, index: int, langids: list[int]) -> tuple[str, bool]:
    """One string descriptor, decoded leniently: ``(text, malformed)``.

    The same requests as pyusb's ``usb.util.get_string`` (first LANGID, wLength 254), sent
    through :func:`check_control_request`; malformed UTF-16 (a lone surrogate) becomes U+FFFD
    and ``malformed`` (reported as ``not-utf8``) instead of a ``UnicodeDecodeError`` that
    would lose every string still to be read, the serial included.
    """
    if not langids:
        # String descriptor 0 is the LANGID list, read once per device.
        table = _string_descriptor(dev, 0, 0)
        langids.extend(v for (v,) in struct.iter_unpack("<H", table[: len(table) & ~1]))
    if not langids:
        raise ValueError("the device has no LANGID list (no string descriptors, or no permission)")
    payload = _string_descriptor(dev, index, langids[0])
    try:
        return payload.decode("utf-16-le"), False
    except UnicodeDecodeError:
        return payload.decode("utf-16-le", errors="replace"), True


# --------------------------------------------------------------------------- units


@dataclass(slots=True)
class UsbUnit:
    """One physical unit: the USB function that stands for it, plus further functions of
    the same unit (a Rally Bar's internal hubs, HID and audio functions; a Tap's presence
    sensor and touch screen) folded into it."""

    main: UsbRecord
    match: UsbMatch | None
    product: Product | None
    functions: list[tuple[UsbRecord, UsbMatch]] = field(default_factory=list)
    notes: list[HealthIssue] = field(default_factory=list)

    @property
    def is_logitech(self) -> bool:
        return self.main.vendor_id == LOGITECH_VID or self.product is not None

    @property
    def records(self) -> list[UsbRecord]:
        return [self.main, *(r for r, _ in self.functions)]


def group_units(records: list[UsbRecord], catalog: Catalog) -> list[UsbUnit]:
    """Group USB functions into physical units using the catalog's roles.

    A non-main function is folded into the main function of one of its products that sits
    nearest to it in the USB topology (longest common port chain; a unit's internal hub sits
    above its functions, and a USB 3 unit shows up on two buses at the same port). When the
    topology cannot decide and exactly one such main unit is on the host, it is folded there;
    otherwise the function is reported as a unit of its own with a note, never dropped.
    """
    units: list[UsbUnit] = []
    pending: list[tuple[UsbRecord, UsbMatch]] = []
    for record in records:
        match = catalog.match_usb(record.vendor_id, record.product_id)
        if match is not None and not match.is_main:
            pending.append((record, match))
            continue
        product = match.product if match else None
        if product is None and record.vendor_id == LOGITECH_VID:
            product = catalog.match_usb_product_string(record.product)
        units.append(UsbUnit(record, match, product))

    mains = _MainIndex(units)
    for record, match in pending:
        target = mains.nearest(record, [p.name for p in match.products])
        if target is not None:
            target.functions.append((record, match))
            continue
        if match.usb_id.only_with_main:
            # Another vendor's chip that is only a Tap part when a Tap is there.
            units.append(UsbUnit(record, None, None))
            continue
        unit = UsbUnit(record, match, match.product)
        if match.ambiguous:
            others = ", ".join(p.name for p in match.products)
            unit.notes.append(
                HealthIssue(
                    "usb-function-without-main",
                    f"{match.role} function {record.vendor_id:04x}:{record.product_id:04x} belongs to "
                    f"one of: {others}; its main function is not visible",
                    Severity.WARNING,
                )
            )
        else:
            unit.notes.append(
                HealthIssue(
                    "usb-function-without-main",
                    f"only the {match.role} function of this {match.product.name} is visible",
                    Severity.WARNING,
                )
            )
        units.append(unit)
    return units


class _MainIndex:
    """The main units by product and by every prefix of their port chain, so that finding a
    function's unit costs a lookup per hop of its port chain instead of a comparison with every
    unit (linear in the number of devices: 800 devices no longer take 200 ms)."""

    def __init__(self, units: list[UsbUnit]) -> None:
        self.count: dict[str, int] = {}
        self.only: dict[str, UsbUnit] = {}
        self.by_prefix: dict[tuple[str, tuple[int, ...]], list[UsbUnit]] = {}
        for unit in units:
            if unit.product is None or unit.match is None or not unit.match.is_main:
                continue
            name = unit.product.name
            self.count[name] = self.count.get(name, 0) + 1
            self.only[name] = unit
            chain = unit.main.port_chain
            for k in range(1, len(chain) + 1):
                self.by_prefix.setdefault((name, chain[:k]), []).append(unit)

    def nearest(self, record: UsbRecord, names: list[str]) -> UsbUnit | None:
        """The main unit of one of ``names`` nearest to ``record``: the longest common port
        chain (on a tie, the one on the same bus), when that is one unit; else the only main
        unit of those products on the host; else ``None``."""
        names = list(dict.fromkeys(names))
        total = sum(self.count.get(n, 0) for n in names)
        if total == 0:
            return None
        chain = record.port_chain
        for k in range(len(chain), 0, -1):
            sharing = [u for n in names for u in self.by_prefix.get((n, chain[:k]), ())]
            if sharing:
                same_bus = [u for u in sharing if u.main.bus == record.bus]
                winners = same_bus or sharing
                if len(winners) == 1:
                    return winners[0]
                break
        if total == 1:
            return next(self.only[n] for n in names if self.count.get(n))
        return None
