"""Fake USB devices for ``umockdev-run``: a ``.umockdev`` description and a usbmon capture.

Under ``umockdev-run --device DEV.umockdev --pcap SYSFS=CAPTURE.pcap -- CMD`` the real libusb
(and pyusb on top of it) enumerates a device that does not exist and reads its string
descriptors: every USB request the program submits is matched, in order, against the ``S``
(submit) records of the capture and answered with the data of the matching ``C`` (complete)
record. So the capture must list exactly the requests the code under test sends.

Formats used here (all little-endian):

- ``.umockdev``: ``P:`` sysfs path (without ``/sys``), ``N:`` device node under ``/dev``,
  ``E:`` udev properties, ``A:`` text attributes (C escapes, so ``\\n`` is a newline),
  ``H:`` binary attributes in hex; one blank line between devices.
- pcap: classic file header (magic ``a1b2c3d4``, version 2.4, linktype 220 =
  ``LINKTYPE_USB_LINUX_MMAPPED``), then per record a 16-byte record header, the 64-byte
  usbmon packet header (Linux ``Documentation/usb/usbmon.rst``, "binary interface") and the
  captured data.

Nothing here talks to hardware; the files are built in a test's ``tmp_path``.
"""

from __future__ import annotations

import os
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# USB constants (USB 2.0 spec, chapter 9).
DESC_DEVICE, DESC_CONFIGURATION, DESC_STRING, DESC_INTERFACE, DESC_ENDPOINT = 1, 2, 3, 4, 5
GET_DESCRIPTOR = 0x06
LANGID_EN_US = 0x0409
EP_BULK, EP_INTERRUPT = 0x02, 0x03

# usbmon transfer types (the xfer_type byte of the packet header).
XFER_ISO, XFER_INTERRUPT, XFER_CONTROL, XFER_BULK = 0, 1, 2, 3
LINKTYPE_USB_LINUX_MMAPPED = 220

#: Offsets of iManufacturer, iProduct, iSerialNumber in the device descriptor.
STRING_INDEX_OFFSETS = {"manufacturer": 14, "product": 15, "serial": 16}
#: The string indexes :class:`FakeUsbDevice` gives to the strings it has.
DEFAULT_STRING_INDEXES = {"manufacturer": 1, "product": 2, "serial": 3}


# --------------------------------------------------------------------------- descriptors


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: int  # bit 7 set = IN
    attributes: int = EP_BULK
    max_packet: int = 512
    interval: int = 0

    def descriptor(self) -> bytes:
        return struct.pack(
            "<BBBBHB", 7, DESC_ENDPOINT, self.address, self.attributes, self.max_packet, self.interval
        )


@dataclass(frozen=True, slots=True)
class Interface:
    number: int = 0
    cls: int = 0xFF
    subclass: int = 0
    protocol: int = 0
    endpoints: tuple[Endpoint, ...] = ()

    def descriptor(self) -> bytes:
        head = struct.pack(
            "<BBBBBBBBB",
            9,
            DESC_INTERFACE,
            self.number,
            0,
            len(self.endpoints),
            self.cls,
            self.subclass,
            self.protocol,
            0,
        )
        return head + b"".join(e.descriptor() for e in self.endpoints)


def string_descriptor(text: str | bytes) -> bytes:
    """A USB string descriptor: bLength, bDescriptorType 3, then UTF-16LE.

    ``bytes`` are taken as the already-encoded payload, so a test can serve malformed
    UTF-16 (a lone surrogate, an odd byte) exactly as a broken device would.
    """
    payload = text.encode("utf-16-le") if isinstance(text, str) else text
    if len(payload) > 253:
        raise ValueError("a string descriptor holds at most 253 payload bytes")
    return bytes([2 + len(payload), DESC_STRING]) + payload


def langid_descriptor(*langids: int) -> bytes:
    """String descriptor 0: the list of supported LANGIDs."""
    ids = langids or (LANGID_EN_US,)
    return bytes([2 + 2 * len(ids), DESC_STRING]) + b"".join(struct.pack("<H", i) for i in ids)


