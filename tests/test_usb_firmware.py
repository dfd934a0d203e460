"""Firmware of the USB room families (issue [11/16]): the decoders, the extension-unit lookup,
and the Scribe's recorded session replayed — as recorded, and derived with other bytes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import struct
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.catalog import load_catalog
from agent.collectors.usbfw.requests import (
    MEETUP_XU_GUID,
    FirmwareDecodeError,
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
from agent.discovery import ScanContext
from agent.discovery.usb_replay import ReplayUsbSource
from tests.shared import shared_file

CATALOG = load_catalog()
NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- decoders


@pytest.mark.parametrize(
    ("decode", "data", "version"),
    [
        (decode_scribe, bytes([1, 1, 2, 0]), "1.1.2"),  # the recording's answer
        (decode_scribe, bytes([0x0A, 0x02, 0x34, 0x12, 0xFF]), "2.10.4660"),
        (decode_meetup, bytes([0x48, 0x01, 0x0B, 0x00]), "1.72.11"),
        (decode_meetup_eeprom, bytes([0x03, 0x01]), "1.3"),
        (decode_tap_hdmi, bytes([0, 0, 0, 1, 0, 2, 0x01, 0x2C]), "1.2.300"),
        (decode_tap_presence, bytes([0x19, 0x2C, 0x01, 0x03, 0x01]), "1.3.300"),
    ],
)
def test_decoders(decode: Any, data: bytes, version: str) -> None:
    assert decode(data) == version


def test_the_rally_system_version_and_the_table_hubs() -> None:
    report = bytearray(513)
    report[0] = 0x3E
    report[0xB8:0xBB] = bytes([1, 4, 30])
    assert decode_rally_audio(bytes(report)) == "1.4.30"
    answer = b"V1.3.47\x00\x00\x00\x00\x00\x00\x00\x00\x00" + struct.pack("<I", 2)
    assert decode_tablehub(answer) == ("V1.3.47", 2)


@pytest.mark.parametrize(
    ("decode", "data", "reason"),
    [
        (decode_scribe, bytes([1, 1, 2]), "at least 4"),
        (decode_scribe, bytes(4), "all zeros"),
        (decode_scribe, b"\xff" * 4, "all ones"),
        (decode_meetup, b"", "at least 4"),
        (decode_meetup_eeprom, bytes([1, 2, 3]), "2 expected"),
        (decode_tap_hdmi, bytes(7), "8 expected"),
        (decode_tap_presence, bytes([0x1A, 1, 2, 3, 4]), "not 0x19"),
        (decode_tap_presence, bytes([0x19, 0, 0, 0, 0]), "all zeros"),
        (decode_rally_audio, bytes([0x3E]) + bytes(100), "513 expected"),
        (decode_rally_audio, bytes([0x3D]) + bytes(512), "not 0x3E"),
        (decode_tablehub, b"\x01" * 19, "20 expected"),
        (decode_tablehub, b"\x07garbage\x00" + bytes(11), "not printable"),
    ],
)
def test_an_answer_without_a_version_claims_none(decode: Any, data: bytes, reason: str) -> None:
    with pytest.raises(FirmwareDecodeError, match=reason):
        decode(data)


def test_control_lengths_are_bounded() -> None:
    assert decode_control_length(b"\x04\x00", low=4, high=1024, what="Scribe") == 4
    for data in (b"\x03\x00", b"\x01\x04", b"\x04", b"\x04\x00\x00"):
        with pytest.raises(FirmwareDecodeError):
            decode_control_length(data, low=4, high=1024, what="Scribe")


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=600))
def test_any_bytes_give_a_version_or_a_decode_error(data: bytes) -> None:
    for decode in (decode_scribe, decode_meetup, decode_meetup_eeprom, decode_tap_hdmi, decode_tap_presence):
        try:
            version = decode(data)
        except FirmwareDecodeError:
            continue
        assert all(part.isdigit() for part in version.split("."))
    for decode_report in (decode_rally_audio, decode_tablehub):
        with contextlib.suppress(FirmwareDecodeError):
            decode_report(data)


def xu_descriptor(unit: int, guid: uuid.UUID) -> bytes:
    """A VC_EXTENSION_UNIT descriptor (24 bytes: one control, no source)."""
    body = bytes([unit]) + guid.bytes_le + bytes([2, 1, 0, 1, 0x03, 0])
    return bytes([3 + len(body), 0x24, 0x06]) + body


def test_the_meetups_extension_unit_is_found_by_its_guid() -> None:
    other = uuid.UUID("2C49D16A-32B8-4485-3EA8-643A152362F2")
    descriptors = (
        bytes.fromhex("12010002ef0201406d046608000101020301")  # the device descriptor
        + bytes.fromhex("0902ff00020100800f")  # a configuration
        + xu_descriptor(3, other)
        + xu_descriptor(5, MEETUP_XU_GUID)
    )
    assert xu_unit_ids(descriptors) == {other: 3, MEETUP_XU_GUID: 5}
    assert xu_unit_ids(descriptors[:40]) == {}  # cut short: nothing half-read
    assert xu_unit_ids(b"\x00\x24\x06") == {}


# --------------------------------------------------------------------------- the Scribe replayed


def scribe_recording() -> dict[str, Any]:
    return json.loads(shared_file("fixtures/usb-captures/logi-scribe-setup.json").read_text())


def with_answers(length: bytes | None, current: bytes | None) -> dict[str, Any]:
    """The Scribe's recording with other answers to GET_LEN and GET_CUR (``None``: that
    event removed). The GET_CUR event's own Length follows the new GET_LEN."""
    doc = copy.deepcopy(scribe_recording())
    events = doc["UsbDevices"][0]["Events"]
    kept = []
    for event in events:
        eid = event["Id"]
        if "Query=0x85" in eid:
            if length is None:
                continue
            event["DataOut"] = base64.b64encode(length).decode()
        elif "Query=0x81" in eid:
            if current is None:
                continue
            size = int.from_bytes(length or b"\x04\x00", "little")
            event["Id"] = (
                f"Ioctl:Request=0xc0107521,Unit=0x08,Selector=0x01,Query=0x81,"
                f"Data={base64.b64encode(bytes(size)).decode()},Length=0x{size:x}"
            )
            event["DataOut"] = base64.b64encode(current).decode()
        kept.append(event)
    doc["UsbDevices"][0]["Events"] = kept
    return doc


