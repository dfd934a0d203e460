"""GetDeviceInfo JSON → observations: the recorded bar, derived documents, hostile input."""

from __future__ import annotations

import contextlib
import copy
import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.collectors.sync import read_device_info
from agent.collectors.sync.device_info import (
    DEVICE_STATES,
    MAX_DEPTH,
    MAX_JSON_CHARS,
    _text,
    parse_device_info,
)
from agent.collectors.sync.errors import DeviceInfoError
from agent.collectors.sync.replay import ReplayTransport
from agent.model import Device, SerialSource, Severity
from agent.sanitize import clean_text
from tests.sync_captures import BAR_SERIAL, SIGHT_SERIAL, Capture

FUZZ = settings(max_examples=200, deadline=None)
NOW = datetime(2024, 11, 13, 10, 32, 5, tzinfo=UTC)


def recorded_document() -> dict[str, Any]:
    return Capture().device_info()


def parse(document: dict[str, Any] | str | bytes, **kw: Any):
    text = json.dumps(document) if isinstance(document, dict) else document
    return parse_device_info(text, address="2-1.1", now=NOW, **kw)


def issues(obs) -> dict[str, str]:
    return {i.code: i.message for i in obs.health}


# --------------------------------------------------------------------------- the recorded bar


def test_recorded_rally_bar_end_to_end() -> None:
    transport = ReplayTransport(Capture().recording())
    bar = read_device_info(transport, address="2-1.1", now=NOW)
    assert (bar.product, bar.model, bar.vendor) == ("Rally Bar", "VR0019", "Logitech")
    assert bar.serial == BAR_SERIAL
    assert bar.serial_source is SerialSource.SYNC_INTERFACE and bar.serial_label_grade
    assert (bar.firmware, bar.firmware_source) == ("1.9.556", "sync-interface")
    assert bar.components == {
        "manifest": "10.12.556",
        "osv": "0.917.642",
        "av": "1.0.763",
        "ptv": "1.0.80",
        "zfv": "1.0.79",
        "hkv": "1.1.79",
    }
    assert bar.state == "idle"  # status 2
    assert bar.health == []
    assert (bar.source, bar.address, bar.observed_at) == ("sync-interface", "2-1.1", NOW)
    assert bar.attributes["update_status"] == "current"
    assert bar.attributes["peripheral_counts"] == {
        "camera": {"expected": 1, "actual": 1},
        "micPod": {"expected": 1, "actual": 1},
        "remote": {"expected": 1, "actual": 1},
    }
    assert bar.attributes["sync_exchange"] == {
        "attempts": 1,
        "read_timeouts": 0,
        "unsolicited": 0,
        "closed": True,
    }
    # unknown fields are kept
    assert bar.attributes["type"] == "HostedKong"
    assert bar.attributes["hw"] == "4.4"
    assert bar.attributes["displays"] == [
        {"name": "Built-in Screen", "refreshRate": 60, "resolution": "1920 x 1080"}
    ]

    sight, mic_pod, remote = bar.children
    assert (sight.product, sight.model, sight.serial) == ("Sight", "VU0067", SIGHT_SERIAL)
    assert sight.serial_label_grade and sight.serial_source is SerialSource.SYNC_INTERFACE
    assert (sight.firmware, sight.state) == ("0.5.0", "online")
    assert sight.components["vv"] == "0.901.50"
    # the camera peripheral is the Sight itself, not a second unit
    assert sight.attributes["peripheral"]["group"] == "camera"
    assert sight.attributes["peripheral"]["devId"] == "1004"

    assert (mic_pod.product, mic_pod.firmware, mic_pod.state) == ("Rally Mic Pod", "2.1.3", "online")
    assert mic_pod.serial is None and mic_pod.vendor == "Logitech"
    assert mic_pod.attributes["uid"] == "33" and mic_pod.address == "2-1.1/micPod/33"
    assert (remote.product, remote.firmware, remote.state) == ("Remote Controller", "2.5", "offline")
    assert remote.vendor is None  # vid 0x01DA

    device = Device.from_observation(bar)
    assert device.identity == f"serial:Rally Bar:{BAR_SERIAL}"
    assert json.dumps(device.to_dict())  # everything kept is JSON-serializable


