"""Room E of the end-to-end site: a Rally system on an umockdev testbed, and the second agent
of the site that reads it.

The testbed (:class:`tests.umockdev_ioctl.IoctlTestbed`) lives in the test process; the agent
runs in a child whose ``/sys`` and ``/dev`` are the testbed's (``LD_PRELOAD`` of umockdev,
``bed.env()``), so to the agent it is this host's live USB and its firmware collectors open
the nodes and make real ``ioctl()`` calls:

* the **Rally Camera** (046d:0881): a USB device, nothing to open (no collector reads it);
* the **Rally Display Hub** (046d:0885): its audio device with two HID interfaces, each with a
  hidraw node answered by :class:`DisplayHub`: the first refuses report 0x3E (``EPIPE``: not
  its report), the second answers it. The handler accepts exactly the documented request, one
  ``GET_FEATURE`` of report 0x3E, 513 bytes, with no ``SET`` before it, and nothing else (any
  other ioctl, or any other feature report, fails the test even when the agent swallows the
  error: the testbed raises it again on leaving);
* the **Rally Table Hub** (046d:088F): its vendor bulk interface, which the agent reaches
  through libusb. :class:`IoctlTestbed` answers video4linux and hidraw nodes only; umockdev's
  own usbdevfs replay (what ``umockdev-run --pcap`` does: ``Testbed.load_pcap``) answers the
  hub's ``/dev/bus/usb`` node in the same testbed (:meth:`IoctlTestbed.add_replayed_usb_device`). It
  answers exactly the frames its usbmon capture lists, byte for byte and in order: INIT once,
  then the version request. Any other frame is left unanswered (libusb times out, the agent
  claims no firmware), so a version read proves the exchange was the documented one.

The agent is one-shot: ``roomsync scan --usb --json`` (under the testbed, storing what it
found), then ``roomsync push`` (a plain process: it only reads the store) delivers its
snapshot and events to the site's portal stand-in.
"""

from __future__ import annotations

import errno
import json
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.daemon_peer import daemon_env
from tests.e2e import site_spec as site
from tests.umockdev_ioctl import HidFeature, Ioctl, IoctlTestbed
from tests.usbfake import Endpoint, FakeUsbDevice, Interface, UsbmonCapture

#: Bus 3 of the testbed (the sysfs path names it: ``usb3``).
BUS = "/sys/devices/pci0000:00/0000:00:14.0/usb3"
CAMERA_PID, DISPLAY_HUB_PID, TABLE_HUB_PID = 0x0881, 0x0885, 0x088F
#: The table hub's device number (the testbed numbers the others from 2 up).
TABLE_HUB_DEVNUM = 9

#: The one request the display hub's audio device may receive: GET_FEATURE of report 0x3E,
#: 513 bytes (the caller's buffer: the report id, then zeros: a GET sends nothing).
GET_3E = b"\x3e" + bytes(512)
#: The table hub's frames, as docs/usb-firmware.md spells them.
HUB_INIT = bytes.fromhex("01 CC EF BE 00 00 00 00")
HUB_INIT_REPLY = bytes.fromhex("01 CC 99 09 00 00 00 00")
HUB_GET_VERSION = bytes.fromhex("07 CC FF FF 00 00 00 00")
#: pyusb reads max(wanted, wMaxPacketSize) bytes; umockdev matches a read on its length.
HUB_READ = 512


def rally_report() -> bytes:
    """Report 0x3E of the Rally system's audio device: 513 bytes, the version at 0xB8..0xBA
    among other bytes (a topology table another client reads: the agent keeps them all)."""
    report = bytearray(513)
    report[0] = 0x3E
    report[1:9] = bytes.fromhex("02 85 08 6d 04 8f 08 6d")
    report[0xB8:0xBB] = site.RALLY_SYSTEM_VERSION
    report[0x140] = 0xA5
    return bytes(report)


@dataclass
class DisplayHub:
    """The answers of one hidraw node of the display hub's audio device: the report, or an
    errno (``EPIPE``: the interface stalls a report it does not have)."""

    reply: bytes | int

    def __call__(self, request: HidFeature) -> bytes | int:
        # By value, the request number too (HIDIOCGFEATURE(513)).
        assert request == HidFeature(request.node, "get", GET_3E), (
            f"the display hub got a request the docs do not list: {request}"
        )
        return self.reply