@dataclass(slots=True)
class FakeUsbDevice:
    """One USB device on a fake bus: enough for libusb and for the agent's sysfs reader.

    ``strings`` maps ``manufacturer``/``product``/``serial`` to what the device answers
    when asked for that string descriptor (str → UTF-16LE, bytes → raw payload). A string
    the device has gets index 1, 2 or 3 in the device descriptor; a string it lacks gets
    index 0, unless ``string_indexes`` says otherwise.
    """

    vendor_id: int
    product_id: int
    bcd_device: int = 0x0100
    busnum: int = 1
    devnum: int = 5
    ports: str = "1"  # port chain below the root hub: "1" → 1-1, "4.2" → 1-4.2
    strings: dict[str, str | bytes] = field(default_factory=dict)
    string_indexes: dict[str, int] | None = None
    #: Strings also exported as sysfs attributes (the kernel does so when it could read them).
    sysfs_strings: tuple[str, ...] = ()
    interfaces: tuple[Interface, ...] = (Interface(),)
    speed: int = 480

    @property
    def name(self) -> str:
        return f"{self.busnum}-{self.ports}"

    @property
    def sysfs_path(self) -> str:
        """The device's path under /sys (what ``--pcap`` wants, and ``P:`` without /sys)."""
        return f"/sys/devices/pci0000:00/0000:00:14.0/usb{self.busnum}/{self.name}"

    @property
    def devnode(self) -> str:
        return f"bus/usb/{self.busnum:03d}/{self.devnum:03d}"

    def index_of(self, name: str) -> int:
        if self.string_indexes is not None and name in self.string_indexes:
            return self.string_indexes[name]
        return DEFAULT_STRING_INDEXES[name] if name in self.strings else 0

    def device_descriptor(self) -> bytes:
        return struct.pack(
            "<BBHBBBBHHHBBBB",
            18,
            DESC_DEVICE,
            0x0200,
            0xEF,
            0x02,
            0x01,
            64,
            self.vendor_id,
            self.product_id,
            self.bcd_device,
            self.index_of("manufacturer"),
            self.index_of("product"),
            self.index_of("serial"),
            1,
        )

    def configuration_descriptor(self) -> bytes:
        body = b"".join(i.descriptor() for i in self.interfaces)
        # bConfigurationValue 1, no iConfiguration, bus-powered, 500 mA.
        return (
            struct.pack(
                "<BBHBBBBB", 9, DESC_CONFIGURATION, 9 + len(body), len(self.interfaces), 1, 0, 0x80, 250
            )
            + body
        )

    def descriptors(self) -> bytes:
        """What sysfs' ``descriptors`` attribute holds: device then configuration descriptor."""
        return self.device_descriptor() + self.configuration_descriptor()

    def umockdev(self) -> str:
        """The device as an umockdev description (``umockdev-run --device``)."""
        props = {
            "DEVNAME": f"/dev/{self.devnode}",
            "DEVTYPE": "usb_device",
            "DRIVER": "usb",
            "SUBSYSTEM": "usb",
            "BUSNUM": f"{self.busnum:03d}",
            "DEVNUM": f"{self.devnum:03d}",
            "PRODUCT": f"{self.vendor_id:x}/{self.product_id:x}/{self.bcd_device:x}",
            "TYPE": "239/2/1",
            "ID_VENDOR_ID": f"{self.vendor_id:04x}",
            "ID_MODEL_ID": f"{self.product_id:04x}",
        }
        attrs = {
            "idVendor": f"{self.vendor_id:04x}",
            "idProduct": f"{self.product_id:04x}",
            "bcdDevice": f"{self.bcd_device:04x}",
            "busnum": str(self.busnum),
            "devnum": str(self.devnum),
            "devpath": self.ports,
            "speed": str(self.speed),
            "version": " 2.00",
            "bDeviceClass": "ef",
            "bDeviceSubClass": "02",
            "bDeviceProtocol": "01",
            "bMaxPacketSize0": "64",
            "bNumConfigurations": "1",
            "bConfigurationValue": "1",
            "bNumInterfaces": f"{len(self.interfaces):2d}",
            "bmAttributes": "80",
            "maxchild": "0",
            "authorized": "1",
        }
        for name in self.sysfs_strings:
            value = self.strings[name]
            attrs[name] = value if isinstance(value, str) else value.decode("utf-16-le")
        lines = [f"P: {self.sysfs_path.removeprefix('/sys')}", f"N: {self.devnode}"]
        lines += [f"E: {k}={v}" for k, v in props.items()]
        lines += [f"A: {k}={_escape(v + chr(10))}" for k, v in attrs.items()]
        lines.append(f"H: descriptors={self.descriptors().hex().upper()}")
        return "\n".join(lines) + "\n"

    def write_umockdev(self, path: Path) -> Path:
        path.write_text(self.umockdev(), encoding="utf-8")
        return path


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def write_umockdev(path: Path, *devices: FakeUsbDevice) -> Path:
    """Several devices in one ``.umockdev`` file (blank line between devices)."""
    path.write_text("\n".join(d.umockdev() for d in devices), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- usbmon capture


@dataclass(slots=True)
class UsbmonCapture:
    """A usbmon capture of one device, built request by request, in replay order."""

    busnum: int
    devnum: int
    records: list[bytes] = field(default_factory=list)
    _next_id: int = 0x1000
    _usec: int = 0

    @classmethod
    def of(cls, device: FakeUsbDevice) -> UsbmonCapture:
        return cls(device.busnum, device.devnum)

    def _packet(
        self,
        urb_id: int,
        event: str,
        xfer: int,
        epnum: int,
        *,
        setup: bytes | None,
        status: int,
        length: int,
        data: bytes,
    ) -> bytes:
        self._usec += 125  # timestamps only need to increase
        header = struct.pack(
            "<QBBBBHBBqiiII8siiII",
            urb_id,
            ord(event),
            xfer,
            epnum,
            self.devnum,
            self.busnum,
            0 if setup is not None else ord("-"),  # flag_setup: 0 = setup present
            0 if data else ord("<" if epnum & 0x80 else ">"),  # flag_data: 0 = data present
            1_700_000_000 + self._usec // 1_000_000,
            self._usec % 1_000_000,
            status,
            length,
            len(data),
            setup or bytes(8),
            0,
            0,
            0,
            0,
        )  # interval, start_frame, xfer_flags, ndesc
        assert len(header) == 64
        return header + data

    def _urb_id(self) -> int:
        self._next_id += 0x40
        return 0xFFFF_8880_0000_0000 + self._next_id

    def control_in(self, setup: bytes, reply: bytes) -> UsbmonCapture:
        """A control-IN transfer: the submit with its 8-byte setup, the completion with data.

        The reply is cut to ``wLength``, as a device would. umockdev matches the program's
        request on the setup bytes and ``wLength``; a standard request that does not match
        is skipped (with its completion), so a request the capture lacks times out.
        """
        if len(setup) != 8 or not setup[0] & 0x80:
            raise ValueError("control_in needs an 8-byte device-to-host setup packet")
        w_length = struct.unpack_from("<H", setup, 6)[0]
        reply = reply[:w_length]
        urb = self._urb_id()
        self.records.append(
            self._packet(urb, "S", XFER_CONTROL, 0x80, setup=setup, status=-115, length=w_length, data=b"")
        )
        self.records.append(
            self._packet(urb, "C", XFER_CONTROL, 0x80, setup=None, status=0, length=len(reply), data=reply)
        )
        return self

    def get_descriptor(
        self, desc_type: int, index: int, w_index: int, w_length: int, reply: bytes
    ) -> UsbmonCapture:
        """GET_DESCRIPTOR(type, index) with ``wIndex`` (the LANGID for strings)."""
        setup = struct.pack("<BBHHH", 0x80, GET_DESCRIPTOR, (desc_type << 8) | index, w_index, w_length)
        return self.control_in(setup, reply)

    def bulk_out(self, endpoint: int, data: bytes) -> UsbmonCapture:
        """A bulk-OUT transfer the host sends (replay compares the bytes)."""
        urb = self._urb_id()
        self.records.append(
            self._packet(
                urb, "S", XFER_BULK, endpoint & 0x7F, setup=None, status=-115, length=len(data), data=data
            )
        )
        self.records.append(
            self._packet(
                urb, "C", XFER_BULK, endpoint & 0x7F, setup=None, status=0, length=len(data), data=b""
            )
        )
        return self

    def bulk_in(self, endpoint: int, request_length: int, reply: bytes) -> UsbmonCapture:
        """A bulk-IN transfer of ``request_length`` bytes answered with ``reply``.

        umockdev matches the program's read on endpoint and length, and copies the reply
        into its buffer unchecked: a reply longer than the request would overrun it.
        """
        if len(reply) > request_length:
            raise ValueError("the reply is longer than the read it answers")
        urb = self._urb_id()
        self.records.append(
            self._packet(
                urb, "S", XFER_BULK, endpoint | 0x80, setup=None, status=-115, length=request_length, data=b""
            )
        )
        self.records.append(
            self._packet(
                urb, "C", XFER_BULK, endpoint | 0x80, setup=None, status=0, length=len(reply), data=reply
            )
        )
        return self

    def to_bytes(self) -> bytes:
        out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_USB_LINUX_MMAPPED)]
        for i, rec in enumerate(self.records):
            usec = 125 * (i + 1)
            out.append(
                struct.pack("<IIII", 1_700_000_000 + usec // 1_000_000, usec % 1_000_000, len(rec), len(rec))
            )
            out.append(rec)
        return b"".join(out)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.to_bytes())
        return path


