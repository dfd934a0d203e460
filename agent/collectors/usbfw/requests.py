"""What the firmware collectors may send a USB device, and what its answers mean.

Issue [11/16]; V = read in a source or a recording, U = a hint. Three ways of reading, one
collector each (:mod:`agent.collectors.usbfw.collectors`), each with a read-only gate that
accepts exactly these requests, byte for byte, and nothing else:

``uvc-xu`` — UVC extension-unit queries on the unit's video4linux node (``UVCIOC_CTRL_QUERY``):

* **Scribe** 046D:08E2 (V, recorded): unit 8, selector 1: ``GET_LEN`` (2 bytes, little-endian,
  valid 4..1024), then ``GET_CUR`` of that length: major = b1, minor = b0, build = b3 << 8 | b2.
* **MeetUp** 046D:0866 (V, code): the extension unit whose GUID is
  ``69678EE4-410F-40DB-A850-7420D7D8240E`` (its id looked up in the UVC descriptors);
  selector 1: ``GET_LEN``, ``GET_CUR`` (≥ 4 bytes): minor = b0, major = b1, build = b3 << 8 | b2;
  selector 3 (2 bytes): the EEPROM version (U: kept as its two bytes).
* **Tap** HDMI capture 046D:0876 (V, code): unit 6: ``SET_CUR`` selector 1 with exactly
  ``0B 00 00 00 00 00 00 00`` (it selects what selector 2 reads), ``GET_LEN`` selector 2
  (≤ 8), ``GET_CUR`` selector 2: three big-endian u16 at offsets 2, 4, 6 (U: another client
  decodes b2·100 + b3; the raw bytes are kept). Never selectors 3 or 4 (firmware update).

``hid-feature`` — feature reports on the unit's hidraw node (``HIDIOCGFEATURE``/``HIDIOCSFEATURE``):

* **Rally system audio** 046D:0885 (in the display hub) (V, code): one ``GET_FEATURE`` of
  report 0x3E, 513 bytes with the report id, no SET before it; the system version is
  major.minor.build at offsets 0xB8..0xBA (U: the rest is a topology table: the raw report
  is kept).
* **Tap presence sensor** 046D:0872 (V, code): ``SET_FEATURE`` ``1B 04 00 00 00`` then
  ``GET_FEATURE`` of report 0x19, 5 bytes: major = b4, minor = b3, build = b2 << 8 | b1.
  Never report 0x1A (a test mode driving power and reset pins). The Tap's label serial is
  readable only in that test mode, so the agent never reads it.

``usb-bulk`` — the **Rally table hub** 046D:088F (V, code): on its vendor bulk interface,
INIT ``01 CC EF BE 00 00 00 00`` answered ``01 CC 99 09 00 00 00 00`` (up to 5 tries), then
``07 CC FF FF 00 00 00 00`` answered with 20 bytes: a 16-character ASCII version and a u32
little-endian image state. Never 0xCC03 (firmware download).

This module is pure: the requests as data, the gates, and the decoders. A decoder raises
:class:`FirmwareDecodeError` for an answer that holds no version (short, out of range, all
zeros or all ones), so no firmware is ever claimed from garbage.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from agent.readonly import ReadOnlyViolation

# --------------------------------------------------------------------------- UVC

UVC_SET_CUR, UVC_GET_CUR, UVC_GET_LEN = 0x01, 0x81, 0x85
#: ``_IOWR('u', 0x21, struct uvc_xu_control_query)`` on LP64 (x86-64, arm64).
UVCIOC_CTRL_QUERY = 0xC0107521
#: ``_IOR('V', 0, struct v4l2_capability)``: what a node is (a pure query of the driver).
VIDIOC_QUERYCAP = 0x80685600
V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_DEVICE_CAPS = 0x80000000

SCRIBE_UNIT, SCRIBE_SELECTOR = 8, 1
MEETUP_XU_GUID = uuid.UUID("69678EE4-410F-40DB-A850-7420D7D8240E")
MEETUP_VERSION_SELECTOR, MEETUP_EEPROM_SELECTOR = 1, 3
TAP_HDMI_UNIT, TAP_SELECT_SELECTOR, TAP_READ_SELECTOR = 6, 1, 2
TAP_HDMI_SELECT = bytes([0x0B, 0, 0, 0, 0, 0, 0, 0])
#: GET_LEN answers a u16; a version control is this long at most (the Scribe's bound).
MAX_CONTROL_LEN = 1024

UvcRecipe = Literal["scribe", "meetup", "tap-hdmi"]


@dataclass(frozen=True, slots=True)
class UvcRequest:
    """One extension-unit query: what the ioctl carries (``data`` only for ``SET_CUR``)."""

    recipe: UvcRecipe
    unit: int
    selector: int
    query: int
    size: int
    data: bytes | None = None


def check_uvc_request(request: Any) -> None:
    """The ``uvc-xu`` gate: exactly the documented queries of the recipe the node was opened
    for; anything else raises :class:`~agent.readonly.ReadOnlyViolation`."""
    if not isinstance(request, UvcRequest):
        raise ReadOnlyViolation(f"UVC: refused a request of unknown form: {type(request).__name__}")
    r = request
    sel, query, size = r.selector, r.query, r.size
    get_len = query == UVC_GET_LEN and size == 2 and r.data is None
    get_cur = query == UVC_GET_CUR and r.data is None
    if r.recipe == "scribe":
        if r.unit == SCRIBE_UNIT and sel == SCRIBE_SELECTOR and (get_len or (get_cur and 4 <= size <= 1024)):
            return
    elif r.recipe == "meetup":
        if 1 <= r.unit <= 255:
            if sel == MEETUP_VERSION_SELECTOR and (get_len or (get_cur and 4 <= size <= MAX_CONTROL_LEN)):
                return
            if sel == MEETUP_EEPROM_SELECTOR and (get_len or (get_cur and size == 2)):
                return
    elif r.recipe == "tap-hdmi" and r.unit == TAP_HDMI_UNIT:
        if sel == TAP_SELECT_SELECTOR and query == UVC_SET_CUR and size == 8 and r.data == TAP_HDMI_SELECT:
            return
        if sel == TAP_READ_SELECTOR and (get_len or (get_cur and 1 <= size <= 8)):
            return
    raise ReadOnlyViolation(
        f"UVC ({r.recipe}): refused query 0x{query:02x} of unit {r.unit} selector {sel} "
        f"({size} bytes{', with data' if r.data is not None else ''}): not a documented read"
    )


def xu_unit_ids(descriptors: bytes) -> dict[uuid.UUID, int]:
    """Every UVC extension unit in raw USB descriptors (sysfs ``descriptors``): GUID → unit
    id. Class-specific VideoControl descriptors: type 0x24 (CS_INTERFACE), subtype 0x06
    (VC_EXTENSION_UNIT), then bUnitID and the 16-byte GUID (stored little-endian)."""
    found: dict[uuid.UUID, int] = {}
    i = 0
    while i + 2 <= len(descriptors):
        length = descriptors[i]
        if length < 2 or i + length > len(descriptors):
            break
        if length >= 20 and descriptors[i + 1] == 0x24 and descriptors[i + 2] == 0x06:
            found.setdefault(uuid.UUID(bytes_le=bytes(descriptors[i + 4 : i + 20])), descriptors[i + 3])
        i += length
    return found


# --------------------------------------------------------------------------- hidraw

RALLY_AUDIO_REPORT, RALLY_AUDIO_LENGTH, RALLY_VERSION_OFFSET = 0x3E, 513, 0xB8
TAP_SENSOR_SELECT = bytes([0x1B, 0x04, 0x00, 0x00, 0x00])
TAP_SENSOR_REPORT, TAP_SENSOR_LENGTH = 0x19, 5
TAP_TEST_MODE_REPORT = 0x1A

HidRecipe = Literal["rally-audio", "tap-presence"]


def hidiocgfeature(length: int) -> int:
    """``HIDIOCGFEATURE(len)`` = ``_IOC(_IOC_READ | _IOC_WRITE, 'H', 0x07, len)``."""
    return 0xC0000000 | (length << 16) | (ord("H") << 8) | 0x07


def hidiocsfeature(length: int) -> int:
    """``HIDIOCSFEATURE(len)`` = ``_IOC(_IOC_READ | _IOC_WRITE, 'H', 0x06, len)``."""
    return 0xC0000000 | (length << 16) | (ord("H") << 8) | 0x06


@dataclass(frozen=True, slots=True)
class HidRequest:
    """``get``: a GET_FEATURE of ``report`` into ``length`` bytes (the report id included);
    ``set``: a SET_FEATURE of ``data`` (its first byte is the report id)."""

    recipe: HidRecipe
    kind: Literal["get", "set"]
    report: int
    length: int
    data: bytes | None = None


def check_hid_request(request: Any) -> None:
    """The ``hid-feature`` gate: the Rally audio's one GET_FEATURE 0x3E of 513 bytes; the Tap
    sensor's SET_FEATURE ``1B 04 00 00 00`` and GET_FEATURE 0x19 of 5 bytes. Report 0x1A, any
    other SET and any other report raise :class:`~agent.readonly.ReadOnlyViolation`."""
    if not isinstance(request, HidRequest):
        raise ReadOnlyViolation(f"hidraw: refused a request of unknown form: {type(request).__name__}")
    r = request
    if r.report == TAP_TEST_MODE_REPORT or (
        r.data is not None and r.data[:1] == bytes([TAP_TEST_MODE_REPORT])
    ):
        raise ReadOnlyViolation(
            "hidraw: refused report 0x1A (the Tap's test mode changes the device's state)"
        )
    if r.recipe == "rally-audio":
        if (
            r.kind == "get"
            and r.report == RALLY_AUDIO_REPORT
            and r.length == RALLY_AUDIO_LENGTH
            and r.data is None
        ):
            return
    elif r.recipe == "tap-presence":
        if (
            r.kind == "set"
            and r.data == TAP_SENSOR_SELECT
            and r.report == TAP_SENSOR_SELECT[0]
            and r.length == 5
        ):
            return
        if (
            r.kind == "get"
            and r.report == TAP_SENSOR_REPORT
            and r.length == TAP_SENSOR_LENGTH
            and r.data is None
        ):
            return
    raise ReadOnlyViolation(
        f"hidraw ({r.recipe}): refused {r.kind.upper()}_FEATURE of report 0x{r.report:02x} "
        f"({r.length} bytes): not a documented read"
    )


# --------------------------------------------------------------------------- table hub bulk

TABLEHUB_INIT = bytes([0x01, 0xCC, 0xEF, 0xBE, 0, 0, 0, 0])
TABLEHUB_INIT_REPLY = bytes([0x01, 0xCC, 0x99, 0x09, 0, 0, 0, 0])
TABLEHUB_GET_VERSION = bytes([0x07, 0xCC, 0xFF, 0xFF, 0, 0, 0, 0])
TABLEHUB_VERSION_LENGTH = 20
TABLEHUB_INIT_TRIES = 5


def check_tablehub_write(frame: Any) -> None:
    """The ``usb-bulk`` gate: a write to the table hub is the INIT frame or the version
    request, byte for byte; anything else (0xCC03 firmware download included) raises
    :class:`~agent.readonly.ReadOnlyViolation`."""
    if not isinstance(frame, bytes | bytearray) or bytes(frame) not in (TABLEHUB_INIT, TABLEHUB_GET_VERSION):
        shown = bytes(frame[:8]).hex(" ") if isinstance(frame, bytes | bytearray) else type(frame).__name__
        raise ReadOnlyViolation(f"table hub: refused bulk write {shown}: only INIT and the version request")


# --------------------------------------------------------------------------- decoders


class FirmwareDecodeError(ValueError):
    """An answer that holds no version; the message says why (no firmware is claimed)."""


def _plausible(data: bytes, what: str) -> None:
    """Refuse an answer of all zeros or all ones: a device that did not fill it in."""
    if not data.strip(b"\x00"):
        raise FirmwareDecodeError(f"{what}: all zeros")
    if not data.strip(b"\xff"):
        raise FirmwareDecodeError(f"{what}: all ones")


def decode_control_length(data: bytes, *, low: int, high: int, what: str) -> int:
    """A GET_LEN answer (u16 little-endian) within ``low``..``high``."""
    if len(data) != 2:
        raise FirmwareDecodeError(f"{what}: GET_LEN answered {len(data)} bytes, not 2")
    length = int.from_bytes(data, "little")
    if not low <= length <= high:
        raise FirmwareDecodeError(f"{what}: GET_LEN answered {length}, outside {low}..{high}")
    return length


def decode_scribe(data: bytes) -> str:
    """The Scribe's version from its GET_CUR: major = b1, minor = b0, build = b3 << 8 | b2."""
    if len(data) < 4:
        raise FirmwareDecodeError(f"Scribe version: {len(data)} bytes, at least 4 expected")
    _plausible(data[:4], "Scribe version")
    return f"{data[1]}.{data[0]}.{data[3] << 8 | data[2]}"


