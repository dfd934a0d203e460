"""Every firmware collector of issue [11/16] through real ``ioctl()`` and libusb calls.

``roomsync scan --usb --json`` runs in a child process that sees an umockdev testbed: the
agent finds the nodes in the emulated sysfs (which it takes for the live ``/sys``), opens
``/dev/videoN``/``/dev/hidrawN`` and makes ordinary ``fcntl.ioctl`` calls; every request
reaches a handler of this test byte for byte (:mod:`tests.umockdev_ioctl`). The table hub's
vendor bulk interface runs under ``umockdev-run`` against a usbmon capture, through the real
libusb and pyusb (:mod:`tests.usbfake`).

Each handler accepts only the requests the issue documents (written out here again, from the
issue, not imported from the agent's gates) and raises ``AssertionError`` on anything else;
the harness raises it again in the test even when the agent swallowed the failed ioctl. The
forbidden requests themselves are tried on the agent's own ``VideoNode``/``HidrawNode``/
``PyUsbBulkLink``: each must be refused in the child before any byte leaves it.
"""

from __future__ import annotations

import errno
import json
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.sysfs import device_descriptor
from tests.umockdev_ioctl import (
    METADATA_CAPS,
    UVC_GET_CUR,
    UVC_GET_INFO,
    UVC_GET_LEN,
    UVC_GET_MIN,
    UVC_SET_CUR,
    VIDIOC_QUERYCAP,
    HidFeature,
    Ioctl,
    IoctlTestbed,
    Request,
    UvcQuery,
    querycap_reply,
)
from tests.usbfake import Endpoint, FakeUsbDevice, Interface, UsbmonCapture, run_under_umockdev

pytestmark = [pytest.mark.umockdev]

USB1 = "/sys/devices/pci0000:00/0000:00:14.0/usb1"
LOGI = 0x046D
SCRIBE, MEETUP, TAP_HDMI, TAP_SENSOR = 0x08E2, 0x0866, 0x0876, 0x0872
RALLY_AUDIO, TABLE_HUB = 0x0885, 0x088F
MEETUP_GUID = uuid.UUID("69678EE4-410F-40DB-A850-7420D7D8240E")
#: Another Logitech extension unit (the video pipe's): a MeetUp has several; only the GUID
#: tells which one holds the version.
DECOY_GUID = uuid.UUID("49E40215-F434-47FE-B158-0E885023E51B")

#: The documented bytes, as the issue spells them.
TAP_SELECT = bytes.fromhex("0B 00 00 00 00 00 00 00")
TAP_SENSOR_SELECT = bytes.fromhex("1B 04 00 00 00")
HUB_INIT = bytes.fromhex("01 CC EF BE 00 00 00 00")
HUB_INIT_REPLY = bytes.fromhex("01 CC 99 09 00 00 00 00")
HUB_GET_VERSION = bytes.fromhex("07 CC FF FF 00 00 00 00")

#: What a handler replies: bytes, None (a SET), an errno, or HANG (wait until released).
HANG = "hang"
Replies = dict[tuple[int, int], bytes | int | str | None]


@pytest.fixture
def bed() -> Iterator[IoctlTestbed]:
    with IoctlTestbed.required() as testbed:
        yield testbed


# --------------------------------------------------------------------------- what may reach a device


def documented_uvc(recipe: str, unit: int) -> Callable[[UvcQuery], None]:
    """The issue's UVC requests of ``recipe`` (on extension unit ``unit``), nothing else."""

    def check(q: UvcQuery) -> None:
        untouched = q.data == bytes(q.size)  # a GET sends nothing: the agent's buffer is zeroed
        get_len = q.query == UVC_GET_LEN and q.size == 2 and untouched
        get_cur = q.query == UVC_GET_CUR and untouched
        ok = False
        if recipe == "scribe":
            ok = q.unit == 8 and q.selector == 1 and (get_len or (get_cur and 4 <= q.size <= 1024))
        elif recipe == "meetup":
            ok = q.unit == unit and (
                (q.selector == 1 and (get_len or (get_cur and q.size >= 4)))
                or (q.selector == 3 and (get_len or (get_cur and q.size == 2)))
            )
        elif recipe == "tap-hdmi":
            ok = q.unit == 6 and (
                (q.selector == 1 and q.query == UVC_SET_CUR and q.size == 8 and q.data == TAP_SELECT)
                or (q.selector == 2 and (get_len or (get_cur and 1 <= q.size <= 8)))
            )
        assert ok, f"{recipe}: a request the issue does not document reached the device: {q}"

    return check


def documented_hid(recipe: str) -> Callable[[HidFeature], None]:
    """The issue's feature reports of ``recipe``; the Tap sensor's GET only after its SET."""
    selected: list[bool] = []

    def check(f: HidFeature) -> None:
        ok = False
        if recipe == "rally-audio":  # one GET_FEATURE 0x3E of 513 bytes, no SET
            ok = f.op == "get" and f.data == b"\x3e" + bytes(512)
        elif recipe == "tap-presence":
            if f.op == "set" and f.data == TAP_SENSOR_SELECT:
                selected.append(True)
                ok = True
            else:
                ok = f.op == "get" and f.data == b"\x19" + bytes(4) and bool(selected)
        assert ok, f"{recipe}: a feature report the issue does not document reached the device: {f}"

    return check


