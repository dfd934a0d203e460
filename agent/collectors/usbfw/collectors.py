"""The firmware collectors of the USB room families: ``uvc-xu``, ``hid-feature``, ``usb-bulk``.

Each runs for the units whose catalog product names it (``collectors = [...]``), reads the
function of the unit its recipe is for (by USB id: a Tap's HDMI capture 0876 and presence
sensor 0872 are two functions of one unit), decodes the version and sets the unit's
``firmware`` (``firmware_source`` = the collector's name) or a component. What a collector
cannot do is said on the unit, never hidden:

* ``firmware-unavailable`` (info): the node is absent, busy or not ours to open (the udev
  rule grants it to the agent: docs/install.md); the descriptor facts stand;
* ``firmware-read-failed`` (warning, and an error of the scan): the node was reached but the
  answer was short, out of range, garbage, an ioctl failed, or the device took longer than
  its deadline; no firmware is claimed.

The requests, gates and decoders are :mod:`agent.collectors.usbfw.requests`; the nodes
:mod:`agent.collectors.usbfw.nodes`; the table hub's bulk link
:mod:`agent.collectors.usbfw.tablehub`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

from agent.collectors.usbfw.nodes import NodeFailed, NodeUnavailable
from agent.collectors.usbfw.requests import (
    MAX_CONTROL_LEN,
    MEETUP_EEPROM_SELECTOR,
    MEETUP_VERSION_SELECTOR,
    MEETUP_XU_GUID,
    RALLY_AUDIO_LENGTH,
    RALLY_AUDIO_REPORT,
    SCRIBE_SELECTOR,
    SCRIBE_UNIT,
    TAP_HDMI_SELECT,
    TAP_HDMI_UNIT,
    TAP_READ_SELECTOR,
    TAP_SELECT_SELECTOR,
    TAP_SENSOR_LENGTH,
    TAP_SENSOR_REPORT,
    TAP_SENSOR_SELECT,
    UVC_GET_CUR,
    UVC_GET_LEN,
    UVC_SET_CUR,
    V4L2_CAP_VIDEO_CAPTURE,
    FirmwareDecodeError,
    HidRecipe,
    HidRequest,
    UvcRecipe,
    UvcRequest,
    check_hid_request,
    check_tablehub_write,
    check_uvc_request,
    decode_control_length,
    decode_meetup,
    decode_meetup_eeprom,
    decode_rally_audio,
    decode_scribe,
    decode_tablehub,
    decode_tap_hdmi,
    decode_tap_presence,
    xu_unit_ids,
)
from agent.log import get_logger
from agent.model import Observation, Severity
from agent.readonly import Gate

if TYPE_CHECKING:
    from agent.collectors import UsbReadContext
    from agent.collectors.usbfw.tablehub import BulkLink
    from agent.usbtree import UsbRecord, UsbUnit

log = get_logger("agent.collectors.usbfw")
LOGITECH = 0x046D
T = TypeVar("T")


class UvcNode(Protocol):
    """A video4linux node as the ``uvc-xu`` collector uses it (live, or a recording)."""

    descriptors: bytes | None

    def capabilities(self) -> int: ...

    def query(self, request: UvcRequest) -> bytes: ...


class HidNode(Protocol):
    """A hidraw node as the ``hid-feature`` collector uses it (live, or a recording)."""

    def feature(self, request: HidRequest) -> bytes: ...


class FirmwareAccess(Protocol):
    """How the firmware collectors reach a unit's function (:class:`agent.discovery.usb.UsbSource`
    on this host; the replay source from a recording). Each raises :class:`NodeUnavailable`
    when there is nothing to open."""

    def video_node(self, record: UsbRecord) -> Callable[[], AbstractContextManager[UvcNode]]: ...

    def hidraw_nodes(self, record: UsbRecord) -> list[Callable[[], AbstractContextManager[HidNode]]]: ...

    def bulk_link(self, record: UsbRecord) -> Callable[[], AbstractContextManager[BulkLink]]: ...


class DeadlinePassed(Exception):
    """The device did not finish within its deadline."""


#: Reads that outlived their deadline and are still running, by device: a device whose read
#: is stuck in the kernel is not opened again until that read returns (no pile of threads and
#: open nodes, one per scan, against one hung device).
_STUCK: dict[object, threading.Thread] = {}
_STUCK_LOCK = threading.Lock()


class StillStuck(Exception):
    """An earlier read of the device has not returned yet."""


def run_bounded(work: Callable[[], T], seconds: float, what: str, key: object = None) -> T:
    """``work()`` in a thread of its own, given at most ``seconds``: an ioctl the kernel does
    not time out soon enough must not hold up the scan (the thread finishes on its own; its
    node is closed when the ioctl returns). With a ``key`` (the device), a device whose
    earlier read is still running is not read again: :class:`StillStuck`."""
    if key is not None:
        with _STUCK_LOCK:
            earlier = _STUCK.get(key)
            if earlier is not None and earlier.is_alive():
                raise StillStuck(
                    f"{what}: an earlier read has not returned yet; not tried again until it does"
                )
            _STUCK.pop(key, None)
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"firmware {what}", daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    if thread.is_alive():
        if key is not None:
            with _STUCK_LOCK:
                _STUCK[key] = thread
        raise DeadlinePassed(f"{what} did not answer within {seconds:.2g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Reading:
    """What one function of a unit said: its version, components and attributes."""

    firmware: str | None = None
    components: tuple[tuple[str, str], ...] = ()
    attributes: tuple[tuple[str, object], ...] = ()


# --------------------------------------------------------------------------- recipes


def read_scribe(node: UvcNode) -> Reading:
    def q(query: int, size: int) -> bytes:
        return node.query(UvcRequest("scribe", SCRIBE_UNIT, SCRIBE_SELECTOR, query, size))

    length = decode_control_length(q(UVC_GET_LEN, 2), low=4, high=1024, what="Scribe")
    return Reading(firmware=decode_scribe(q(UVC_GET_CUR, length)))


def read_meetup(node: UvcNode) -> Reading:
    units = xu_unit_ids(node.descriptors or b"")
    unit = units.get(MEETUP_XU_GUID)
    if unit is None:
        raise FirmwareDecodeError(f"MeetUp: no extension unit {MEETUP_XU_GUID} in its UVC descriptors")
    if not 1 <= unit <= 255:
        raise FirmwareDecodeError(f"MeetUp: its UVC descriptors give extension unit id {unit}")

    def q(selector: int, query: int, size: int) -> bytes:
        return node.query(UvcRequest("meetup", unit, selector, query, size))

    length = decode_control_length(
        q(MEETUP_VERSION_SELECTOR, UVC_GET_LEN, 2), low=4, high=MAX_CONTROL_LEN, what="MeetUp"
    )
    version = decode_meetup(q(MEETUP_VERSION_SELECTOR, UVC_GET_CUR, length))
    components: tuple[tuple[str, str], ...] = ()
    try:
        decode_control_length(q(MEETUP_EEPROM_SELECTOR, UVC_GET_LEN, 2), low=2, high=2, what="MeetUp EEPROM")
        components = (("eeprom", decode_meetup_eeprom(q(MEETUP_EEPROM_SELECTOR, UVC_GET_CUR, 2))),)
    except (FirmwareDecodeError, NodeFailed):
        pass  # the version stands without the EEPROM's
    return Reading(firmware=version, components=components, attributes=(("uvc_xu_unit", unit),))


def read_tap_hdmi(node: UvcNode) -> Reading:
    node.query(UvcRequest("tap-hdmi", TAP_HDMI_UNIT, TAP_SELECT_SELECTOR, UVC_SET_CUR, 8, TAP_HDMI_SELECT))
    length = decode_control_length(
        node.query(UvcRequest("tap-hdmi", TAP_HDMI_UNIT, TAP_READ_SELECTOR, UVC_GET_LEN, 2)),
        low=8,
        high=8,
        what="Tap HDMI",
    )
    raw = node.query(UvcRequest("tap-hdmi", TAP_HDMI_UNIT, TAP_READ_SELECTOR, UVC_GET_CUR, length))
    return Reading(
        firmware=decode_tap_hdmi(raw),
        components=(("hdmi", decode_tap_hdmi(raw)), ("hdmi_raw", raw.hex())),
    )


def read_rally_audio(node: HidNode) -> Reading:
    report = node.feature(HidRequest("rally-audio", "get", RALLY_AUDIO_REPORT, RALLY_AUDIO_LENGTH))
    return Reading(firmware=decode_rally_audio(report), attributes=(("rally_report_3e", report.hex()),))


def read_tap_presence(node: HidNode) -> Reading:
    node.feature(
        HidRequest("tap-presence", "set", TAP_SENSOR_SELECT[0], len(TAP_SENSOR_SELECT), TAP_SENSOR_SELECT)
    )
    report = node.feature(HidRequest("tap-presence", "get", TAP_SENSOR_REPORT, TAP_SENSOR_LENGTH))
    return Reading(components=(("presence_sensor", decode_tap_presence(report)),))


#: By USB id of the function read: the UVC recipe.
UVC_RECIPES: dict[tuple[int, int], tuple[UvcRecipe, Callable[[UvcNode], Reading]]] = {
    (LOGITECH, 0x08E2): ("scribe", read_scribe),
    (LOGITECH, 0x0866): ("meetup", read_meetup),
    (LOGITECH, 0x0876): ("tap-hdmi", read_tap_hdmi),
}
#: By USB id of the function read: the hidraw recipe.
HID_RECIPES: dict[tuple[int, int], tuple[HidRecipe, Callable[[HidNode], Reading]]] = {
    (LOGITECH, 0x0885): ("rally-audio", read_rally_audio),
    (LOGITECH, 0x0872): ("tap-presence", read_tap_presence),
}
#: The USB ids of table hubs (``usb-bulk``).
BULK_IDS = frozenset({(LOGITECH, 0x088F)})


# --------------------------------------------------------------------------- applying a reading


def _functions(unit: UsbUnit, ids: object) -> list[UsbRecord]:
    return [r for r in unit.records if (r.vendor_id, r.product_id) in ids]  # type: ignore[operator]


def _apply(obs: Observation, reading: Reading, source: str) -> None:
    if reading.firmware is not None and obs.firmware is None:
        obs.firmware, obs.firmware_source = reading.firmware, source
    for name, version in reading.components:
        obs.components[name] = version
    for key, value in reading.attributes:
        obs.attributes[key] = value


def _unavailable(obs: Observation, what: str, exc: Exception) -> None:
    obs.note(
        "firmware-unavailable",
        f"firmware not read ({what}: {exc}); identity from USB descriptors only",
        Severity.INFO,
    )


def _failed(obs: Observation, what: str, exc: Exception) -> str:
    message = f"firmware read failed ({what}): {exc}"
    obs.note("firmware-read-failed", message + "; no firmware claimed", Severity.WARNING)
    return message


_FAILURES = (NodeFailed, FirmwareDecodeError, DeadlinePassed, OSError)


def _read_uvc(devices: FirmwareAccess, record: UsbRecord, read: Callable[[UvcNode], Reading]) -> Reading:
    with devices.video_node(record)() as node:
        if not node.capabilities() & V4L2_CAP_VIDEO_CAPTURE:
            raise NodeUnavailable("its video4linux node is not a capture node")
        return read(node)


def _read_hid(devices: FirmwareAccess, record: UsbRecord, read: Callable[[HidNode], Reading]) -> Reading:
    """The first of the device's hidraw nodes that answers (the report lives on one of its
    HID interfaces; asking another is a refused read, nothing more)."""
    last: Exception = NodeUnavailable("no hidraw node under the device")
    for opener in devices.hidraw_nodes(record):
        try:
            with opener() as node:
                return read(node)
        except (NodeFailed, FirmwareDecodeError) as exc:
            last = exc
    raise last


def _read_bulk(devices: FirmwareAccess, record: UsbRecord) -> Reading:
    from agent.collectors.usbfw.tablehub import read_version

    with devices.bulk_link(record)() as link:
        version, state = decode_tablehub(read_version(link))
    return Reading(firmware=version, attributes=(("image_state", state),))


#: What each function of a unit said, by its enumeration (sysfs path, bus and device number,
#: bcdDevice) and collector: firmware changes only with a new enumeration, so a unit is read
#: once, not at every scan (the Tap's selects are not sent again and again).
_READ: dict[tuple[object, ...], Reading] = {}
MAX_REMEMBERED = 1024


@dataclass(frozen=True, slots=True)
class Job:
    what: str
    record: UsbRecord
    work: Callable[[], Reading]


def _enumeration(record: UsbRecord, source: str) -> tuple[object, ...]:
    return (source, str(record.path), record.name, record.busnum, record.devnum, record.bcd_device)


def _run(
    observation: Observation, unit: UsbUnit, ctx: UsbReadContext, source: str, jobs: Sequence[Job]
) -> tuple[Observation, str | None]:
    """Each job (one function of the unit) within what is left of the unit's deadline; what
    it read goes on the observation, what kept it from reading becomes a note (and an error
    when the device was reached). A device's answer, whatever it is, never ends the scan."""
    if not jobs:
        observation.note(
            "firmware-unavailable",
            f"no known way to read the firmware of {unit.main.vendor_id:04x}:{unit.main.product_id:04x} "
            f"over {source}",
            Severity.INFO,
        )
        return observation, None
    errors = []
    ends = time.monotonic() + ctx.deadline
    live = bool(getattr(ctx.devices, "live", False))  # a recording is read afresh every time
    for job in jobs:
        key = _enumeration(job.record, source)
        try:
            reading = _READ.get(key) if live else None
            if reading is None:
                reading = run_bounded(job.work, ends - time.monotonic(), job.what, key)
                if live:
                    while len(_READ) >= MAX_REMEMBERED:
                        del _READ[next(iter(_READ))]
                    _READ[key] = reading
            _apply(observation, reading, source)
        except NodeUnavailable as exc:
            _unavailable(observation, job.what, exc)
        except StillStuck as exc:
            errors.append(_failed(observation, job.what, exc))
        except _FAILURES as exc:
            errors.append(_failed(observation, job.what, exc))
        except Exception as exc:  # a device's bytes must never end the scan (a gate refusal included)
            log.error("firmware.read.bug", what=job.what, error=f"{type(exc).__name__}: {exc}")
            errors.append(_failed(observation, job.what, exc))
    return observation, "; ".join(errors) or None