def no_other_ioctl(request: Ioctl) -> int:
    raise AssertionError(f"an ioctl the hid-feature collector never sends reached the display hub: {request}")


def table_hub() -> FakeUsbDevice:
    """The table hub: its vendor interface (class 0xFF, bulk IN 0x81 and OUT 0x01); its strings
    in sysfs, as the kernel exports them."""
    return FakeUsbDevice(
        site.LOGITECH,
        TABLE_HUB_PID,
        busnum=3,
        devnum=TABLE_HUB_DEVNUM,
        ports=site.RALLY_E_PORTS["Rally Table Hub"].split("-", 1)[1],
        strings={
            "manufacturer": "Logitech",
            "product": "Logitech Rally Table Hub",
            "serial": site.RALLY_E_TABLE_HUB,
        },
        sysfs_strings=("manufacturer", "product", "serial"),
        interfaces=(Interface(0, 0xFF, 0, 0, (Endpoint(0x81), Endpoint(0x01))),),
    )


def table_hub_capture(device: FakeUsbDevice) -> UsbmonCapture:
    """Exactly the documented exchange: INIT, its answer, the version request, the version."""
    version = site.TABLE_HUB_FIRMWARE.encode("ascii").ljust(16, b"\x00")
    answer = version + struct.pack("<I", site.TABLE_HUB_IMAGE_STATE)
    capture = UsbmonCapture.of(device)
    capture.bulk_out(0x01, HUB_INIT).bulk_in(0x01, HUB_READ, HUB_INIT_REPLY)
    capture.bulk_out(0x01, HUB_GET_VERSION).bulk_in(0x01, HUB_READ, answer)
    return capture


def build(bed: IoctlTestbed, directory: Path) -> list[DisplayHub]:
    """Room E's Rally system on the testbed's bus 3; the display hub's node handlers, in the
    order of their hidraw nodes."""
    ports = site.RALLY_E_PORTS
    bed.add_usb_device(
        f"{BUS}/{ports['Rally Camera']}",
        vid=site.LOGITECH,
        pid=CAMERA_PID,
        product="Logitech Rally Camera",
        serial=site.RALLY_E_CAMERA,
    )
    handlers = [DisplayHub(errno.EPIPE), DisplayHub(rally_report())]
    for hidraw, (interface, handler) in enumerate(zip((0, 3), handlers, strict=True)):
        bed.add_hidraw_device(
            f"{BUS}/{ports['Rally Display Hub']}",
            vid=site.LOGITECH,
            pid=DISPLAY_HUB_PID,
            answer=handler,
            other=no_other_ioctl,
            hidraw=hidraw,
            interface=interface,
            product="Logitech Rally Display Hub",
            serial=site.RALLY_E_DISPLAY_HUB,
        )
    hub = table_hub()
    bed.add_replayed_usb_device(
        hub.umockdev(), hub.sysfs_path, table_hub_capture(hub).write(directory / f"{hub.name}.pcap")
    )
    return handlers


@dataclass
class RallyRoomAgent:
    """Room E's agent: its configuration, and what its one scan and one push said."""

    bed: IoctlTestbed
    config: Path
    scan: subprocess.CompletedProcess[str] | None = None
    push: subprocess.CompletedProcess[str] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def make(cls, bed: IoctlTestbed, directory: Path, *, portal_url: str, token_file: Path) -> RallyRoomAgent:
        directory.mkdir(parents=True, exist_ok=True)
        build(bed, directory)
        config = directory / "agent.toml"
        config.write_text(
            site.rally_room_toml(
                {"state": directory / "state", "portal_token": token_file}, portal_url=portal_url
            ),
            encoding="utf-8",
        )
        return cls(bed, config)

    def _roomsync(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "agent", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        self.seconds[args[0]] = time.monotonic() - started
        return result

    def run(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """One scan of the testbed's USB (stored), then one push: their JSON outputs."""
        self.scan = self._roomsync(self.bed.env(daemon_env(None)), "scan", "--usb", "--json")
        self.bed.check()  # a handler's assertion first, whatever the agent made of the ioctl
        assert self.scan.returncode == 0, (self.scan.returncode, self.scan.stdout, self.scan.stderr)
        report = json.loads(self.scan.stdout)
        self.push = self._roomsync(daemon_env(None), "push", "--json", "--deadline", "15")
        assert self.push.returncode == 0, (self.push.stdout, self.push.stderr)
        return report, json.loads(self.push.stdout)