def no_other_ioctl(request: Ioctl) -> int:
    raise AssertionError(f"an ioctl the firmware collectors never need reached the device: {request}")


@dataclass
class Handler:
    """A node's handler: the documented-request check first, then the test's replies by
    ``(selector, query)`` (UVC) or ``(report id, op == "set")`` (hidraw)."""

    check: Callable[[Any], None]
    replies: Replies
    release: threading.Event = field(default_factory=threading.Event)
    returned: threading.Event = field(default_factory=threading.Event)

    def __call__(self, request: UvcQuery | HidFeature) -> bytes | int | None:
        self.check(request)
        if isinstance(request, UvcQuery):
            key = (request.selector, request.query)
        else:
            key = (request.report_id, int(request.op == "set"))
        reply = self.replies[key]
        if reply == HANG:
            try:  # a device that never answers (until the test is done with it)
                self.release.wait(30)
                return errno.ETIMEDOUT
            finally:
                self.returned.set()
        assert not isinstance(reply, str)
        return reply


def uvc(recipe: str, replies: Replies, unit: int = 0) -> Handler:
    return Handler(documented_uvc(recipe, unit), replies)


def hid(recipe: str, replies: Replies) -> Handler:
    return Handler(documented_hid(recipe), replies)


# --------------------------------------------------------------------------- descriptors and reports


def xu_descriptor(unit: int, guid: uuid.UUID, source: int = 2) -> bytes:
    """A VC_EXTENSION_UNIT descriptor: bLength = 24 + p + n (one source pin, 2 control bytes)."""
    controls = b"\xff\x07"
    head = bytes([24 + 1 + len(controls), 0x24, 0x06, unit]) + guid.bytes_le
    return head + bytes([11, 1, source, len(controls)]) + controls + b"\x00"


def meetup_descriptors(*units: tuple[int, uuid.UUID]) -> bytes:
    """sysfs ``descriptors`` of a MeetUp: its device descriptor, then a configuration with the
    video-control interface: header, camera terminal, processing unit, ``units`` (extension
    units) and an output terminal."""
    camera = bytes([18, 0x24, 0x02, 1, 0x01, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0x0E, 0x0A, 0x00])
    processing = bytes([13, 0x24, 0x05, 2, 1, 0, 0, 3, 0x5B, 0x17, 0x00, 0, 0])
    xus = b"".join(xu_descriptor(unit, guid) for unit, guid in units)
    output = bytes([9, 0x24, 0x03, 3, 0x01, 0x01, 0, units[-1][0] if units else 2, 0])
    body = camera + processing + xus + output
    header = struct.pack("<BBBHHIBB", 13, 0x24, 0x01, 0x0110, 13 + len(body), 48_000_000, 1, 1)
    iad = bytes([8, 0x0B, 0, 2, 0x0E, 0x03, 0, 0])
    vc_interface = bytes([9, 0x04, 0, 0, 1, 0x0E, 0x01, 0, 0])
    interrupt = bytes([7, 0x05, 0x87, 0x03, 0x40, 0x00, 0x08])
    rest = iad + vc_interface + header + body + interrupt
    config = struct.pack("<BBHBBBBB", 9, 0x02, 9 + len(rest), 2, 1, 0, 0x80, 250)
    return device_descriptor(LOGI, MEETUP) + config + rest


def rally_report(version: bytes = bytes([1, 4, 30])) -> bytes:
    """Report 0x3E of the Rally system's audio device: 513 bytes, a topology table around the
    version at 0xB8..0xBA."""
    report = bytearray(513)
    report[0] = 0x3E
    report[1:9] = bytes.fromhex("02 85 08 6d 04 8f 08 6d")  # some of the topology table
    report[0xB8:0xBB] = version
    report[0x120] = 0x5A
    return bytes(report)


# --------------------------------------------------------------------------- running the agent


def scan(bed: IoctlTestbed, tmp_path: Path, config: str = "") -> tuple[int, dict[str, Any], float]:
    """``python -m agent scan --usb --no-libusb --json`` in a child that sees the testbed:
    exit code, report, wall-clock seconds."""
    config_file = tmp_path / "agent.toml"
    config_file.write_text(config, encoding="utf-8")
    env = {k: v for k, v in bed.env().items() if not k.startswith("ROOMSYNC_")}
    argv = ["scan", "--usb", "--no-libusb", "--json", "--config", str(config_file)]
    argv += ["--state-dir", str(tmp_path / "state")]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "agent", *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout), elapsed


def devices(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["address"]: d for d in report["devices"]}


