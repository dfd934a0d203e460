"""``roomsync scan --usb --json`` against a fake USB device, through the real libusb.

Each test builds a ``.umockdev`` description (sysfs attributes and descriptors, *without*
the ``manufacturer``/``product``/``serial`` attributes unless a test says otherwise) and a
usbmon capture that answers the string-descriptor requests, then runs the agent under
``umockdev-run``. The agent's sysfs reader finds the strings missing and reads them with
pyusb/libusb; umockdev answers from the capture, strictly in order. A request the capture
does not expect is not answered: libusb times out and the scan reports it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.usbfake import (
    EP_BULK,
    Endpoint,
    FakeUsbDevice,
    Interface,
    UsbmonCapture,
    run_under_umockdev,
    string_reads,
)

pytestmark = [
    pytest.mark.umockdev,
]

LOGI = 0x046D
RALLY_BAR = 0x089B


def serial_for(request: pytest.FixtureRequest) -> str:
    """A serial of the shape Logitech prints, different for every test."""
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest().upper()
    return f"2{digest[:3]}LZ{digest[3:9]}"


def rally_bar(serial: str | bytes | None, **kw: Any) -> FakeUsbDevice:
    strings: dict[str, str | bytes] = {"manufacturer": "Logitech", "product": "Rally Bar"}
    if serial is not None:
        strings["serial"] = serial
    strings.update(kw.pop("strings", {}))
    return FakeUsbDevice(
        LOGI, RALLY_BAR, bcd_device=0x0020, busnum=1, devnum=7, ports="2", strings=strings, **kw
    )


def scan_under_umockdev(tmp_path: Path, device: FakeUsbDevice, capture: UsbmonCapture) -> dict[str, Any]:
    """Run ``python -m agent scan --usb --json`` with ``device`` as the only USB device."""
    config = tmp_path / "agent.toml"
    config.write_text("", encoding="utf-8")  # built-in defaults, whatever /etc holds
    proc = run_under_umockdev(
        tmp_path,
        device,
        capture,
        sys.executable,
        "-m",
        "agent",
        "scan",
        "--usb",
        "--json",
        "--config",
        str(config),
        timeout=30,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(proc.stdout)
    assert report["errors"] == []
    assert [s["name"] for s in report["sources"] if s["success"]] == ["usb"]
    return report


def only_device(report: dict[str, Any]) -> dict[str, Any]:
    assert len(report["devices"]) == 1, report["devices"]
    return report["devices"][0]


def issue_codes(device: dict[str, Any]) -> dict[str, str]:
    return {i["code"]: i["severity"] for i in device["health_issues"]}


def test_strings_missing_from_sysfs_are_read_through_libusb(tmp_path: Path, request) -> None:
    serial = serial_for(request)
    device = rally_bar(serial)
    assert "A: serial=" not in device.umockdev()  # the agent must find them missing
    capture = string_reads(device, ["manufacturer", "product", "serial"])

    found = only_device(scan_under_umockdev(tmp_path, device, capture))

    assert (found["vendor_id"], found["product_id"]) == ("046d", "089b")
    assert found["product"] == "Rally Bar"  # from the catalog, by USB id
    assert found["vendor"] == "Logitech"
    assert found["serial"] == serial
    assert found["serial_source"] == "usb-descriptor"
    assert found["serial_label_grade"] is True
    assert found["identity"] == f"serial:Rally Bar:{serial}"
    assert found["address"] == "1-2"
    attrs = found["attributes"]
    assert attrs["usb_manufacturer"] == "Logitech"
    assert attrs["usb_product"] == "Rally Bar"
    assert attrs["strings_from_libusb"] == ["manufacturer", "product", "serial"]
    assert (attrs["busnum"], attrs["devnum"]) == (1, 7)
    assert attrs["usb_release"] == "0.20"
    assert found["health"] == "ok", found["health_issues"]


def test_strings_in_sysfs_are_not_read_again(tmp_path: Path, request) -> None:
    # The kernel exported manufacturer and product; only the serial is missing. The
    # capture answers LANGID + serial only: any other request would time out.
    serial = serial_for(request)
    device = rally_bar(serial, sysfs_strings=("manufacturer", "product"))
    capture = string_reads(device, ["serial"])

    found = only_device(scan_under_umockdev(tmp_path, device, capture))

    assert found["serial"] == serial
    assert found["attributes"]["strings_from_libusb"] == ["serial"]
    assert found["attributes"]["usb_product"] == "Rally Bar"
    assert "usb-strings-unavailable" not in issue_codes(found)


def test_no_serial_index_means_no_serial_and_no_request_for_it(tmp_path: Path) -> None:
    device = rally_bar(None)
    assert device.device_descriptor()[16] == 0  # iSerialNumber
    capture = string_reads(device, ["manufacturer", "product"])

    found = only_device(scan_under_umockdev(tmp_path, device, capture))

    assert found["product"] == "Rally Bar"
    assert found["serial"] is None
    assert found["serial_source"] is None
    assert found["serial_label_grade"] is False
    assert found["identity_kind"] == "transport"
    assert found["attributes"]["strings_from_libusb"] == ["manufacturer", "product"]
    codes = issue_codes(found)
    assert codes.get("serial-missing") == "warning"
    assert "usb-strings-unavailable" not in codes  # nothing was asked that went unanswered


def test_placeholder_serial_from_libusb_is_a_health_issue(tmp_path: Path) -> None:
    device = rally_bar("0000000000")
    capture = string_reads(device, ["manufacturer", "product", "serial"])

    found = only_device(scan_under_umockdev(tmp_path, device, capture))

    assert found["serial"] is None
    assert found["serial_label_grade"] is False
    assert found["attributes"]["strings_from_libusb"] == ["manufacturer", "product", "serial"]
    codes = issue_codes(found)
    assert codes.get("usb-string-placeholder") == "warning"
    assert codes.get("serial-missing") == "warning"
    assert found["health"] == "warning"


def test_nul_inside_serial_is_cut_and_not_label_grade(tmp_path: Path, request) -> None:
    serial = serial_for(request)
    device = rally_bar(f"{serial}\x00\x00GARBAGE")
    capture = string_reads(device, ["manufacturer", "product", "serial"])

    found = only_device(scan_under_umockdev(tmp_path, device, capture))

    assert found["serial"] == serial
    assert found["serial_label_grade"] is False
    assert issue_codes(found).get("usb-string-nul-padded") == "warning"


def test_malformed_utf16_serial_is_kept_but_not_label_grade(tmp_path: Path, request) -> None:
    serial = serial_for(request)
    raw = serial.encode("utf-16-le") + b"\x00\xd8"  # a lone high surrogate at the end
    device = rally_bar(raw)
    capture = string_reads(device, ["manufacturer", "product", "serial"])

    found = only_device(scan_under_umockdev(tmp_path, device, capture))

    assert found["serial"] == serial + "\ufffd"
    assert found["serial_label_grade"] is False
    assert issue_codes(found).get("usb-string-not-utf8") == "warning"


def test_malformed_manufacturer_does_not_cost_the_serial(tmp_path: Path, request) -> None:
    serial = serial_for(request)
    device = rally_bar(serial, strings={"manufacturer": b"L\x00\x00\xdco\x00"})
    capture = string_reads(device, ["manufacturer", "product", "serial"])

    found = only_device(scan_under_umockdev(tmp_path, device, capture))

    assert found["serial"] == serial
    assert found["serial_label_grade"] is True
    assert found["attributes"]["usb_manufacturer"] == "L\ufffdo"
    codes = issue_codes(found)
    assert codes.get("usb-string-not-utf8") == "info"  # not the serial: informational
    assert "usb-strings-unavailable" not in codes


def test_device_that_does_not_answer_is_reported_not_fatal(tmp_path: Path) -> None:
    # The capture answers the LANGID request only; the manufacturer request times out
    # (pyusb's default 1 s), and the scan still reports the unit, identified by USB id.
    device = rally_bar("2229LZ000001")
    capture = string_reads(device, [])

    found = only_device(scan_under_umockdev(tmp_path, device, capture))

    assert found["product"] == "Rally Bar"
    assert found["serial"] is None
    assert "strings_from_libusb" not in found["attributes"]
    codes = issue_codes(found)
    assert codes.get("usb-strings-unavailable") == "info"
    assert codes.get("serial-missing") == "warning"
    message = next(i["message"] for i in found["health_issues"] if i["code"] == "usb-strings-unavailable")
    assert "timed out" in message.lower()


_BULK_CLIENT = """
import sys, usb.core, usb.util
dev = usb.core.find(idVendor=0x046D, idProduct=0x089B)
usb.util.claim_interface(dev, 0)
out = []
for request in sys.argv[1:]:
    dev.write(0x02, bytes.fromhex(request), timeout=1000)
    try:
        out.append(bytes(dev.read(0x84, 512, timeout=300)).hex())
    except usb.core.USBTimeoutError:
        out.append("timeout")
print(" ".join(out))
"""


def test_usbfake_bulk_records_replay_through_libusb(tmp_path: Path) -> None:
    # The helpers' bulk records (for a later Sync-interface test): a claimed vendor
    # interface, bulk OUT 0x02 / IN 0x84. A read the capture has no record for times out.
    sync = Interface(
        number=0, cls=0xFF, subclass=118, endpoints=(Endpoint(0x02, EP_BULK), Endpoint(0x84, EP_BULK))
    )
    device = FakeUsbDevice(LOGI, RALLY_BAR, devnum=9, interfaces=(sync,))
    capture = (
        UsbmonCapture.of(device)
        .bulk_out(0x02, b"\x07\xcc\x01")
        .bulk_in(0x84, 512, b"\x01\xff\x01answer")
        .bulk_out(0x02, b"\x07\xcc\x02")  # no reply recorded
        .bulk_out(0x02, b"\x07\xcc\x03")
        .bulk_in(0x84, 512, b"third")
    )
    proc = run_under_umockdev(
        tmp_path,
        device,
        capture,
        sys.executable,
        "-c",
        _BULK_CLIENT,
        "07cc01",
        "07cc02",
        "07cc03",
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [(b"\x01\xff\x01answer").hex(), "timeout", b"third".hex()]