class UvcXuCollector:
    """Scribe, MeetUp and Tap HDMI capture: their version over a UVC extension unit."""

    name: ClassVar[str] = "uvc-xu"
    writes: ClassVar[str | None] = (
        "UVC extension-unit queries on the video4linux node: GET_LEN and GET_CUR of the version "
        "control (Scribe unit 8 selector 1; MeetUp's Logitech unit, selectors 1 and 3); the Tap "
        "HDMI capture's select SET_CUR (unit 6 selector 1, 0B 00…) then GET_LEN/GET_CUR selector 2"
    )
    gate: ClassVar[Gate | None] = staticmethod(check_uvc_request)

    def collect(
        self, observation: Observation, unit: UsbUnit, ctx: UsbReadContext
    ) -> tuple[Observation, str | None]:
        jobs = []
        for record in _functions(unit, UVC_RECIPES):
            recipe, read = UVC_RECIPES[(record.vendor_id, record.product_id)]
            work = functools.partial(_read_uvc, ctx.devices, record, read)
            jobs.append(Job(f"{recipe} over its video4linux node", record, work))
        return _run(observation, unit, ctx, self.name, jobs)


class HidFeatureCollector:
    """The Rally system's version (its display hub's audio device) and the Tap's presence
    sensor, over hidraw feature reports."""

    name: ClassVar[str] = "hid-feature"
    writes: ClassVar[str | None] = (
        "hidraw feature reports: GET_FEATURE 0x3E (513 bytes) of the Rally system's audio "
        "device; the Tap presence sensor's SET_FEATURE 1B 04 00 00 00 then GET_FEATURE 0x19"
    )
    gate: ClassVar[Gate | None] = staticmethod(check_hid_request)

    def collect(
        self, observation: Observation, unit: UsbUnit, ctx: UsbReadContext
    ) -> tuple[Observation, str | None]:
        jobs = []
        for record in _functions(unit, HID_RECIPES):
            recipe, read = HID_RECIPES[(record.vendor_id, record.product_id)]
            jobs.append(
                Job(f"{recipe} over hidraw", record, functools.partial(_read_hid, ctx.devices, record, read))
            )
        return _run(observation, unit, ctx, self.name, jobs)


class UsbBulkCollector:
    """The Rally table hub's version over its vendor bulk interface."""

    name: ClassVar[str] = "usb-bulk"
    writes: ClassVar[str | None] = (
        "two 8-byte frames on the table hub's vendor bulk interface: INIT (01 CC EF BE…, at most "
        "5 times) and the version request (07 CC FF FF…)"
    )
    gate: ClassVar[Gate | None] = staticmethod(check_tablehub_write)

    def collect(
        self, observation: Observation, unit: UsbUnit, ctx: UsbReadContext
    ) -> tuple[Observation, str | None]:
        jobs = [
            Job(
                "table hub over its bulk interface",
                record,
                functools.partial(_read_bulk, ctx.devices, record),
            )
            for record in _functions(unit, BULK_IDS)
        ]
        return _run(observation, unit, ctx, self.name, jobs)