# --------------------------------------------------------------------------- derived documents


def test_other_serials() -> None:
    doc = recorded_document()
    bar, sight = doc["payload"]["devices"]
    bar["serial"], sight["serial"] = "2402AB1C23D4", "2410QQ0000Z9"
    bar["peripherals"]["camera"]["data"][0]["uid"] = "2410QQ0000Z9"
    obs = parse(doc)
    assert obs.serial == "2402AB1C23D4"
    assert [c.serial for c in obs.children] == ["2410QQ0000Z9", None, None]
    assert obs.children[0].attributes["peripheral"]["uid"] == "2410QQ0000Z9"


def test_missing_mic_pod_is_a_health_issue_naming_it() -> None:
    doc = recorded_document()
    doc["payload"]["devices"][0]["peripherals"]["micPod"]["count"] = {"expected": 3, "actual": 1}
    obs = parse(doc)
    assert issues(obs) == {"peripheral-missing": "2 of 3 expected Mic Pods missing: Sync reports 1 connected"}
    assert obs.health[0].severity is Severity.WARNING


def test_missing_sight_and_remote() -> None:
    doc = recorded_document()
    bar = doc["payload"]["devices"][0]
    del doc["payload"]["devices"][1]
    bar["peripherals"]["camera"] = {"count": {"expected": 1, "actual": 0}, "data": []}
    bar["peripherals"]["remote"]["count"]["actual"] = 0
    bar["peripherals"]["tableHub"] = {"count": {"expected": 1, "actual": 0}}
    obs = parse(doc)
    messages = sorted(i.message for i in obs.health if i.code == "peripheral-missing")
    assert messages == [
        "1 of 1 expected camera missing: Sync reports 0 connected",
        "1 of 1 expected remote missing: Sync reports 0 connected",
        "1 of 1 expected table hub missing: Sync reports 0 connected",
    ]
    assert [c.product for c in obs.children] == ["Rally Mic Pod", "Remote Controller"]


def test_camera_peripheral_without_a_device_entry_is_its_own_child() -> None:
    doc = recorded_document()
    del doc["payload"]["devices"][1]
    obs = parse(doc)
    camera = obs.children[0]
    assert camera.attributes["peripheral_group"] == "camera"
    assert camera.attributes["uid"] == SIGHT_SERIAL
    assert camera.serial is None  # a uid is not a label serial
    assert camera.state == "online"  # isOnline: true


@pytest.mark.parametrize(("code", "word"), sorted(DEVICE_STATES.items()))
def test_device_status_words(code: int, word: str) -> None:
    doc = recorded_document()
    doc["payload"]["devices"][0]["status"] = code
    assert parse(doc).state == word


def test_out_of_range_status_is_unknown_and_kept() -> None:
    doc = recorded_document()
    doc["payload"]["devices"][0]["status"] = 42
    obs = parse(doc)
    assert obs.state == "unknown" and obs.attributes["status"] == 42


@pytest.mark.parametrize(
    ("update", "code", "severity"),
    [
        (8, "update-failed", Severity.WARNING),
        (1, "update-available", Severity.INFO),
        (4, "update-in-progress", Severity.INFO),
    ],
)
def test_update_status_becomes_a_health_issue(update: int, code: str, severity: Severity) -> None:
    doc = recorded_document()
    doc["payload"]["devices"][0]["updateStatus"] = update
    obs = parse(doc)
    assert [(i.code, i.severity) for i in obs.health] == [(code, severity)]


def test_unknown_model_is_kept_and_noted() -> None:
    doc = recorded_document()
    doc["payload"]["devices"][0]["model"] = "VR9999"
    obs = parse(doc)
    assert (obs.product, obs.model) == ("Unknown Logitech device", "VR9999")
    assert "VR9999 (Rally Bar) is not in the catalog" in issues(obs)["unknown-product"]


