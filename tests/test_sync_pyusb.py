"""Finding the Sync Agent interface, and PyUsbTransport through the real libusb.

The umockdev tests build a fake USB device from the recording's own descriptors and a usbmon
capture from its recorded GetDeviceInfo transfers, then run PyUsbTransport + SyncClient
under ``umockdev-run``: pyusb and libusb are real, umockdev answers each bulk transfer from
the capture in order and compares every OUT transfer byte for byte (a frame that differs
from the recorded host's is never answered).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agent.collectors.sync.errors import TransportError
from agent.collectors.sync.interfaces import (
    EndpointInfo,
    InterfaceInfo,
    SyncEndpoints,
    select_sync_interface,
)
from tests.sync_captures import BAR_SERIAL, Capture, fake_bar, recorded_bulk
from tests.usbfake import FakeUsbDevice, UsbmonCapture
from tests.usbfake import run_under_umockdev as run_umockdev

BULK, INTR = 0x02, 0x03


def intf(
    number: int, subclass: int, *endpoints: tuple[int, int | None], alternate: int = 0, protocol: int = 1
) -> InterfaceInfo:
    return InterfaceInfo(
        number, alternate, 0xFF, subclass, protocol, tuple(EndpointInfo(a, t) for a, t in endpoints)
    )


def test_recorded_descriptors_select_interface_3() -> None:
    recording = Capture().recording()
    assert select_sync_interface(recording.device.interfaces) == SyncEndpoints(3, 0x02, 0x84)


def test_endpoints_come_from_the_descriptors_in_any_order() -> None:
    found = select_sync_interface(
        [
            intf(0, 117, (0x02, BULK), (0x84, BULK)),  # firmware update: never
            intf(5, 118, (0x87, BULK), (0x81, INTR), (0x06, BULK)),
            intf(6, 66, (0x03, BULK), (0x85, BULK)),  # ADB: never
        ]
    )
    assert found == SyncEndpoints(5, 0x06, 0x87)


@pytest.mark.parametrize(
    ("interfaces", "message"),
    [
        (
            [intf(2, 117, (0x01, BULK), (0x83, BULK)), intf(4, 66, (0x03, BULK), (0x85, BULK))],
            r"no Sync Agent interface .*\[2:0xff/117/1, 4:0xff/66/1\]",
        ),
        ([intf(3, 118, (0x02, BULK), (0x84, BULK), protocol=2)], "no Sync Agent interface"),
        ([intf(3, 118, (0x02, BULK), (0x84, BULK), alternate=1)], "no Sync Agent interface"),
        ([intf(3, 118, (0x02, BULK))], "1 bulk OUT and 0 bulk IN"),
        ([intf(3, 118, (0x02, BULK), (0x04, BULK), (0x84, BULK))], "2 bulk OUT and 1 bulk IN"),
        ([intf(3, 118, (0x02, INTR), (0x84, BULK))], "0 bulk OUT and 1 bulk IN"),
    ],
)
def test_no_usable_sync_interface_is_a_clear_error(interfaces: list[InterfaceInfo], message: str) -> None:
    with pytest.raises(TransportError, match=message):
        select_sync_interface(interfaces)


# --------------------------------------------------------------------------- under umockdev

SCRIPT = """
import json, sys
import usb.core
from agent.collectors.sync import PyUsbTransport, SyncClient, SyncError
device = usb.core.find(idVendor=0x046D, idProduct=0x089B)
try:
    transport = PyUsbTransport(device)
    with transport:
        reply = SyncClient(transport, first_sequence_id=int(sys.argv[1]),
                           deadline=float(sys.argv[2])).get_device_info()
    out = {"endpoints": [transport.endpoints.interface, transport.endpoints.out_address,
                         transport.endpoints.in_address],
           "json": json.loads(reply.json_text), "closed": reply.closed}
except SyncError as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
"""


def run_under_umockdev(
    tmp_path: Path, device: FakeUsbDevice, capture: UsbmonCapture, first_seq: int, deadline: float = 5.0
) -> dict:
    script = tmp_path / "read_bar.py"
    script.write_text(SCRIPT, encoding="utf-8")
    proc = run_umockdev(tmp_path, device, capture, sys.executable, str(script), str(first_seq), str(deadline))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.umockdev
def test_pyusb_transport_reads_the_recorded_bar_through_libusb(tmp_path: Path) -> None:
    recording = Capture().recording()
    out = run_under_umockdev(
        tmp_path, fake_bar(recording), recorded_bulk(recording, 0x02, 0x84), first_seq=11
    )  # the recorded host's sequence ids: 11…14
    assert out.get("error") is None, out
    assert out["endpoints"] == [3, 0x02, 0x84]
    assert out["json"]["payload"]["devices"][0]["serial"] == BAR_SERIAL
    assert out["closed"] is True


@pytest.mark.umockdev
def test_pyusb_transport_finds_moved_endpoints_and_leaves_update_and_adb_alone(tmp_path: Path) -> None:
    # Give the firmware-update interface the addresses the Sync interface had on the
    # recorded bar, and the Sync interface new ones: a hard-coded 0x02/0x84 would now talk
    # to the update interface, and umockdev would answer nothing.
    recording = Capture().recording()
    remap = {0x01: 0x02, 0x83: 0x84, 0x02: 0x06, 0x84: 0x87}
    out = run_under_umockdev(
        tmp_path, fake_bar(recording, remap), recorded_bulk(recording, 0x06, 0x87), first_seq=11
    )
    assert out.get("error") is None, out
    assert out["endpoints"] == [3, 0x06, 0x87]


@pytest.mark.umockdev
def test_frames_that_differ_from_the_recorded_host_get_no_answer(tmp_path: Path) -> None:
    # Sequence ids 1… instead of the recorded 11…: umockdev compares OUT bytes and never
    # answers, so the exchange must end in a clean error within the deadline.
    recording = Capture().recording()
    out = run_under_umockdev(
        tmp_path, fake_bar(recording), recorded_bulk(recording, 0x02, 0x84), first_seq=1, deadline=0.5
    )
    assert out["error"] in ("TransportTimeout", "SyncTimeout"), out
