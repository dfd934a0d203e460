"""The mDNS collector as a pure function: resolved services → one observation per host."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.catalog import load_catalog
from agent.collectors.mdns_service import (
    MAX_BINARY_SHOWN,
    MAX_TXT_KEYS,
    MAX_TXT_TEXT,
    ResolvedService,
    binary_marker,
    group_by_host,
    is_binary,
    observe_host,
    observe_hosts,
    read_txt,
)
from agent.model import Device, SerialSource, Severity, Transport
from agent.sanitize import MASK

NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
CATALOG = load_catalog()
BAR_HOST = "RallyBar-1L5V32.local."


def service(
    name: str = "Rally Bar Oslo",
    service_type: str = "_https._tcp.local.",
    *,
    server: str | None = BAR_HOST,
    addresses: tuple[str, ...] = ("192.0.2.10",),
    port: int | None = 443,
    txt: dict[bytes, bytes | None] | None = None,
    missing: tuple[str, ...] = (),
) -> ResolvedService:
    return ResolvedService(
        service_type=service_type,
        name=f"{name}.{service_type}",
        server=server,
        addresses=addresses,
        port=port,
        txt=txt or {},
        missing=missing,
    )


def observe(*services: ResolvedService):  # type: ignore[no-untyped-def]
    return observe_host(list(services), CATALOG, NOW)


def data_notes(obs) -> list[str]:  # type: ignore[no-untyped-def]
    return [i.message for i in obs.health if i.code == "mdns-data"]


# --------------------------------------------------------------------------- identification


def test_collabos_host_name_identifies_a_rally_bar_without_txt() -> None:
    obs = observe(service())
    assert obs.product == "Rally Bar"
    assert obs.model == "VR0019"  # the catalog's model for the product
    assert obs.vendor == "Logitech"
    assert obs.transport is Transport.MDNS and obs.source == "mdns"
    assert obs.address == "192.0.2.10"
    assert obs.observed_at == NOW
    assert obs.attributes["identified_by"] == "host-name"
    assert obs.attributes["host"] == BAR_HOST
    assert obs.attributes["port"] == 443
    assert obs.attributes["service_type"] == "_https._tcp.local."
    assert obs.attributes["instance"] == "Rally Bar Oslo"
    assert obs.serial is None and obs.serial_source is None and obs.firmware is None
    assert obs.health == []


@pytest.mark.parametrize(
    "host, product",
    [
        ("RallyBarMini-2K9X11.local.", "Rally Bar Mini"),
        ("rallybarhuddle-ab12.local.", "Rally Bar Huddle"),  # host names are case-insensitive
        ("TapIP-0Q1W2E.local.", "Tap IP"),
        ("RallyBar-1L5V32-printer.local.", None),  # the pattern is anchored at the end
        ("MyRallyBar-1L5V32.local.", None),  # … and at the start
    ],
)
def test_host_name_patterns_come_from_the_catalog(host: str, product: str | None) -> None:
    assert observe(service(server=host)).product == product


def test_txt_model_serial_and_firmware() -> None:
    obs = observe(
        service(
            server="meeting-room.local.", txt={b"model": b"VR0019", b"sn": b"2313FD1N08Z2", b"fw": b"1.9.556"}
        )
    )
    assert obs.product == "Rally Bar"
    assert obs.attributes["identified_by"] == "model"
    assert obs.model == "VR0019"
    assert obs.serial == "2313FD1N08Z2"
    assert obs.serial_source is SerialSource.MDNS_TXT
    assert obs.serial_label_grade is True
    assert obs.firmware == "1.9.556" and obs.firmware_source == "mdns-txt"


def test_txt_keys_are_case_insensitive_and_the_first_occurrence_counts() -> None:
    obs = observe(
        service(
            server="x.local.", txt={b"MODEL": b"VR0019", b"Model": b"other", b"SerialNumber": b"2313FD1N08Z2"}
        )
    )
    assert obs.product == "Rally Bar" and obs.serial == "2313FD1N08Z2"
    assert obs.attributes["txt"] == {"MODEL": "VR0019", "SerialNumber": "2313FD1N08Z2"}
    assert any("'Model' appears twice" in n for n in data_notes(obs))


def test_a_serial_of_an_unidentified_device_is_not_label_grade() -> None:
    obs = observe(service(server="printer.local.", txt={b"ty": b"HP LaserJet 400", b"sn": b"CNB1234567"}))
    assert obs.product is None
    assert obs.serial == "CNB1234567" and obs.serial_source is SerialSource.MDNS_TXT
    assert obs.serial_label_grade is False


def test_a_repaired_serial_is_not_label_grade_and_says_so() -> None:
    obs = observe(service(txt={b"serial": b"2313FD1N\xff8Z2"}))
    assert obs.product == "Rally Bar"
    assert obs.serial is not None and obs.serial_label_grade is False
    assert any("serial was not valid UTF-8" in n for n in data_notes(obs))


def test_a_placeholder_serial_is_dropped_with_a_note() -> None:
    obs = observe(service(txt={b"sn": b"0000000000"}))
    assert obs.serial is None and obs.serial_source is None
    assert any("'sn' holds a placeholder" in n for n in data_notes(obs))


def test_an_unknown_printer_is_observed_with_its_vendor_and_no_product() -> None:
    obs = observe(
        service(
            "Office printer",
            "_ipp._tcp.local.",
            server="NPI2A3B4C.local.",
            port=631,
            txt={b"ty": b"HP LaserJet 400 M401dn", b"rp": b"ipp/print"},
        )
    )
    assert obs.product is None
    assert obs.vendor == "HP"
    assert obs.model == "HP LaserJet 400 M401dn"
    assert "identified_by" not in obs.attributes
    assert obs.health == []
    assert Device.from_observation(obs).product == "Unknown device"


def test_an_unknown_logitech_device_gets_a_note() -> None:
    obs = observe(service(server="widget.local.", txt={b"ty": b"Logitech Widget 9000"}))
    assert obs.product is None and obs.vendor == "Logitech"
    assert [i.code for i in obs.health] == ["unknown-product"]
    assert obs.health[0].severity is Severity.INFO


def test_a_logitech_product_name_in_a_txt_value_identifies_it() -> None:
    obs = observe(service(server="room.local.", txt={b"product": b"Logitech Rally Bar Mini"}))
    assert obs.product == "Rally Bar Mini"
    assert obs.model == "Logitech Rally Bar Mini"  # what the device said, kept


def test_the_instance_name_does_not_identify_a_product() -> None:
    obs = observe(service("Logitech Rally Bar", server="something.local."))
    assert obs.product is None


# --------------------------------------------------------------------------- combining


def test_services_of_one_host_make_one_observation() -> None:
    https = service(txt={b"fw": b"1.9.556"})
    http = service(
        service_type="_http._tcp.local.",
        port=80,
        server="rallybar-1l5v32.local.",
        addresses=("192.0.2.10", "fd00::10"),
    )
    other = service("Other bar", server="RallyBar-9Z9Z9Z.local.", addresses=("192.0.2.11",))
    observations = observe_hosts([https, other, http], CATALOG, NOW)
    # Host names compare case-insensitively; the primary service's spelling is shown.
    assert [o.attributes["host"] for o in observations] == [
        "rallybar-1l5v32.local.",
        "RallyBar-9Z9Z9Z.local.",
    ]
    bar = observations[0]
    assert bar.product == "Rally Bar" and bar.firmware == "1.9.556"
    assert [s["service_type"] for s in bar.attributes["services"]] == [
        "_http._tcp.local.",
        "_https._tcp.local.",
    ]
    assert [s["port"] for s in bar.attributes["services"]] == [80, 443]
    assert bar.attributes["addresses"] == ["192.0.2.10", "fd00::10"]
    # The primary service is the one whose TXT identified the unit, else the first.
    assert bar.attributes["port"] == 80


def test_the_service_carrying_the_model_is_the_primary_one() -> None:
    obs = observe(service(service_type="_http._tcp.local.", port=80), service(txt={b"md": b"VR0019"}))
    assert obs.attributes["service_type"] == "_https._tcp.local." and obs.attributes["port"] == 443


def test_without_a_host_name_services_group_by_address() -> None:
    groups = group_by_host(
        [
            service(server=None),
            service("b", server=None),
            service("c", server=None, addresses=("192.0.2.99",)),
        ]
    )
    assert sorted(len(g) for g in groups) == [1, 2]


@pytest.mark.parametrize(
    "addresses, server, expected",
    [
        (("fd00::10", "192.0.2.10"), BAR_HOST, "192.0.2.10"),  # IPv4 first, wherever it is
        (("fd00::10",), BAR_HOST, "RallyBar-1L5V32.local"),  # else the host name
        (("fd00::10",), None, "fd00::10"),
        ((), BAR_HOST, "RallyBar-1L5V32.local"),
    ],
)
def test_address(addresses: tuple[str, ...], server: str | None, expected: str) -> None:
    assert observe(service(addresses=addresses, server=server)).address == expected


def test_a_service_without_an_address_is_observed_by_host_name_with_a_note() -> None:
    obs = observe(service(addresses=(), missing=("address",)))
    assert obs.address == "RallyBar-1L5V32.local" and obs.product == "Rally Bar"
    assert data_notes(obs) == ["Rally Bar Oslo._https._tcp.local.: no address answer in time"]


# --------------------------------------------------------------------------- TXT values


def test_binary_oversized_secret_and_boolean_values() -> None:
    obs = observe(
        service(
            txt={
                b"bin": bytes(range(40)),
                b"long": b"y" * 250,
                b"password": b"hunter2",
                b"auth_token": b"abc",
                b"flag": None,
                b"empty": b"",
                b"padded": b"abc\x00\x00",
                b"naive": "naïve café".encode(),
            }
        )
    )
    txt = obs.attributes["txt"]
    assert txt["bin"] == f"<binary 40 bytes: {bytes(range(MAX_BINARY_SHOWN)).hex()}…>"
    assert txt["long"] == "y" * MAX_TXT_TEXT + "…<truncated, 250 bytes>"
    assert txt["password"] == MASK and txt["auth_token"] == MASK
    assert txt["flag"] is True and txt["empty"] == ""
    assert txt["padded"] == "abc" and txt["naive"] == "naïve café"
    assert "hunter2" not in json.dumps(obs.attributes)
    # Every repair of the service is one line (one note) for that target.
    notes = data_notes(obs)
    assert len(notes) == 1
    assert "TXT 'bin' is binary (40 bytes, shown as hex)" in notes[0]
    assert "TXT 'long' was cut from 250 bytes" in notes[0]
    assert all(i.severity is Severity.INFO for i in obs.health)


@pytest.mark.parametrize(
    "value, binary",
    [
        (b"1.9.556", False),
        (b"", False),
        (b"two\nlines", False),
        (b"abc\x00\x00", False),
        ("会议室".encode(), False),
        (b"\xff\xfe", True),
        (b"a\x01b", True),
        (b"a\x00b", True),
        ("x\u0085y".encode(), True),
        (b"\x7f", True),
    ],
)
def test_is_binary(value: bytes, binary: bool) -> None:
    assert is_binary(value) is binary


def test_binary_marker_of_a_short_value() -> None:
    assert binary_marker(b"\xc3") == "<binary 1 byte: c3>"


def test_too_many_keys_and_an_empty_key() -> None:
    txt = {f"k{i}".encode(): b"v" for i in range(MAX_TXT_KEYS + 6)}
    view = read_txt({b"": b"orphan", **txt})
    assert len(view.shown) == MAX_TXT_KEYS - 1
    assert "a TXT entry with an empty key was ignored" in view.repairs
    assert f"7 TXT keys beyond the first {MAX_TXT_KEYS} were dropped" in view.repairs


def test_an_empty_txt_record_is_not_a_repair() -> None:
    # RFC 6763 §6.1: an empty TXT record is one zero-length string (avahi sends it so),
    # which zeroconf reads as the key b"" without a value.
    view = read_txt({b"": None})
    assert view.shown == {} and view.repairs == []


def test_a_key_that_is_not_utf8_is_repaired_and_noted() -> None:
    view = read_txt({b"k\xffy": b"v"})
    assert view.shown == {"k\ufffdy": "v"}
    assert view.repairs == ["TXT key 'k\ufffdy' was not valid UTF-8 (repaired)"]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "instance, host",
    [
        ("会议室 Rally Bar", "会议室-1.local."),
        ("Переговорная 4.12", "переговорная.local."),
        ("🎥 Huddle ☕", "huddle.local."),
        ("Salle de réunion «Été»", "salle.local."),
    ],
)
def test_names_in_any_script_are_kept_as_they_are(instance: str, host: str) -> None:
    obs = observe(service(instance, server=host))
    assert obs.attributes["instance"] == instance
    assert obs.attributes["host"] == host
    assert obs.health == []


def test_undecodable_names_are_repaired_and_noted() -> None:
    # zeroconf decodes DNS labels with replacement: bad bytes arrive as U+FFFD.
    obs = observe(service("Bad \ufffd\ufffd name", server="h\ufffdst.local."))
    assert obs.attributes["instance"] == "Bad \ufffd\ufffd name"
    notes = data_notes(obs)
    assert len(notes) == 1
    assert "instance name was not valid UTF-8 (repaired)" in notes[0]
    assert "host name was not valid UTF-8 (repaired)" in notes[0]


def test_control_characters_in_names_are_removed_and_noted() -> None:
    obs = observe(service("Bell\x07 bar"))
    assert obs.attributes["instance"] == "Bell bar"
    assert "instance name held control characters (removed)" in data_notes(obs)[0]


# --------------------------------------------------------------------------- never raises

_raw_txt = st.dictionaries(st.binary(max_size=70), st.none() | st.binary(max_size=300), max_size=80)
_names = st.text(max_size=80)


def _control_free(text: str) -> bool:
    return not any(unicodedata.category(ch)[0] == "C" for ch in text)


@settings(max_examples=300, deadline=None)
@given(
    txt=_raw_txt,
    instance=_names,
    host=st.none() | _names,
    addresses=st.lists(st.ip_addresses().map(str), max_size=3),
)
def test_any_txt_and_names_give_one_clean_observation(
    txt: dict[bytes, bytes | None], instance: str, host: str | None, addresses: list[str]
) -> None:
    obs = observe(service(instance or "x", server=host, addresses=tuple(addresses), txt=txt))
    shown = obs.attributes["txt"]
    assert len(shown) <= MAX_TXT_KEYS
    for key, value in shown.items():
        assert isinstance(key, str) and _control_free(key)
        assert value is True or (
            isinstance(value, str)
            and _control_free(value)
            and len(value) <= MAX_TXT_TEXT + 2 * MAX_BINARY_SHOWN + 40
        )
    for text in (obs.serial, obs.firmware, obs.model, obs.attributes["instance"], obs.address):
        assert text is None or _control_free(text)
    assert len([i for i in obs.health if i.code == "mdns-data"]) <= 1
    json.dumps(Device.from_observation(obs).to_dict())  # the JSON output never breaks