def notes(device: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {i["code"]: i for i in device["health_issues"]}


def on(node: str, requests: list[Request]) -> list[Request]:
    return [r for r in requests if r.node == node]


def querycap(node: str) -> Ioctl:
    return Ioctl(node, VIDIOC_QUERYCAP)


def q(node: str, unit: int, selector: int, query: int, size: int, data: bytes | None = None) -> UvcQuery:
    return UvcQuery(node, unit, selector, query, size, bytes(size) if data is None else data)


# --------------------------------------------------------------------------- the families


def test_scribe_firmware_over_extension_unit_8(bed: IoctlTestbed, tmp_path: Path) -> None:
    handler = uvc("scribe", {(1, UVC_GET_LEN): b"\x04\x00", (1, UVC_GET_CUR): bytes.fromhex("03 02 10 01")})
    bed.add_uvc_device(
        f"{USB1}/1-2",
        vid=LOGI,
        pid=SCRIBE,
        answer=handler,
        other=no_other_ioctl,
        metadata_video=1,  # index 1: the metadata node of the same camera, never asked
        product="Logi Scribe",
        serial="2212LZ0SCRIBE",
    )

    code, report, _ = scan(bed, tmp_path)

    assert code == 0, report["errors"]
    [scribe] = report["devices"]
    assert (scribe["product"], scribe["firmware"], scribe["firmware_source"]) == (
        "Scribe",
        "2.3.272",
        "uvc-xu",
    )
    assert scribe["provenance"]["firmware"]["collector"] == "uvc-xu"
    assert scribe["health_issues"] == []
    assert bed.requests == [
        querycap("/dev/video0"),
        q("/dev/video0", 8, 1, UVC_GET_LEN, 2),
        q("/dev/video0", 8, 1, UVC_GET_CUR, 4),
    ]


def test_meetup_firmware_and_eeprom_from_the_extension_unit_its_guid_names(
    bed: IoctlTestbed, tmp_path: Path
) -> None:
    # The Logitech unit with the MeetUp's GUID is unit 5 here; a unit 8 (what one updater
    # hard-codes) exists too, with another GUID: nothing may be asked of it.
    descriptors = meetup_descriptors((8, DECOY_GUID), (5, MEETUP_GUID))
    handler = uvc(
        "meetup",
        {
            (1, UVC_GET_LEN): b"\x08\x00",
            (1, UVC_GET_CUR): bytes.fromhex("48 01 0B 00 00 00 00 00"),
            (3, UVC_GET_LEN): b"\x02\x00",
            (3, UVC_GET_CUR): bytes.fromhex("03 01"),
        },
        unit=5,
    )
    bed.add_uvc_device(
        f"{USB1}/1-3",
        vid=LOGI,
        pid=MEETUP,
        answer=handler,
        other=no_other_ioctl,
        product="Logitech MeetUp",
        serial="MEETUP0001",
        descriptors=descriptors,
    )

    code, report, _ = scan(bed, tmp_path)

    assert code == 0, report["errors"]
    [meetup] = report["devices"]
    assert (meetup["product"], meetup["firmware"], meetup["firmware_source"]) == (
        "MeetUp",
        "1.72.11",
        "uvc-xu",
    )
    assert meetup["components"] == {"eeprom": "1.3"}
    assert meetup["attributes"]["uvc_xu_unit"] == 5
    assert bed.requests == [
        querycap("/dev/video0"),
        q("/dev/video0", 5, 1, UVC_GET_LEN, 2),
        q("/dev/video0", 5, 1, UVC_GET_CUR, 8),
        q("/dev/video0", 5, 3, UVC_GET_LEN, 2),
        q("/dev/video0", 5, 3, UVC_GET_CUR, 2),
    ]


def test_two_taps_each_read_over_hdmi_capture_and_presence_sensor(bed: IoctlTestbed, tmp_path: Path) -> None:
    # Each Tap: its HDMI capture (the main function) and presence sensor behind its own hub
    # port; the sensor must fold into the Tap it sits beside, with that Tap's versions.
    taps = {
        "1-3.1": ("1.2.300", "000000010002012c", bytes.fromhex("19 2C 01 03 01"), "1.3.300"),
        "1-4.1": ("1.3.5", "0000000100030005", bytes.fromhex("19 07 00 04 01"), "1.4.7"),
    }
    for n, (hub, (_, raw, sensor, _)) in enumerate(taps.items()):
        port = hub.split("-")[1].split(".")[0]
        bed.add_uvc_device(
            f"{USB1}/1-{port}/{hub}",
            vid=LOGI,
            pid=TAP_HDMI,
            answer=uvc(
                "tap-hdmi",
                {
                    (1, UVC_SET_CUR): None,
                    (2, UVC_GET_LEN): b"\x08\x00",
                    (2, UVC_GET_CUR): bytes.fromhex(raw),
                },
            ),
            other=no_other_ioctl,
            video=n,
            product="Logitech Tap HDMI Capture",
            serial=f"TAPHDMI000{n}",
        )
        bed.add_hidraw_device(
            f"{USB1}/1-{port}/1-{port}.2",
            vid=LOGI,
            pid=TAP_SENSOR,
            answer=hid("tap-presence", {(0x1B, 1): None, (0x19, 0): sensor}),
            other=no_other_ioctl,
            hidraw=n,
            product="Logitech Tap Presence Sensor",
        )

    code, report, _ = scan(bed, tmp_path)

    assert code == 0, report["errors"]
    found = devices(report)
    assert sorted(found) == ["1-3.1", "1-4.1"]  # two Tap units: the sensors folded into them
    for address, (version, raw, _, sensor_version) in taps.items():
        tap = found[address]
        assert (tap["product"], tap["firmware"], tap["firmware_source"]) == ("Tap", version, "uvc-xu")
        assert tap["components"] == {"hdmi": version, "hdmi_raw": raw, "presence_sensor": sensor_version}
        assert tap["serial_label_grade"] is False
        note = notes(tap)["serial-not-label-grade"]
        assert note["severity"] == "info"
        assert "test mode" in note["message"]
        assert "firmware-read-failed" not in notes(tap)
    expected: list[Request] = []
    for n in range(2):
        video, hidraw = f"/dev/video{n}", f"/dev/hidraw{n}"
        expected += [
            querycap(video),
            q(video, 6, 1, UVC_SET_CUR, 8, TAP_SELECT),
            q(video, 6, 2, UVC_GET_LEN, 2),
            q(video, 6, 2, UVC_GET_CUR, 8),
            HidFeature(hidraw, "set", TAP_SENSOR_SELECT),
            HidFeature(hidraw, "get", b"\x19" + bytes(4)),
        ]
    assert bed.requests == expected


def test_rally_display_hub_system_version_from_report_3e(bed: IoctlTestbed, tmp_path: Path) -> None:
    # Two HID interfaces: the first stalls report 0x3E (it is not its report), the second
    # answers it; the raw report is kept.
    report_3e = rally_report()
    sysfs = f"{USB1}/1-5"
    for hidraw, interface, reply in ((0, 0, errno.EPIPE), (1, 3, report_3e)):
        bed.add_hidraw_device(
            sysfs,
            vid=LOGI,
            pid=RALLY_AUDIO,
            answer=hid("rally-audio", {(0x3E, 0): reply}),
            other=no_other_ioctl,
            hidraw=hidraw,
            interface=interface,
            product="Logitech Rally Audio",
            serial="RALLYHUB01",
        )

    code, report, _ = scan(bed, tmp_path)

    assert code == 0, report["errors"]
    [hub] = report["devices"]
    assert (hub["product"], hub["firmware"], hub["firmware_source"]) == (
        "Rally Display Hub",
        "1.4.30",
        "hid-feature",
    )
    assert hub["attributes"]["rally_report_3e"] == report_3e.hex()
    assert hub["health_issues"] == []
    get_3e = b"\x3e" + bytes(512)
    assert bed.requests == [
        HidFeature("/dev/hidraw0", "get", get_3e),
        HidFeature("/dev/hidraw1", "get", get_3e),
    ]


# --------------------------------------------------------------------------- the table hub (libusb)


def table_hub() -> FakeUsbDevice:
    """A table hub with its vendor interface (class 0xFF, bulk IN 0x81 and OUT 0x01)."""
    return FakeUsbDevice(
        LOGI,
        TABLE_HUB,
        busnum=1,
        devnum=7,
        ports="6",
        strings={"product": "Logitech Rally Table Hub", "serial": "TABLEHUB01"},
        sysfs_strings=("product", "serial"),
        interfaces=(Interface(0, 0xFF, 0, 0, (Endpoint(0x81), Endpoint(0x01))),),
    )


#: pyusb reads max(wanted, wMaxPacketSize) bytes; umockdev matches a read on its length.
HUB_READ = 512
HUB_VERSION = b"V2.0.117".ljust(16, b"\x00") + struct.pack("<I", 3)


def hub_capture(device: FakeUsbDevice, *init_replies: bytes, version: bool = True) -> UsbmonCapture:
    """Exactly what the agent sends, in order: INIT until answered, then the version request."""
    capture = UsbmonCapture.of(device)
    for reply in init_replies:
        capture.bulk_out(0x01, HUB_INIT).bulk_in(0x01, HUB_READ, reply)
    if version:
        capture.bulk_out(0x01, HUB_GET_VERSION).bulk_in(0x01, HUB_READ, HUB_VERSION)
    return capture


def free_interface_as_the_kernel_reports_it() -> None:
    """In the child: ``is_kernel_driver_active`` answers False, as Linux does for a vendor
    interface no driver binds. umockdev does not emulate ``USBDEVFS_GETDRIVER`` (libusb gets
    LIBUSB_ERROR_OTHER; the link then claims without detaching, tested on its own below)."""
    import usb.core

    usb.core.Device.is_kernel_driver_active = lambda self, interface: False


def agent_main_on_a_free_interface(*argv: str) -> None:
    """The agent's CLI in a child of ``umockdev-run``, the interface reported free."""
    free_interface_as_the_kernel_reports_it()
    from agent.cli import main

    raise SystemExit(main(list(argv)))


def forbidden_frames_then_the_version() -> None:
    """In a child of ``umockdev-run``: forbidden frames on the agent's claimed bulk link must
    be refused; then the documented exchange must still match the capture frame for frame
    (a frame that had gone out would have put the replay out of step). Prints JSON."""
    free_interface_as_the_kernel_reports_it()
    from agent.collectors.usbfw.tablehub import pyusb_bulk_link, read_version
    from agent.readonly import ReadOnlyViolation

    forbidden: list[Any] = [
        bytes.fromhex("03 CC 00 00 00 00 00 00"),  # 0xCC03: firmware download
        bytes.fromhex("03 CC EF BE 00 00 00 00"),
        HUB_INIT + b"\x00",
        HUB_GET_VERSION[:7],
        bytes.fromhex("07 CC FF FE 00 00 00 00"),
        b"",
        HUB_INIT.hex(),  # not bytes at all
    ]
    refused: list[str] = []
    with pyusb_bulk_link(1, 7, LOGI, TABLE_HUB) as link:
        for frame in forbidden:
            try:
                link.write(frame)
            except ReadOnlyViolation as exc:
                refused.append(str(exc))
            else:
                refused.append("SENT")
        answer = read_version(link)
    print(json.dumps({"refused": refused, "answer": answer.hex()}))


def hub_scan(
    tmp_path: Path, capture: UsbmonCapture, device: FakeUsbDevice, *, free_interface: bool
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    config = tmp_path / "agent.toml"
    config.write_text("[sources.usb]\nsync_deadline = 3\n", encoding="utf-8")
    argv = ["scan", "--usb", "--no-libusb", "--json", "--config", str(config)]
    argv += ["--state-dir", str(tmp_path / "state")]
    if free_interface:
        code = f"import tests.test_usb_firmware_umockdev as t; t.agent_main_on_a_free_interface(*{argv!r})"
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "-m", "agent", *argv]
    proc = run_under_umockdev(tmp_path, device, capture, *command, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Replay may be stuck" not in proc.stderr  # every transfer matched the capture
    return proc, json.loads(proc.stdout)


def test_table_hub_version_over_its_vendor_bulk_interface(tmp_path: Path) -> None:
    device = table_hub()
    proc, report = hub_scan(tmp_path, hub_capture(device, HUB_INIT_REPLY), device, free_interface=True)

    assert proc.returncode == 0, report["errors"]
    [hub] = report["devices"]
    assert (hub["product"], hub["firmware"], hub["firmware_source"]) == (
        "Rally Table Hub",
        "V2.0.117",
        "usb-bulk",
    )
    assert hub["attributes"]["image_state"] == 3
    assert hub["health_issues"] == []


def test_table_hub_init_is_retried_then_given_up_without_the_version_request(tmp_path: Path) -> None:
    # A hub that answers INIT wrongly twice, then rightly; and one that never answers it right
    # (five tries, then no version request: the capture has none, a sixth frame would not match).
    booting = bytes.fromhex("01 CC 00 00 00 00 00 00")
    device = table_hub()
    proc, report = hub_scan(
        tmp_path, hub_capture(device, booting, booting, HUB_INIT_REPLY), device, free_interface=True
    )
    assert proc.returncode == 0, report["errors"]
    assert report["devices"][0]["attributes"]["image_state"] == 3

    proc, report = hub_scan(
        tmp_path, hub_capture(device, *[booting] * 5, version=False), device, free_interface=True
    )
    assert proc.returncode == 1
    [hub] = report["devices"]
    assert hub["firmware"] is None and "image_state" not in hub["attributes"]
    failed = notes(hub)["firmware-read-failed"]
    assert "did not answer INIT in 5 tries" in failed["message"]
    assert [e["target"] for e in report["errors"]] == [hub["address"]]


def test_table_hub_link_refuses_every_other_frame(tmp_path: Path) -> None:
    device = table_hub()
    code = "import tests.test_usb_firmware_umockdev as t; t.forbidden_frames_then_the_version()"
    proc = run_under_umockdev(
        tmp_path, device, hub_capture(device, HUB_INIT_REPLY), sys.executable, "-c", code, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "Replay may be stuck" not in proc.stderr
    outcome = json.loads(proc.stdout)
    assert len(outcome["refused"]) == 7
    assert all(m.startswith("table hub: refused bulk write") for m in outcome["refused"]), outcome
    assert bytes.fromhex(outcome["answer"]) == HUB_VERSION


def test_table_hub_scan_reads_the_version_when_libusb_cannot_tell_the_driver(tmp_path: Path) -> None:
    # umockdev does not emulate USBDEVFS_GETDRIVER: libusb answers LIBUSB_ERROR_OTHER, and the
    # link must then detach nothing and claim, as the Sync transport does.
    device = table_hub()
    _, report = hub_scan(tmp_path, hub_capture(device, HUB_INIT_REPLY), device, free_interface=False)
    [hub] = report["devices"]
    assert notes(hub) == {}
    assert (hub["firmware"], hub["attributes"].get("image_state")) == ("V2.0.117", 3)


# --------------------------------------------------------------------------- the gates, in the child


def try_forbidden(video: dict[str, str], hidraw: dict[str, str]) -> dict[str, list[str]]:
    """In the testbed's child: every forbidden request on the agent's own node classes, each
    of which must raise ReadOnlyViolation before its ioctl; then one documented request per
    node, to show the nodes were live all along. ``video``/``hidraw``: recipe → node."""
    from agent.collectors.usbfw.nodes import HidrawNode, VideoNode
    from agent.collectors.usbfw.requests import HidRequest, UvcRequest
    from agent.readonly import ReadOnlyViolation

    tap_other = bytes.fromhex("0C 00 00 00 00 00 00 00")
    uvc_forbidden: dict[str, list[Any]] = {
        "scribe": [
            UvcRequest("scribe", 8, 1, UVC_SET_CUR, 4, bytes.fromhex("01 01 02 00")),
            UvcRequest("scribe", 8, 2, UVC_GET_CUR, 4),
            UvcRequest("scribe", 8, 3, UVC_GET_LEN, 2),
            UvcRequest("scribe", 9, 1, UVC_GET_LEN, 2),
            UvcRequest("scribe", 8, 1, UVC_GET_CUR, 2),
            UvcRequest("scribe", 8, 1, UVC_GET_CUR, 2048),
            UvcRequest("scribe", 8, 1, UVC_GET_INFO, 1),
            UvcRequest("scribe", 8, 1, UVC_GET_MIN, 4),
            UvcRequest("scribe", 8, 1, UVC_GET_LEN, 2, b"\x00\x00"),
            UvcRequest("scribe", 6, 1, UVC_SET_CUR, 8, TAP_SELECT),  # the Tap's select, not a Scribe's
            (8, 1, UVC_GET_LEN, 2),  # not a request object at all
        ],
        "tap-hdmi": [
            UvcRequest("tap-hdmi", 6, 3, UVC_GET_CUR, 8),
            UvcRequest("tap-hdmi", 6, 3, UVC_SET_CUR, 8, TAP_SELECT),
            UvcRequest("tap-hdmi", 6, 4, UVC_SET_CUR, 8, TAP_SELECT),
            UvcRequest("tap-hdmi", 6, 4, UVC_GET_LEN, 2),
            UvcRequest("tap-hdmi", 6, 1, UVC_SET_CUR, 8, tap_other),
            UvcRequest("tap-hdmi", 6, 1, UVC_SET_CUR, 8, TAP_SELECT[:7] + b"\x01"),
            UvcRequest("tap-hdmi", 6, 1, UVC_GET_CUR, 8),
            UvcRequest("tap-hdmi", 6, 2, UVC_SET_CUR, 8, TAP_SELECT),
            UvcRequest("tap-hdmi", 6, 2, UVC_GET_CUR, 9),
            UvcRequest("tap-hdmi", 5, 1, UVC_SET_CUR, 8, TAP_SELECT),
        ],
        "meetup": [
            UvcRequest("meetup", 5, 1, UVC_SET_CUR, 4, bytes(4)),
            UvcRequest("meetup", 5, 2, UVC_GET_CUR, 4),
            UvcRequest("meetup", 5, 3, UVC_GET_CUR, 4),
            UvcRequest("meetup", 5, 3, UVC_SET_CUR, 2, b"\x01\x01"),
            UvcRequest("meetup", 0, 1, UVC_GET_LEN, 2),
        ],
    }
    hid_forbidden: dict[str, list[Any]] = {
        "tap-presence": [
            HidRequest("tap-presence", "get", 0x1A, 5),
            HidRequest("tap-presence", "set", 0x1A, 5, bytes.fromhex("1A 00 00 00 00")),
            HidRequest("tap-presence", "set", 0x1A, 5, bytes.fromhex("1A 01 01 00 00")),
            HidRequest("tap-presence", "set", 0x1B, 5, bytes.fromhex("1A 04 00 00 00")),
            HidRequest("tap-presence", "set", 0x1B, 5, bytes.fromhex("1B 05 00 00 00")),
            HidRequest("tap-presence", "set", 0x1B, 6, TAP_SENSOR_SELECT + b"\x00"),
            HidRequest("tap-presence", "get", 0x19, 6),
            HidRequest("tap-presence", "get", 0x1B, 5),
            HidRequest("tap-presence", "get", 0x3E, 513),
        ],
        "rally-audio": [
            HidRequest("rally-audio", "set", 0x3E, 513, b"\x3e" + bytes(512)),
            HidRequest("rally-audio", "get", 0x3E, 512),
            HidRequest("rally-audio", "get", 0x3F, 513),
            HidRequest("rally-audio", "get", 0x1A, 513),
            HidRequest("rally-audio", "get", 0x19, 5),
            {"report": 0x3E},
        ],
    }
    outcome: dict[str, list[str]] = {}

    def attempt(send: Callable[[Any], bytes], request: Any) -> str:
        try:
            send(request)
        except ReadOnlyViolation as exc:
            return f"refused: {exc}"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "SENT"

    for recipe, node in video.items():
        with VideoNode(Path(node)) as camera:
            outcome[recipe] = [attempt(camera.query, r) for r in uvc_forbidden[recipe]]
    for recipe, node in hidraw.items():
        with HidrawNode(Path(node)) as hid_node:
            outcome[recipe] = [attempt(hid_node.feature, r) for r in hid_forbidden[recipe]]
    with VideoNode(Path(video["scribe"])) as camera:
        outcome["control"] = [camera.query(UvcRequest("scribe", 8, 1, UVC_GET_LEN, 2)).hex()]
    with HidrawNode(Path(hidraw["rally-audio"])) as hid_node:
        outcome["control"].append(hid_node.feature(HidRequest("rally-audio", "get", 0x3E, 513))[:1].hex())
    return outcome


def test_forbidden_requests_are_refused_in_the_child_and_never_reach_a_device(bed: IoctlTestbed) -> None:
    video = {"scribe": (SCRIBE, 8), "tap-hdmi": (TAP_HDMI, 6), "meetup": (MEETUP, 5)}
    for n, (recipe, (pid, unit)) in enumerate(video.items()):
        bed.add_uvc_device(
            f"{USB1}/1-{n + 1}",
            vid=LOGI,
            pid=pid,
            answer=uvc(recipe, {(1, UVC_GET_LEN): b"\x04\x00"}, unit=unit),
            other=no_other_ioctl,
            video=n,
        )
    hidraw = {"tap-presence": TAP_SENSOR, "rally-audio": RALLY_AUDIO}
    for n, (recipe, pid) in enumerate(hidraw.items()):
        bed.add_hidraw_device(
            f"{USB1}/1-{n + 5}",
            vid=LOGI,
            pid=pid,
            answer=hid(recipe, {(0x3E, 0): rally_report()}),
            other=no_other_ioctl,
            hidraw=n,
        )

    outcome = bed.run(
        try_forbidden,
        {recipe: f"/dev/video{n}" for n, recipe in enumerate(video)},
        {recipe: f"/dev/hidraw{n}" for n, recipe in enumerate(hidraw)},
    )

    control = outcome.pop("control")
    assert sorted(outcome) == sorted([*video, *hidraw])
    for recipe, results in outcome.items():
        assert results, recipe
        assert all(r.startswith("refused: ") for r in results), (recipe, results)
    assert any("0x1A" in r for r in outcome["tap-presence"])
    assert control == ["0400", "3e"]  # the same nodes answered a documented request
    # Nothing but the two controls reached a device: every refusal came before its ioctl.
    assert bed.requests == [
        q("/dev/video0", 8, 1, UVC_GET_LEN, 2),
        HidFeature("/dev/hidraw1", "get", b"\x3e" + bytes(512)),
    ]


# --------------------------------------------------------------------------- bad input


@dataclass(frozen=True)
class Bad:
    """A device that answers badly, at 1-2 beside a healthy Scribe at 1-1."""

    id: str
    pid: int
    replies: Replies
    #: The requests that reached the bad node, as (selector, query, size) or (op, report, length).
    reached: list[tuple[Any, ...]]
    message: str
    code: str = "firmware-read-failed"
    descriptors: bytes | None = None
    querycap: bytes | None = None


SCRIBE_LEN = {(1, UVC_GET_LEN): b"\x04\x00"}
BAD = [
    Bad(
        "get-len-below-range",
        SCRIBE,
        {(1, UVC_GET_LEN): b"\x02\x00"},
        [(1, UVC_GET_LEN, 2)],
        "Scribe: GET_LEN answered 2, outside 4..1024",
    ),
    Bad(
        "get-len-above-range",
        SCRIBE,
        {(1, UVC_GET_LEN): (1025).to_bytes(2, "little")},
        [(1, UVC_GET_LEN, 2)],
        "Scribe: GET_LEN answered 1025, outside 4..1024",
    ),
    Bad(
        # A control shorter than the version it must hold: refused at GET_LEN, no GET_CUR sent.
        "short-control",
        TAP_HDMI,
        {
            (1, UVC_SET_CUR): None,
            (2, UVC_GET_LEN): b"\x04\x00",
        },
        [(1, UVC_SET_CUR, 8), (2, UVC_GET_LEN, 2)],
        "Tap HDMI: GET_LEN answered 4, outside 8..8",
    ),
    Bad(
        "all-zero-version",
        SCRIBE,
        {**SCRIBE_LEN, (1, UVC_GET_CUR): bytes(4)},
        [(1, UVC_GET_LEN, 2), (1, UVC_GET_CUR, 4)],
        "Scribe version: all zeros",
    ),
    Bad(
        "ioctl-eio",
        SCRIBE,
        {(1, UVC_GET_LEN): errno.EIO},
        [(1, UVC_GET_LEN, 2)],
        "UVC query 0x85 of unit 8 selector 1: Input/output error",
    ),
    Bad(
        "unplugged-mid-read",
        SCRIBE,
        {**SCRIBE_LEN, (1, UVC_GET_CUR): errno.ENODEV},
        [(1, UVC_GET_LEN, 2), (1, UVC_GET_CUR, 4)],
        "UVC query 0x81 of unit 8 selector 1: No such device",
    ),
    Bad(
        "hangs",
        SCRIBE,
        {(1, UVC_GET_LEN): HANG},
        [(1, UVC_GET_LEN, 2)],
        "scribe over its video4linux node did not answer within 2 s",
    ),
    Bad(
        "meetup-without-its-extension-unit",
        MEETUP,
        {},
        [],
        f"MeetUp: no extension unit {MEETUP_GUID} in its UVC descriptors",
        descriptors=meetup_descriptors((8, DECOY_GUID)),
    ),
    Bad(
        "short-hid-report",
        RALLY_AUDIO,
        {(0x3E, 0): rally_report()[:64]},
        [("get", 0x3E, 513)],
        "Rally system report: 64 bytes, 513 expected",
    ),
    Bad(
        "all-zero-hid-version",
        RALLY_AUDIO,
        {(0x3E, 0): rally_report(bytes(3))},
        [("get", 0x3E, 513)],
        "Rally system version: all zeros",
    ),
    Bad(
        "not-a-capture-node",
        SCRIBE,
        {},
        [],
        "not a capture node",
        code="firmware-unavailable",
        querycap=querycap_reply("Logi Scribe", "usb-0000:00:14.0-2", device_caps=METADATA_CAPS),
    ),
]


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_answers_claim_no_firmware_and_the_scan_goes_on(
    bed: IoctlTestbed, tmp_path: Path, bad: Bad
) -> None:
    healthy = uvc("scribe", {**SCRIBE_LEN, (1, UVC_GET_CUR): bytes.fromhex("01 01 02 00")})
    # The healthy unit comes first in topology order: umockdev answers every node from one
    # worker thread, which a hanging handler holds until the test releases it.
    bed.add_uvc_device(f"{USB1}/1-1", vid=LOGI, pid=SCRIBE, answer=healthy, other=no_other_ioctl, video=0)
    recipe = {SCRIBE: "scribe", MEETUP: "meetup", TAP_HDMI: "tap-hdmi", RALLY_AUDIO: "rally-audio"}[bad.pid]
    if bad.pid == RALLY_AUDIO:
        handler = hid(recipe, bad.replies)
        node = bed.add_hidraw_device(
            f"{USB1}/1-2", vid=LOGI, pid=bad.pid, answer=handler, other=no_other_ioctl
        )
    else:
        handler = uvc(recipe, bad.replies, unit=5)
        extra: dict[str, Any] = {"querycap": bad.querycap} if bad.querycap else {}
        if bad.descriptors:
            extra["descriptors"] = bad.descriptors
        node = bed.add_uvc_device(
            f"{USB1}/1-2", vid=LOGI, pid=bad.pid, answer=handler, other=no_other_ioctl, video=1, **extra
        )

    try:
        code, report, elapsed = scan(bed, tmp_path, "[sources.usb]\nsync_deadline = 2\n")
    finally:
        handler.release.set()
    if HANG in bad.replies.values():
        assert handler.returned.wait(10)  # the worker thread is free again before the bed closes
        assert report["sources"][0]["seconds"] < 2 + 1.5  # one deadline for the device, no more
        assert elapsed < 8

    found = devices(report)
    assert (found["1-1"]["firmware"], found["1-1"]["firmware_source"]) == ("1.1.2", "uvc-xu")
    assert "firmware-read-failed" not in notes(found["1-1"])
    broken = found["1-2"]
    assert (broken["firmware"], broken["firmware_source"], broken["components"]) == (None, None, {})
    issue = notes(broken)[bad.code]
    assert bad.message in issue["message"], issue
    assert "uvc_xu_unit" not in broken["attributes"] and "rally_report_3e" not in broken["attributes"]
    if bad.code == "firmware-read-failed":
        assert (code, issue["severity"]) == (1, "warning")
        assert issue["message"].endswith("; no firmware claimed")
        assert [e["target"] for e in report["errors"]] == ["1-2"]
        assert bad.message in report["errors"][0]["message"]
    else:
        assert (code, issue["severity"], report["errors"]) == (0, "info", [])

    reached: list[tuple[Any, ...]] = []
    for request in on(node.node, bed.requests):
        if isinstance(request, UvcQuery):
            reached.append((request.selector, request.query, request.size))
        elif isinstance(request, HidFeature):
            reached.append((request.op, request.report_id, len(request.data)))
        else:
            assert request == querycap(node.node)
    assert reached == bad.reached
    assert on("/dev/video0", bed.requests) == [
        querycap("/dev/video0"),
        q("/dev/video0", 8, 1, UVC_GET_LEN, 2),
        q("/dev/video0", 8, 1, UVC_GET_CUR, 4),
    ]