def decode_meetup(data: bytes) -> str:
    """The MeetUp's version: minor = b0, major = b1, build = b3 << 8 | b2."""
    if len(data) < 4:
        raise FirmwareDecodeError(f"MeetUp version: {len(data)} bytes, at least 4 expected")
    _plausible(data[:4], "MeetUp version")
    return f"{data[1]}.{data[0]}.{data[3] << 8 | data[2]}"


def decode_meetup_eeprom(data: bytes) -> str:
    """The MeetUp's EEPROM version (U): its two bytes, major = b1, minor = b0."""
    if len(data) != 2:
        raise FirmwareDecodeError(f"MeetUp EEPROM version: {len(data)} bytes, 2 expected")
    _plausible(data, "MeetUp EEPROM version")
    return f"{data[1]}.{data[0]}"


def decode_tap_hdmi(data: bytes) -> str:
    """The Tap HDMI capture's version: three big-endian u16 at offsets 2, 4 and 6."""
    if len(data) < 8:
        raise FirmwareDecodeError(f"Tap HDMI version: {len(data)} bytes, 8 expected")
    _plausible(data[2:8], "Tap HDMI version")
    major, minor, build = struct.unpack(">HHH", data[2:8])
    return f"{major}.{minor}.{build}"


def decode_rally_audio(report: bytes) -> str:
    """The Rally system version: major.minor.build at offsets 0xB8..0xBA of report 0x3E."""
    if len(report) < RALLY_VERSION_OFFSET + 3:
        raise FirmwareDecodeError(f"Rally system report: {len(report)} bytes, {RALLY_AUDIO_LENGTH} expected")
    if report[0] != RALLY_AUDIO_REPORT:
        raise FirmwareDecodeError(f"Rally system report: report id 0x{report[0]:02x}, not 0x3E")
    version = report[RALLY_VERSION_OFFSET : RALLY_VERSION_OFFSET + 3]
    _plausible(version, "Rally system version")
    return ".".join(str(b) for b in version)


def decode_tap_presence(report: bytes) -> str:
    """The Tap presence sensor's version: major = b4, minor = b3, build = b2 << 8 | b1."""
    if len(report) != TAP_SENSOR_LENGTH:
        raise FirmwareDecodeError(f"Tap sensor report: {len(report)} bytes, 5 expected")
    if report[0] != TAP_SENSOR_REPORT:
        raise FirmwareDecodeError(f"Tap sensor report: report id 0x{report[0]:02x}, not 0x19")
    _plausible(report[1:], "Tap sensor version")
    return f"{report[4]}.{report[3]}.{report[2] << 8 | report[1]}"


def decode_tablehub(data: bytes) -> tuple[str, int]:
    """The table hub's version text and image state from its 20-byte answer."""
    if len(data) != TABLEHUB_VERSION_LENGTH:
        raise FirmwareDecodeError(f"table hub version: {len(data)} bytes, 20 expected")
    text = data[:16].split(b"\x00", 1)[0]
    if not text or not all(0x20 < b < 0x7F for b in text):
        raise FirmwareDecodeError("table hub version: not printable ASCII")
    return text.decode("ascii"), int.from_bytes(data[16:20], "little")