def replay(tmp_path: Path, doc: dict[str, Any] | None = None) -> Any:
    path = tmp_path / "scribe.json"
    path.write_text(json.dumps(doc if doc is not None else scribe_recording()))
    return asyncio.run(ReplayUsbSource(path).run(ScanContext(CATALOG, NOW)))


def test_the_recorded_scribe_reports_firmware_1_1_2(tmp_path: Path) -> None:
    result = replay(tmp_path)
    [scribe] = result.observations
    assert (scribe.product, scribe.firmware, scribe.firmware_source) == ("Scribe", "1.1.2", "uvc-xu")
    assert scribe.attributes["usb_release"] == "1.00" and result.errors == []


@pytest.mark.parametrize(
    ("length", "current", "version"),
    [
        (b"\x04\x00", bytes([3, 2, 0x10, 0x01]), "2.3.272"),
        (b"\x06\x00", bytes([0, 1, 5, 0, 0xAA, 0xBB]), "1.0.5"),  # longer control: first 4 bytes
    ],
)
def test_derived_recordings_give_the_decoded_version(
    tmp_path: Path, length: bytes, current: bytes, version: str
) -> None:
    [scribe] = replay(tmp_path, with_answers(length, current)).observations
    assert scribe.firmware == version


@pytest.mark.parametrize(
    ("length", "current", "said"),
    [
        (b"\x00\x08", bytes(4), "GET_LEN answered 2048, outside 4..1024"),
        (b"\x02\x00", bytes(2), "GET_LEN answered 2, outside 4..1024"),
        (b"\x04", bytes(4), "GET_LEN answered 1 bytes, not 2"),
        (b"\x04\x00", bytes(4), "all zeros"),
        (b"\x04\x00", b"\xff\xff\xff\xff", "all ones"),
        (b"\x04\x00", bytes([1, 1]), "2 bytes, at least 4 expected"),
        (b"\x04\x00", None, "no answer to UVC query 0x81 of unit 8 selector 1 (4 bytes)"),
    ],
)
def test_derived_recordings_without_a_version_claim_none(
    tmp_path: Path, length: bytes, current: bytes | None, said: str
) -> None:
    result = replay(tmp_path, with_answers(length, current))
    [scribe] = result.observations
    assert scribe.firmware is None
    [note] = [i for i in scribe.health if i.code == "firmware-read-failed"]
    assert said in note.message, note.message
    [error] = result.errors
    assert said in error.message


