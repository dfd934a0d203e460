"""The CollabOS Device Management API's replies and gate (agent.collectors.collabos_api), on
replies built here from the documented shapes (issue [10/16]): a Rally Bar Mini in appliance
mode with a Tap IP, a Sight and a mic pod; the spec's looser types; broken envelopes; every
request the gate must refuse; and fuzzing that only CollabosError ever comes out."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.catalog import load_catalog
from agent.collectors.collabos_api import (
    MAX_DEPTH,
    MAX_INSIGHT_KEYS,
    MAX_ITEMS,
    MAX_REPLY_BYTES,
    READS,
    SIGNIN,
    CollabosError,
    as_bool,
    as_int,
    as_usb_id,
    check_collabos_request,
    observe,
    parse_reply,
)
from agent.identity import merge_readings
from agent.inventory import devices_from_observations, merge_rules
from agent.model import SerialSource, Transport
from agent.readonly import ReadOnlyViolation

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
CATALOG = load_catalog()

DEVICE = {
    "collabOSVersion": "1.13.210",
    "hwVersion": "3",
    "serialNumber": "2230FDN0ABC1",
    "modelName": "VR0020",
    "systemName": "RallyBarMini-4K2L7Q",
    "deviceName": "Fjord bar",
    "ethernetMAC": "6C:C3:B2:00:11:22",
    "wifiMAC": "",
    "deviceConfiguration": "DEVICE",
    "serviceProvider": "MTR",
}
PERIPHERALS = {
    "remotes": [],
    "sights": [
        {"id": "1", "cameraConnected": True, "microphoneConnected": "false", "firmwareVersion": "0.5.0"}
    ],
    "displays": [],
    "ipControllers": [
        {
            "name": "Tap IP",
            "manufacturer": "Logitech",
            "firmwareVersion": "1.6.20",
            "serialNumber": "2229LZ0TAP01",
            "ipAddress": "10.0.4.31",
            "deviceName": "Fjord tap",
        }
    ],
    "usbControllers": [],
    "usbDevices": [
        {
            "id": 7,
            "name": "Rally Mic Pod",
            "vid": "0x046d",
            "pid": "2251",
            "audioFirmwareVersion": "2.1.3",
            "isAudioDevice": "true",
        }
    ],
}


def envelope(result: Any, code: Any = 200, message: str = "") -> bytes:
    return json.dumps({"code": code, "message": message, "result": result}).encode()


def test_a_rally_bar_mini_with_tap_ip_sight_and_mic_pod():
    device = parse_reply(200, envelope(DEVICE), what="10.0.4.30 GET /api/v1/device")
    peripherals = parse_reply(200, envelope(PERIPHERALS), what="10.0.4.30 GET /api/v1/peripherals")
    insights = {"device": {"deviceState": "IN_USE"}}
    bar, tap = observe("10.0.4.30", device, peripherals, CATALOG, NOW, insights=insights)
    assert (bar.product, bar.model, bar.serial, bar.serial_source, bar.serial_label_grade) == (
        "Rally Bar Mini",
        "VR0020",
        "2230FDN0ABC1",
        SerialSource.COLLABOS_API,
        True,
    )
    assert (bar.firmware, bar.firmware_source, bar.transport, bar.state) == (
        "1.13.210",
        "collabos-api",
        Transport.HTTPS,
        "in_use",
    )
    assert bar.attributes["mac_addresses"] == ["6C:C3:B2:00:11:22"]  # the empty wifiMAC dropped
    assert bar.attributes["host"] == "RallyBarMini-4K2L7Q"
    sight, pod = bar.children
    assert (sight.product, sight.firmware) == ("Sight", "0.5.0")
    assert [i.code for i in sight.health] == ["sight-microphone-disconnected"]  # "false" as a string
    assert (pod.vendor_id, pod.product_id, pod.components) == (0x046D, 2251, {"audio": "2.1.3"})
    assert (tap.product, tap.address, tap.serial, tap.firmware) == (
        "Tap IP",
        "10.0.4.31",
        "2229LZ0TAP01",
        "1.6.20",
    )
    assert tap.serial_source == SerialSource.COLLABOS_API and tap.attributes["paired_with"] == "10.0.4.30"


def test_the_api_channel_outranks_mdns_when_units_merge():
    device = parse_reply(200, envelope(DEVICE), what="x")
    observations = observe("10.0.4.30", device, {}, CATALOG, NOW)
    readings = devices_from_observations(observations, None, CATALOG)
    mdns = readings[0].clone()
    mdns.transport, mdns.sources, mdns.firmware, mdns.firmware_source = (
        Transport.MDNS,
        ["mdns"],
        "1.13",
        "mdns-txt",
    )
    mdns.serial_source = SerialSource.MDNS_TXT
    [unit] = merge_readings([mdns, readings[0]], merge_rules(CATALOG))
    assert (unit.firmware, unit.provenance["firmware"].collector) == ("1.13.210", "collabos-api")


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (200, b"<html>", "not JSON"),
        (200, b"[1, 2]", "not a {code, message, result} object"),
        (200, envelope({}, code=500, message="boom"), "code 500: boom"),
        (500, envelope({}), "HTTP 500, code 200"),
        (200, envelope([1]), "result is not an object"),
        (200, b"x" * (MAX_REPLY_BYTES + 1), "more than"),
        (200, ("[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2)).encode(), "nests deeper"),
    ],
)
def test_broken_replies_are_clear_errors(status: int, body: bytes, message: str):
    with pytest.raises(CollabosError, match=message.replace("{", r"\{").replace("}", r"\}")) as caught:
        parse_reply(status, body, what="10.0.4.30 GET /api/v1/device")
    assert str(caught.value).startswith("10.0.4.30 GET /api/v1/device: ") and not caught.value.auth


@pytest.mark.parametrize(
    ("status", "code"), [(401, 401), (200, 401), (200, "401")], ids=["http", "body", "string"]
)
def test_a_refused_sign_in_or_expired_token_is_an_auth_error(status: int, code: Any):
    with pytest.raises(CollabosError, match="refused") as caught:
        parse_reply(
            status, envelope({}, code=code, message="Invalid Credentials"), what="h POST /api/v1/signin"
        )
    assert caught.value.auth


def test_lenient_values():
    assert [as_int(v) for v in (5, "5", " 7 ", "x", True, 2.0, 2.5, None)] == [
        5,
        5,
        7,
        None,
        None,
        2,
        None,
        None,
    ]
    assert [as_usb_id(v) for v in ("0x046d", "1133", 1133, "0x1FFFF", -1, "046d")] == [
        0x046D,
        1133,
        1133,
        None,
        None,
        None,
    ]
    assert [as_bool(v) for v in (True, "false", "TRUE", 1, 0, "maybe", 2, 1.0)] == [
        True,
        False,
        True,
        True,
        False,
        None,
        None,
        None,
    ]


def test_the_gate_allows_the_sign_in_and_the_four_reads_only():
    check_collabos_request(("POST", SIGNIN, {"username": "admin", "password": "x"}))
    for path in READS:
        check_collabos_request(("GET", path, None))
    forbidden = [
        ("GET", SIGNIN),
        ("POST", "/api/v1/device"),
        ("PUT", "/api/v1/device"),
        ("DELETE", "/api/v1/device"),
        ("PATCH", "/api/v1/peripherals"),
        ("GET", "/api/v1/device/reboot"),
        ("POST", "/api/v1/device/reboot"),
        ("GET", "/api/v1/device?x=1"),
        ("GET", "/api/v1/../v1/device"),
        ("GET", "/api/v1/DEVICE"),
        ("GET", "/api/v2/device"),
        ("get", "/api/v1/device"),
        ("GET", "/api/v1/signout"),
        ("POST", "/api/v1/settings"),
        ("GET", ""),
    ]
    for method, path in forbidden:
        with pytest.raises(ReadOnlyViolation):
            check_collabos_request((method, path, None))
    for request in [
        ("POST", SIGNIN, None),
        ("POST", SIGNIN, {"username": "admin"}),
        ("POST", SIGNIN, {"username": "admin", "password": "x", "reboot": True}),
        ("POST", SIGNIN, {"username": "admin", "password": 1}),
        ("GET", "/api/v1/device", {"a": 1}),
        ("GET", "/api/v1/device"),
        ("GET", b"/api/v1/device", None),
        "GET /api/v1/device",
    ]:
        with pytest.raises(ReadOnlyViolation):
            check_collabos_request(request)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(status=st.sampled_from([200, 401, 429, 500]), doc=json_values)
def test_any_reply_is_a_result_or_a_clear_error(status: int, doc: Any):
    try:
        result = parse_reply(status, json.dumps(doc).encode(), what="h GET /api/v1/device")
    except CollabosError:
        return
    assert isinstance(result, dict)


shapes = st.fixed_dictionaries(
    {},
    optional={
        key: json_values for key in (*DEVICE, "sights", "ipControllers", "usbControllers", "usbDevices")
    },
)


@settings(max_examples=300, deadline=None)
@given(device=shapes, peripherals=shapes)
def test_any_result_of_any_shape_makes_observations(device: dict[str, Any], peripherals: dict[str, Any]):
    bar, *taps = observe("10.0.4.30", device, peripherals, CATALOG, NOW)
    assert bar.address == "10.0.4.30" and all(t.attributes["paired_with"] == "10.0.4.30" for t in taps)
    json.dumps([o.attributes for o in (bar, *bar.children, *taps)], default=str)  # nothing unserialisable


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80) | st.from_regex(r"\[?[0-9a-f:.]{1,40}\]?(:[0-9]{1,6})?", fullmatch=True))
def test_any_host_text_is_a_host_or_one_value_error(text: str):
    from agent.discovery.collabos import CollabosHost

    try:
        host = CollabosHost.of(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert 1 <= host.port <= 65535 and host.host and not any(c.isspace() for c in host.host)
    assert CollabosHost.of(host.address) == host  # what the inventory shows reads back the same


@settings(max_examples=300, deadline=None)
@given(header=st.none() | st.text(max_size=60), token=st.text(max_size=200))
def test_retry_after_and_token_lifetime_are_bounded_for_any_input(header: str | None, token: str):
    from agent.discovery.collabos import TOKEN_LIFETIME, retry_after, token_lifetime

    assert 1.0 <= retry_after(header) <= 3600.0
    assert 0 < token_lifetime(token) <= TOKEN_LIFETIME


def test_a_hostile_device_cannot_flood_the_inventory_or_choose_odd_addresses():
    tap = {"serialNumber": "2246FDA0B4C8", "firmwareVersion": "1.6.20"}
    peripherals = {
        "ipControllers": [{**tap, "ipAddress": "<script>"}, {**tap, "ipAddress": "10.0.0.2/sight/0"}]
        + [{**tap, "ipAddress": f"10.1.{i // 250}.{i % 250}"} for i in range(25_000)],
        "usbDevices": [{"id": str(i), "vid": "0x046d", "pid": "0x0001"} for i in range(50_000)],
    }
    insights = {
        "room": {
            "occupancyCount": 3,
            "temperature": float("nan"),
            "co2": float("inf"),
            "note": "a\x00b\x1b[31m",
            "big": "x" * 900_000,
            "nested": {"a": 1},
            **{f"k{i}": i for i in range(100)},
        }
    }
    bar, *taps = observe("10.0.4.30", DEVICE, peripherals, CATALOG, NOW, insights=insights)
    assert len(taps) == MAX_ITEMS and len(bar.children) == MAX_ITEMS
    assert [t.address for t in taps[:3]] == ["10.0.4.30/tap-ip/0", "10.0.4.30/tap-ip/1", "10.1.0.0"]
    assert any(i.code == "peripherals-truncated" for i in bar.health)
    room = bar.attributes["insights_room"]
    assert len(room) <= MAX_INSIGHT_KEYS and room["occupancyCount"] == 3
    assert "temperature" not in room and "co2" not in room and "nested" not in room
    assert all(isinstance(v, bool | int | float) or (len(v) <= 64 and v.isprintable()) for v in room.values())
    json.dumps(bar.attributes, allow_nan=False)  # what --json and the API print stays JSON