#: pyusb asks for 254 bytes for both the LANGID list and every string
#: (usb/util.py: get_langids, get_string → usb/control.py: get_descriptor).
PYUSB_STRING_WLENGTH = 254


def string_reads(
    device: FakeUsbDevice, names: list[str] | tuple[str, ...], *, langid: int = LANGID_EN_US
) -> UsbmonCapture:
    """The capture of pyusb reading ``names`` (in that order) from ``device``.

    pyusb first reads string descriptor 0 (the LANGIDs, cached per ``Device`` object), then
    each string with the first LANGID: ``bmRequestType 0x80, bRequest 6,
    wValue 0x03nn, wIndex langid (0 for the LANGID list), wLength 254``.
    """
    capture = UsbmonCapture.of(device)
    capture.get_descriptor(DESC_STRING, 0, 0, PYUSB_STRING_WLENGTH, langid_descriptor(langid))
    for name in names:
        index = device.index_of(name)
        if index == 0:
            raise ValueError(f"{name}: the device descriptor has no index for it")
        capture.get_descriptor(
            DESC_STRING, index, langid, PYUSB_STRING_WLENGTH, string_descriptor(device.strings[name])
        )
    return capture


REPO = Path(__file__).resolve().parents[1]


def run_under_umockdev(
    tmp_path: Path, device: FakeUsbDevice, capture: UsbmonCapture, *argv: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` under ``umockdev-run`` with ``device`` as the only USB device, answering
    from ``capture``; the repo is importable and ROOMSYNC_* settings of the caller are not
    inherited."""
    dev_file = device.write_umockdev(tmp_path / "device.umockdev")
    pcap = capture.write(tmp_path / "capture.pcap")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMSYNC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        ["umockdev-run", "--device", str(dev_file), "--pcap", f"{device.sysfs_path}={pcap}", "--", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=timeout,
        check=False,
    )