def test_roomsync_scan_replays_the_scribe_with_its_firmware(tmp_path: Path) -> None:
    import subprocess
    import sys

    capture = shared_file("fixtures/usb-captures/logi-scribe-setup.json")
    (tmp_path / "agent.toml").write_text("")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "scan",
            "--replay",
            str(capture),
            "--config",
            str(tmp_path / "agent.toml"),
            "--state-dir",
            str(tmp_path / "state"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [scribe] = json.loads(done.stdout)["devices"]
    assert (scribe["product"], scribe["firmware"], scribe["firmware_source"]) == ("Scribe", "1.1.2", "uvc-xu")


# --------------------------------------------------------------------------- review: time, cache, recipes


def test_a_read_stuck_in_the_kernel_is_not_started_again_until_it_returns() -> None:
    import threading

    from agent.collectors.usbfw.collectors import DeadlinePassed, StillStuck, run_bounded

    release = threading.Event()
    started = []

    def stuck() -> str:
        started.append(1)
        release.wait(10)
        return "late"

    with pytest.raises(DeadlinePassed, match=r"did not answer within 0\.05 s"):
        run_bounded(stuck, 0.05, "a hung camera", key="dev-1")
    with pytest.raises(StillStuck):
        run_bounded(stuck, 0.05, "a hung camera", key="dev-1")
    assert run_bounded(lambda: "other", 1, "another camera", key="dev-2") == "other"
    release.set()
    for _ in range(100):  # the stuck thread returns
        try:
            assert run_bounded(lambda: "again", 1, "a hung camera", key="dev-1") == "again"
            break
        except StillStuck:
            import time

            time.sleep(0.01)
    assert len(started) == 1


def fake_unit(pid: int) -> Any:
    from agent.usbtree import UsbRecord, group_units

    record = UsbRecord(
        name="1-4", path=Path("/nonexistent/1-4"), vendor_id=0x046D, product_id=pid, busnum=1, devnum=4
    )
    [unit] = group_units([record], CATALOG)
    return unit


class CountingDevices:
    """Live device access whose video node answers the Scribe's queries, counting opens."""

    live = True

    def __init__(self) -> None:
        self.opened = 0

    def video_node(self, record: Any) -> Any:
        import contextlib

        from agent.collectors.usbfw.requests import UVC_GET_LEN

        devices = self

        class Node:
            descriptors = None

            def capabilities(self) -> int:
                return 1

            def query(self, request: Any) -> bytes:
                return b"\x04\x00" if request.query == UVC_GET_LEN else bytes([1, 1, 2, 0])

        @contextlib.contextmanager
        def opener() -> Any:
            devices.opened += 1
            yield Node()

        return opener


def test_a_unit_is_read_once_per_enumeration() -> None:
    from agent.collectors import UsbReadContext
    from agent.collectors.usb_descriptor import UsbDescriptorCollector
    from agent.collectors.usbfw.collectors import UvcXuCollector

    devices = CountingDevices()
    unit = fake_unit(0x08E2)
    ctx = UsbReadContext(CATALOG, NOW, devices, 5.0)  # type: ignore[arg-type]
    for _ in range(3):
        obs = UsbDescriptorCollector.collect(unit, CATALOG, NOW)
        obs, error = UvcXuCollector().collect(obs, unit, ctx)
        assert (obs.firmware, error) == ("1.1.2", None)
    assert devices.opened == 1
    unit.main.devnum = 9  # plugged in again: read again
    UvcXuCollector().collect(UsbDescriptorCollector.collect(unit, CATALOG, NOW), unit, ctx)
    assert devices.opened == 2


def test_a_unit_without_a_known_recipe_says_so() -> None:
    from agent.collectors import UsbReadContext
    from agent.collectors.usb_descriptor import UsbDescriptorCollector
    from agent.collectors.usbfw.collectors import UvcXuCollector

    unit = fake_unit(0x0867)  # a MeetUp id with no recipe
    obs = UsbDescriptorCollector.collect(unit, CATALOG, NOW)
    obs, error = UvcXuCollector().collect(obs, unit, UsbReadContext(CATALOG, NOW, CountingDevices(), 5.0))  # type: ignore[arg-type]
    assert error is None and obs.firmware is None
    [note] = [i for i in obs.health if i.code == "firmware-unavailable"]
    assert "no known way to read the firmware of 046d:0867" in note.message


def test_a_meetup_naming_extension_unit_0_is_a_read_failure() -> None:
    from agent.collectors.usbfw.collectors import read_meetup

    class Node:
        descriptors = xu_descriptor(0, MEETUP_XU_GUID)

        def query(self, request: Any) -> bytes:
            raise AssertionError("nothing may be sent")

    with pytest.raises(FirmwareDecodeError, match="extension unit id 0"):
        read_meetup(Node())  # type: ignore[arg-type]


def test_the_ioctl_number_follows_the_struct_size() -> None:
    import ctypes

    from agent.collectors.usbfw.nodes import UVCIOC_CTRL_QUERY_NATIVE, _XuQuery
    from agent.collectors.usbfw.requests import UVCIOC_CTRL_QUERY

    assert ctypes.sizeof(_XuQuery) == 16 and UVCIOC_CTRL_QUERY_NATIVE == UVCIOC_CTRL_QUERY  # LP64
    assert 0xC0000000 | (12 << 16) | (ord("u") << 8) | 0x21 == 0xC00C7521  # what 32-bit would send


def test_one_bad_recording_does_not_lose_the_others(tmp_path: Path) -> None:
    from agent.discovery.usb_replay import ReplaySources

    bar_as_video = copy.deepcopy(scribe_recording())
    bar_as_video["UsbDevices"][0]["Model"] = 0x089B  # a Rally Bar's id on a video4linux recording
    (tmp_path / "bar.json").write_text(json.dumps(bar_as_video))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "scribe.json").write_text(json.dumps(scribe_recording()))
    sources = ReplaySources([tmp_path / "bar.json", tmp_path / "broken.json", tmp_path / "scribe.json"])
    result = asyncio.run(sources.run(ScanContext(CATALOG, NOW)))
    products = {o.product: o for o in result.observations}
    assert products["Scribe"].firmware == "1.1.2"
    # The bar has no Sync interface in a video recording: a note, not a crash.
    assert any(i.code == "sync-interface-unavailable" for i in products["Rally Bar"].health)
    assert [e.target for e in result.errors] == [str(tmp_path / "broken.json")]
