"""ReplayTransport and the recording reader: what the recording holds, and how it answers."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from agent.collectors.sync.client import SyncClient
from agent.collectors.sync.errors import ReplayError, TransportError, TransportTimeout
from agent.collectors.sync.frames import (
    Command,
    decode_frame,
    encode_frame,
    host_ack_payload,
)
from agent.collectors.sync.interfaces import SyncEndpoints
from agent.collectors.sync.proto import encode_get_device_info_request
from agent.collectors.sync.replay import (
    ReplayTransport,
    bulk_read_key,
    bulk_write_key,
    fwupd_event_id,
    load_recording,
    parse_recording,
    string_key,
)
from tests.shared import shared_file
from tests.sync_captures import (
    FIXTURE,
    GDI_RESPONSE,
    IN_EP,
    OUT_EP,
    READ_SIZE,
    Capture,
    read_event,
)

GDI_FRAME = encode_frame(Command.BUFFER_WRITE, 1, encode_get_device_info_request())


def test_recorded_device_facts() -> None:
    recording = load_recording(shared_file(*FIXTURE))
    device = recording.device
    assert (device.vendor_id, device.product_id, device.bcd_device) == (0x046D, 0x089B, 0x0020)
    assert device.bcd_usb == 0x0320
    assert (device.device_class, device.device_subclass, device.device_protocol) == (0xEF, 2, 1)
    assert device.string_indexes == {"manufacturer": 1, "product": 2, "serial": 3}
    # The recording holds the product and serial strings (no manufacturer string read).
    assert device.strings == {"product": "Logi Rally Bar", "serial": "2313FD1N08Z2"}
    assert device.string_problems == {}
    assert (device.platform_id, device.busnum, device.devnum) == ("2-1.1", 2, 20)
    assert [(i.number, i.alternate, i.cls, i.subclass) for i in device.interfaces] == [
        (0, 0, 0x0E, 1),
        (1, 0, 0x0E, 2),
        (1, 1, 0x0E, 2),
        (2, 0, 0xFF, 117),
        (3, 0, 0xFF, 118),
        (4, 0, 0xFF, 66),
    ]
    assert recording.sync == SyncEndpoints(3, 0x02, 0x84)
    assert recording.read_size == READ_SIZE


def test_recorded_exchanges_are_named_by_their_request() -> None:
    recording = Capture().recording()
    assert recording.requests == [
        "TransitionToDeviceMode",
        "TransitionToDeviceMode",
        "SetDeviceTime",
        "GetDeviceInfo",
    ]
    assert [op.kind for op in recording.preamble] == ["error"]  # event 14, a -7 read
    assert [op.kind for op in recording.exchanges[0].ops] == ["read", "write", "read", "error"]
    gdi = recording.exchanges[3]
    assert [op.event for op in gdi.ops] == list(range(37, 44))


def test_event_ids_are_the_hashed_keys_of_the_calls() -> None:
    capture = Capture()
    e = capture.events
    assert e[36]["Id"] == fwupd_event_id(bulk_write_key(OUT_EP, capture.data(36)))
    assert e[40]["Id"] == e[14]["Id"] == fwupd_event_id(bulk_read_key(IN_EP, 8192))
    assert e[12]["Id"] == fwupd_event_id(string_key(2))
    assert e[13]["Id"] == fwupd_event_id(string_key(3))


def test_clear_text_ids_replay_the_same() -> None:
    # Newer fwupd writes the keys themselves as ids (as logi-scribe-setup.json does).
    capture = Capture()
    for ev in capture.events:
        if ev["Id"] == fwupd_event_id(bulk_read_key(IN_EP, READ_SIZE)):
            ev["Id"] = bulk_read_key(IN_EP, READ_SIZE)
        elif "Data" in ev and ev["Id"] == _write_id(ev["Data"]):
            ev["Id"] = bulk_write_key(OUT_EP, base64.b64decode(ev["Data"]))
    capture.events[13]["Id"] = string_key(3)
    recording = capture.recording()
    assert recording.requests[-1] == "GetDeviceInfo"
    assert recording.read_size == READ_SIZE
    assert recording.device.strings["serial"] == "2313FD1N08Z2"
    assert json.loads(SyncClient(ReplayTransport(recording)).get_device_info().json_text)


def _write_id(data_text: str) -> str:
    try:
        return fwupd_event_id(bulk_write_key(OUT_EP, base64.b64decode(data_text, validate=True)))
    except ValueError:
        return ""


def test_unknown_read_ids_fall_back_to_the_most_repeated_call() -> None:
    capture = Capture()
    read_id = fwupd_event_id(bulk_read_key(IN_EP, READ_SIZE))
    for ev in capture.events:
        if ev["Id"] == read_id:
            ev["Id"] = "#0badf00d"
    recording = capture.recording()
    assert recording.read_size is None
    assert recording.requests[-1] == "GetDeviceInfo"
    assert SyncClient(ReplayTransport(recording)).get_device_info().closed


def test_answers_are_paired_with_their_request() -> None:
    # The recording answers TransitionToDeviceMode (event 23) and SetDeviceTime (event 31)
    # before GetDeviceInfo; the client asking GetDeviceInfo gets event 40, nothing else.
    transport = ReplayTransport(Capture().recording())
    reply = SyncClient(transport).get_device_info()
    assert reply.header_id == "d23a7a46-b6ea-49c2-8e10-de9518b8ceef"
    served = [decode_frame(d) for k, d in transport.log if k == "device"]
    assert [f.command for f in served].count(Command.BUFFER_READ) == 1


def test_second_request_without_a_second_recorded_answer_is_an_error() -> None:
    transport = ReplayTransport(Capture().recording())
    client = SyncClient(transport)
    client.get_device_info()
    with pytest.raises(
        ReplayError,
        match="cannot answer another GetDeviceInfo request: its 1 recorded GetDeviceInfo exchange",
    ):
        client.get_device_info()


def test_client_deviating_from_the_recorded_host_is_an_error() -> None:
    transport = ReplayTransport(Capture().recording())
    transport.write(GDI_FRAME, 1.0)
    assert decode_frame(transport.read(READ_SIZE, 1.0)).payload == b"52231"
    wrong = encode_frame(Command.ACK, 2, host_ack_payload(Command.BUFFER_READ))
    with pytest.raises(
        ReplayError,
        match=r"client sent Ack\(seq 2.*where the recording has "
        r"UninitBuffer\(seq 12.*UsbEvents\[38\]",
    ):
        transport.write(wrong, 1.0)


def test_sequence_ids_must_go_up_by_one() -> None:
    transport = ReplayTransport(Capture().recording())
    transport.write(GDI_FRAME, 1.0)
    transport.read(READ_SIZE, 1.0)
    with pytest.raises(ReplayError, match="went from 1 to 5"):
        transport.write(encode_frame(Command.UNINIT_BUFFER, 5), 1.0)


def test_device_acks_are_renumbered_to_the_client_sequence() -> None:
    transport = ReplayTransport(Capture().recording())
    transport.write(encode_frame(Command.BUFFER_WRITE, 500, encode_get_device_info_request()), 1.0)
    ack = decode_frame(transport.read(READ_SIZE, 1.0))
    assert (ack.command, ack.sequence_id) == (Command.ACK, 500)  # recorded as seq 11


def test_reads_time_out_when_the_device_waits_for_the_host() -> None:
    waited: list[float] = []
    transport = ReplayTransport(Capture().recording(), on_timeout=waited.append)
    transport.write(GDI_FRAME, 1.0)
    transport.read(READ_SIZE, 1.0)  # Ack "52231"; now the device waits for UninitBuffer
    with pytest.raises(TransportTimeout, match="nothing to send"):
        transport.read(READ_SIZE, 0.75)
    assert waited == [0.75]


def test_recorded_libusb_errors_other_than_timeout_are_transport_errors() -> None:
    capture = Capture()
    capture.events[GDI_RESPONSE] = read_event(error=-4)  # LIBUSB_ERROR_NO_DEVICE
    with pytest.raises(TransportError, match="recorded libusb error -4"):
        SyncClient(ReplayTransport(capture.recording())).get_device_info()


def test_a_write_before_any_request_is_an_error() -> None:
    transport = ReplayTransport(Capture().recording())
    with pytest.raises(ReplayError, match="before any request"):
        transport.write(encode_frame(Command.UNINIT_BUFFER, 1), 1.0)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "no UsbDevices list"),
        ({"UsbDevices": []}, "no UsbDevices list"),
        ({"UsbDevices": [{"UsbInterfaces": []}]}, "no Sync Agent interface"),
        ({"UsbDevices": ["x"]}, "is not a device"),
    ],
)
def test_unusable_recordings_are_clear_errors(doc: object, message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        parse_recording(doc)


def test_a_recording_whose_sync_interface_is_only_firmware_update_and_adb_is_refused() -> None:
    capture = Capture()
    capture.device["UsbInterfaces"] = [
        i for i in capture.device["UsbInterfaces"] if i.get("InterfaceSubClass") != 118
    ]
    with pytest.raises(ReplayError, match=r"no Sync Agent interface.*2:0xff/117/1.*4:0xff/66/1"):
        capture.recording()


def test_bad_base64_in_a_transfer_is_named(tmp_path: Path) -> None:
    capture = Capture()
    capture.events[GDI_RESPONSE]["Data"] = "not base64!"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(capture.doc), encoding="utf-8")
    with pytest.raises(ReplayError, match=r"UsbEvents\[40\]: Data is not base64"):
        load_recording(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ReplayError, match="not JSON"):
        load_recording(path)
    with pytest.raises(ReplayError, match="cannot read"):
        load_recording(tmp_path / "absent.json")
