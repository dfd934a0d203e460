"""Fuzz: what USB room devices answer the firmware collectors (agent/collectors/usbfw/).

A camera, a hub or a Tap writes its own answers to UVC extension-unit queries and feature
reports, and its own UVC descriptors; a recording (``--replay``) is a file from elsewhere.
Documented behaviour: every decoder gives a version or :class:`FirmwareDecodeError`; the
extension-unit lookup gives a (possibly empty) map and never raises; a recording gives a
:class:`UdevRecording` or :class:`UdevRecordingError`, and a replayed node answers a query
from it or raises ``NodeFailed`` — nothing else, whatever the bytes.
"""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.collectors.usbfw.nodes import NodeFailed
from agent.collectors.usbfw.replay import ReplayVideoNode, UdevRecordingError, parse_udev_recording
from agent.collectors.usbfw.requests import (
    UVC_GET_CUR,
    UVC_GET_LEN,
    FirmwareDecodeError,
    UvcRequest,
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
from tests.fuzz import fuzz

DECODERS = (
    decode_scribe,
    decode_meetup,
    decode_meetup_eeprom,
    decode_tap_hdmi,
    decode_tap_presence,
    decode_rally_audio,
)


@fuzz(300)
@given(data=st.binary(max_size=600))
def test_every_decoder_gives_a_version_or_a_decode_error(data: bytes) -> None:
    for decode in DECODERS:
        try:
            version = decode(data)
        except FirmwareDecodeError as exc:
            assert str(exc)
            continue
        parts = version.split(".")
        assert 2 <= len(parts) <= 3 and all(p.isdigit() for p in parts), version
    try:
        text, state = decode_tablehub(data)
    except FirmwareDecodeError:
        pass
    else:
        assert text.isprintable() and 0 < len(text) <= 16 and 0 <= state < 1 << 32
    try:
        length = decode_control_length(data, low=4, high=1024, what="fuzz")
    except FirmwareDecodeError:
        pass
    else:
        assert 4 <= length <= 1024


@fuzz(300)
@given(data=st.binary(max_size=400))
def test_extension_unit_lookup_never_raises(data: bytes) -> None:
    found = xu_unit_ids(data)
    assert all(0 <= unit <= 255 for unit in found.values())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
ioctl_ids = st.builds(
    lambda unit, sel, query, data, length: (
        f"Ioctl:Request=0xc0107521,Unit=0x{unit:02x},Selector=0x{sel:02x},Query=0x{query:02x},"
        f"Data={base64.b64encode(data).decode()},Length=0x{length:x}"
    ),
    st.integers(0, 12),
    st.integers(0, 4),
    st.sampled_from([UVC_GET_LEN, UVC_GET_CUR, 0x01, 0x83]),
    st.binary(max_size=8),
    st.integers(0, 1100),
)
events = st.lists(
    st.fixed_dictionaries(
        {
            "Id": ioctl_ids
            | st.sampled_from(["ReadAttr:Attr=name", "ReadAttr:Attr=uevent"])
            | st.text(max_size=20)
        },
        optional={
            "Data": st.text(max_size=40) | st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()),
            "DataOut": st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()) | json_values,
            "Error": st.integers(-10, 10) | json_values,
        },
    ),
    max_size=8,
)
devices = st.fixed_dictionaries(
    {"Subsystem": st.just("video4linux")},
    optional={
        "Vendor": st.integers(-1, 70000) | json_values,
        "Model": st.integers(-1, 70000) | json_values,
        "Events": events | json_values,
    },
)


@fuzz(250)
@given(doc=st.fixed_dictionaries({"UsbDevices": st.lists(devices | json_values, max_size=3)}) | json_values)
def test_any_recording_replays_or_is_refused(doc: Any) -> None:
    try:
        recording = parse_udev_recording(doc)
    except UdevRecordingError as exc:
        assert str(exc)
        return
    node = ReplayVideoNode(recording)
    for request in (
        UvcRequest("scribe", 8, 1, UVC_GET_LEN, 2),
        UvcRequest("scribe", 8, 1, UVC_GET_CUR, 4),
    ):
        try:
            answer = node.query(request)
        except NodeFailed as exc:
            assert str(exc)
        else:
            assert len(answer) <= request.size
