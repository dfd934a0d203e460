"""The recorded Rally Bar session, read in place, and variants derived from it at test time.

``../shared/fixtures/usb-captures/logi-rally-bar-setup.json`` is never copied: each test
loads it, decodes what it needs, changes it (other serials, missing peripherals, extra
events, timeouts, dropped answers) and re-encodes it in memory, with event ids computed the
way the recording's own are (see ``agent.collectors.sync.replay``). Where the shared fixtures
are absent a test fails under ``CI=true`` and skips otherwise (``tests.shared.missing``).

Event indexes of the recording used below (``UsbEvents[i]``):

* 12 / 13: product and serial string descriptors;
* 14, 19: read timeouts (libusb -7);
* 15–27: TransitionToDeviceMode, twice (the first attempt got no answer);
* 28–35: SetDeviceTime, answered by an acknowledge;
* 36–43: GetDeviceInfo — 36 BufferWrite(seq 11), 37 Ack "52231", 38 UninitBuffer(seq 12),
  39 Ack "52232", 40 BufferRead (the JSON), 41 host Ack 0xCC06 (seq 13), 42 device
  UninitBuffer (8 bytes), 43 host Ack 0xCC08 (seq 14).
"""

from __future__ import annotations

import base64
import copy
import json
from functools import cache
from typing import Any

from agent.collectors.sync import proto
from agent.collectors.sync.frames import (
    Command,
    decode_frame,
    device_ack_payload,
    encode_frame,
    encode_short_uninit,
    host_ack_payload,
)
from agent.collectors.sync.replay import (
    Recording,
    bulk_read_key,
    bulk_write_key,
    fwupd_event_id,
    parse_recording,
)
from tests.shared import shared_file
from tests.usbfake import EP_BULK, EP_INTERRUPT, Endpoint, FakeUsbDevice, Interface, UsbmonCapture

FIXTURE = ("fixtures", "usb-captures", "logi-rally-bar-setup.json")
OUT_EP, IN_EP, READ_SIZE = 0x02, 0x84, 8192
GDI_WRITE, GDI_ACK, GDI_UNINIT, GDI_UNINIT_ACK, GDI_RESPONSE = 36, 37, 38, 39, 40
GDI_HOST_ACK_READ, GDI_DEVICE_UNINIT, GDI_HOST_ACK_UNINIT = 41, 42, 43

#: Facts of the recorded bar (decoded by hand from the recording; see the module docstring).
BAR_SERIAL = "2313FD1N08Z2"
SIGHT_SERIAL = "2325LZ51XY58"


@cache
def _fixture_text() -> str:
    return shared_file(*FIXTURE).read_text(encoding="utf-8")


def fixture_doc() -> dict[str, Any]:
    """A fresh decoded copy of the recording (``tests.shared.missing`` when it is absent)."""
    return copy.deepcopy(json.loads(_fixture_text()))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def read_event(data: bytes | None = None, *, error: int | None = None) -> dict[str, Any]:
    """A device → host read, with the id the recording's reads carry (8192-byte buffer)."""
    event: dict[str, Any] = {"Id": fwupd_event_id(bulk_read_key(IN_EP, READ_SIZE))}
    if error is not None:
        event["Error"] = error
    else:
        event["Data"] = b64(data or b"")
    return event


def write_event(data: bytes) -> dict[str, Any]:
    """A host → device write, with the id computed from its data."""
    return {"Id": fwupd_event_id(bulk_write_key(OUT_EP, data)), "Data": b64(data)}


def timeout_event() -> dict[str, Any]:
    return read_event(error=-7)