@pytest.mark.parametrize(
    ("serial", "code", "label_grade"),
    [
        (None, "serial-missing", False),
        ("000000000000", "sync-serial-placeholder", False),
        ("2313FD1N08Z2\x00junk", "sync-serial-nul-padded", False),
        ("  2313FD1N08Z2 ", None, True),
    ],
)
def test_bar_serial_problems(serial: str | None, code: str | None, label_grade: bool) -> None:
    doc = recorded_document()
    if serial is None:
        del doc["payload"]["devices"][0]["serial"]
    else:
        doc["payload"]["devices"][0]["serial"] = serial
    obs = parse(doc)
    assert obs.serial_label_grade is label_grade
    if code is None:
        assert obs.serial == "2313FD1N08Z2" and obs.health == []
    else:
        assert code in issues(obs)
    if serial is None or "0000" in serial:
        assert obs.serial is None and "serial-missing" in issues(obs)


def test_partial_and_malformed_entries_give_a_partial_result() -> None:
    doc = {
        "payload": {
            "devices": [
                {
                    "model": "VR0019",
                    "sw": 1.9,
                    "status": True,
                    "peripherals": {
                        "micPod": {"count": {"expected": "2", "actual": 1}, "data": ["pod"]},
                        "remote": [],
                        "camera": {"data": {"not": "a list"}},
                    },
                },
                "not a device",
                {"name": "Sight"},
            ]
        }
    }
    obs = parse(doc)
    assert obs.product == "Rally Bar" and obs.firmware is None and obs.state is None
    notes = sorted(i.message for i in obs.health if i.code == "sync-data-malformed")
    assert notes == [
        "payload.devices[0].sw is not text",
        "payload.devices[1] is not an object; skipped",
        "peripherals.camera.data is not a list",
        "peripherals.micPod.count is not two whole numbers",
        "peripherals.micPod.data[0] is not an object",
        "peripherals.remote is not an object",
    ]
    assert len(obs.children) == 1 and obs.children[0].product == "Unknown Logitech device"


def test_nan_and_infinity_are_dropped_not_fatal() -> None:
    text = json.dumps(recorded_document()).replace('"bat": 100', '"bat": NaN')
    obs = parse(text)
    assert obs.children[2].attributes["bat"] is None


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("", "not JSON"),
        ("{", "not JSON"),
        ("[]", "JSON list, not an object"),
        ("{}", "no 'payload' object"),
        ('{"payload": {"devices": []}}', "no 'payload.devices\\[0\\]'"),
        ('{"payload": {"devices": ["x"]}}', "no 'payload.devices\\[0\\]'"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[" * 100_000 + "]" * 100_000, "nests deeper"),
        ('{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), f"nests deeper than {MAX_DEPTH}"),
        (" " * (MAX_JSON_CHARS + 1), "over the cap"),
        ('{"payload": 1' + "9" * 5000 + "}", "not usable JSON"),
    ],
)
def test_unusable_documents_are_clear_errors(document: str | bytes, message: str) -> None:
    with pytest.raises(DeviceInfoError, match=message):
        parse(document)


def test_type_confusion_is_an_error_not_a_traceback() -> None:
    with pytest.raises(DeviceInfoError, match="must be text"):
        parse_device_info(42, address="x", now=NOW)  # type: ignore[arg-type]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_fuzz_arbitrary_text_raises_only_device_info_error(text: str | bytes) -> None:
    with contextlib.suppress(DeviceInfoError):
        parse_device_info(text, address="x", now=NOW)


@FUZZ
@given(st.data())
def test_fuzz_mutated_recorded_document_never_raises_anything_else(data: st.DataObject) -> None:
    doc = copy.deepcopy(_recorded())
    for _ in range(data.draw(st.integers(1, 5))):
        node: Any = doc
        path = []
        while isinstance(node, dict | list) and node and data.draw(st.integers(0, 3)):
            key = data.draw(
                st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node))))
            )
            path.append(key)
            parent, node = node, node[key]
        if path:
            parent[path[-1]] = data.draw(JSON)
    try:
        obs = parse_device_info(json.dumps(doc), address="x", now=NOW)
    except DeviceInfoError:
        return
    json.dumps(Device.from_observation(obs).to_dict())  # always serializable


@cache
def _recorded() -> dict[str, Any]:
    return recorded_document()  # decoded once; each example deep-copies it


@FUZZ
@given(st.text(max_size=40))
def test_fuzz_fast_text_path_equals_clean_text(value: str) -> None:
    assert _text(value)[0] == clean_text(value).value