class Capture:
    """The recorded session as editable data."""

    def __init__(self) -> None:
        self.doc = fixture_doc()
        self.device = self.doc["UsbDevices"][0]
        self.events: list[dict[str, Any]] = self.device["UsbEvents"]

    def data(self, i: int) -> bytes:
        return base64.b64decode(self.events[i]["Data"])

    def recording(self) -> Recording:
        return parse_recording(copy.deepcopy(self.doc), source="derived capture")

    # -- the GetDeviceInfo answer

    def device_info(self) -> dict[str, Any]:
        message = proto.decode_usb_msg(decode_frame(self.data(GDI_RESPONSE)).payload)
        assert message.json_payload is not None
        return json.loads(message.json_payload)

    def set_device_info(self, document: dict[str, Any] | str) -> Capture:
        text = document if isinstance(document, str) else json.dumps(document)
        old = proto.decode_usb_msg(decode_frame(self.data(GDI_RESPONSE)).payload)
        payload = proto.encode_device_message(
            header_id=old.header_id, timestamp=old.header_timestamp, device_info_json=text
        )
        self.events[GDI_RESPONSE] = read_event(encode_frame(Command.BUFFER_READ, 0, payload))
        return self

    # -- editing the event list

    def insert(self, index: int, events: list[dict[str, Any]]) -> Capture:
        self.events[index:index] = events
        return self

    def remove(self, start: int, stop: int) -> Capture:
        del self.events[start:stop]
        return self


def kong_event_block(text: str = '{"type":3,"payload":{}}', seq: int = 1000) -> list[dict]:
    """What an unsolicited Kong event looks like on the wire, host acks included:
    device BufferRead, host Ack 0xCC06, device UninitBuffer (8 bytes), host Ack 0xCC08."""
    message = proto.encode_device_message(header_id="evt", timestamp="1", kong_event_json=text)
    return [
        read_event(encode_frame(Command.BUFFER_READ, 0, message)),
        write_event(encode_frame(Command.ACK, seq, host_ack_payload(Command.BUFFER_READ))),
        read_event(encode_short_uninit()),
        write_event(encode_frame(Command.ACK, seq + 1, host_ack_payload(Command.UNINIT_BUFFER))),
    ]


def device_ack(seq: int, command: Command) -> dict[str, Any]:
    return read_event(encode_frame(Command.ACK, seq, device_ack_payload(command)))


def unanswered_gdi(capture: Capture) -> list[dict[str, Any]]:
    """The recorded GetDeviceInfo request acknowledged by the device, but no answer: the
    pattern of the recorded first TransitionToDeviceMode attempt (events 15–19)."""
    return [copy.deepcopy(capture.events[i]) for i in (GDI_WRITE, GDI_ACK, GDI_UNINIT, GDI_UNINIT_ACK)]


class FakeClock:
    """Simulated time: advances only when told (a replayed timeout takes its full length)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ----------------------------------------------------------------------------- umockdev


def fake_bar(recording: Recording, remap: dict[int, int] | None = None) -> FakeUsbDevice:
    """A USB device with the recording's ids and interfaces (alternate 0), endpoints
    optionally re-addressed."""
    remap = remap or {}
    interfaces = tuple(
        Interface(
            i.number,
            i.cls,
            i.subclass,
            i.protocol,
            tuple(
                Endpoint(remap.get(e.address, e.address), EP_BULK if i.cls == 0xFF else EP_INTERRUPT, 1024)
                for e in i.endpoints
            ),
        )
        for i in recording.device.interfaces
        if i.alternate == 0
    )
    d = recording.device
    return FakeUsbDevice(
        d.vendor_id,
        d.product_id,
        bcd_device=d.bcd_device,
        busnum=2,
        devnum=20,
        ports="1.1",
        interfaces=interfaces,
        strings=dict(d.strings),
    )


def recorded_bulk(recording: Recording, out_ep: int, in_ep: int, seq_offset: int = 0) -> UsbmonCapture:
    """The recorded GetDeviceInfo exchange (events 36–43) as usbmon bulk records.

    ``seq_offset`` renumbers the host's sequence ids (and the device's acks of them): the
    recorded host used 11…14, the agent starts a fresh session at 1.
    """
    capture = UsbmonCapture(busnum=2, devnum=20)
    exchange = recording.exchanges[-1]
    for op in (exchange.request_frame, *exchange.ops):
        data = op.data
        if seq_offset and len(data) >= 12:
            frame = decode_frame(data)
            if frame.sequence_id:
                data = encode_frame(frame.command, frame.sequence_id + seq_offset, frame.payload)
        if op.kind == "write":
            capture.bulk_out(out_ep, data)
        elif op.kind == "read":
            capture.bulk_in(in_ep, 8192, data)
    return capture
