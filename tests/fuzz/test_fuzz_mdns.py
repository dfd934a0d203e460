"""Fuzz: mDNS / DNS-SD answers → observations (agent/collectors/mdns_service.py).

TXT records arrive as wire bytes (length-prefixed strings, RFC 6763 §6) that zeroconf splits
into ``key=value`` pairs; the tests build random wire records (duplicates, empty keys, keys
without ``=``, huge and binary values, truncated length bytes), let zeroconf decode them as it
does for a real answer, and hand the result to the collector with random names, host names
and addresses. Documented behaviour: :func:`read_txt` "never raises"; every string shown is
cleaned, capped and free of control characters; secrets are masked; one observation per host.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import example, given
from hypothesis import strategies as st
from zeroconf import ServiceInfo

from agent.catalog import load_catalog
from agent.collectors.mdns_service import (
    MAX_BINARY_SHOWN,
    MAX_KEY_LEN,
    MAX_NAME_LEN,
    MAX_TXT_KEYS,
    MAX_TXT_TEXT,
    ResolvedService,
    binary_marker,
    group_by_host,
    is_binary,
    observe_hosts,
    read_txt,
)
from agent.sanitize import MASK, is_secret_key
from tests.fuzz import check_observation, fuzz, has_control_chars

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()
TYPE = "_https._tcp.local."
#: The catalog's own TXT key names, so identification paths are exercised too.
_KEYS = sorted(
    {
        *CATALOG.mdns_keys.model,
        *CATALOG.mdns_keys.serial,
        *CATALOG.mdns_keys.firmware,
        "password",
        "token",
        "md",
        "fn",
        "ty",
    }
)
_VALUES = st.sampled_from(
    [
        b"RallyBar",
        b"Rally Bar Mini",
        b"2313FD1N08Z2",
        b"N/A",
        b"1.9.556",
        b"",
        b"\x00\x00",
        b"\xff\xfe",
        "Møterom Ørsta".encode(),
    ]
)
_KEY_BYTES = st.one_of(
    st.sampled_from(_KEYS).map(str.encode),
    st.binary(max_size=70),
    st.sampled_from(_KEYS).map(lambda k: k.upper().encode()),
)
_VALUE_BYTES = st.one_of(_VALUES, st.binary(max_size=300), st.text(max_size=200).map(str.encode))
#: Longest value a length byte can describe, and longer (a malformed record).
HUGE = st.integers(200, 5_000).map(lambda n: b"v" * n)


@st.composite
def txt_wire(draw: st.DrawFn) -> bytes:
    """A TXT record as sent: a sequence of length-prefixed strings, some malformed."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 12))):
        entry = draw(
            st.one_of(
                st.tuples(_KEY_BYTES, _VALUE_BYTES).map(lambda kv: kv[0] + b"=" + kv[1]),
                _KEY_BYTES,  # a boolean attribute (no '=')
                st.tuples(_KEY_BYTES, st.just(b"=")).map(b"".join),  # empty value
                st.just(b"=" + b"orphan"),  # empty key
                st.just(b""),
            )
        )[:255]
        out.append(len(entry))
        out += entry
    if draw(st.integers(0, 4)) == 0:  # more keys than are kept
        for i in range(draw(st.integers(MAX_TXT_KEYS - 2, 2 * MAX_TXT_KEYS))):
            entry = b"k%d=v" % i
            out += bytes([len(entry)]) + entry
    if draw(st.booleans()):
        out.append(draw(st.integers(1, 255)))  # a length byte past the end
        out += draw(st.binary(max_size=8))
    return bytes(out)


def _decoded(wire: bytes) -> dict[bytes, bytes | None]:
    """What zeroconf makes of a TXT record (agent/discovery/mdns.py: dict(info.properties))."""
    info = ServiceInfo(TYPE, "x." + TYPE, port=443, properties=wire)
    return dict(info.properties) if info.text else {}


_TXT_MAPS = st.one_of(
    txt_wire().map(_decoded),
    st.dictionaries(_KEY_BYTES, st.none() | _VALUE_BYTES | HUGE, max_size=12),
    st.integers(MAX_TXT_KEYS - 2, 3 * MAX_TXT_KEYS).map(
        lambda n: {b"key%d" % i: b"value" if i % 2 else None for i in range(n)}
    ),
)
_NAMES = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["RallyBar-1L5V32", "Oslo 4.12 display", "\ufffd\ufffd", "a\x00b", "", ".", "x" * 300]),
)
_ADDRESSES = st.lists(st.one_of(st.ip_addresses().map(str), st.text(max_size=20)), max_size=4)


@st.composite
def services(draw: st.DrawFn) -> ResolvedService:
    instance = draw(_NAMES)
    server = draw(st.none() | _NAMES.map(lambda n: n + ".local."))
    return ResolvedService(
        service_type=draw(st.sampled_from([TYPE, "_http._tcp.local.", "", "_x._udp.local."])),
        name=instance + "." + TYPE if draw(st.booleans()) else instance,
        server=server,
        addresses=tuple(draw(_ADDRESSES)),
        port=draw(st.none() | st.integers(0, 65535)),
        txt=draw(_TXT_MAPS),
        missing=tuple(draw(st.lists(st.sampled_from(["address", "txt"]), max_size=2, unique=True))),
    )


def _check_shown(shown: dict[str, str | bool]) -> None:
    assert len(shown) <= MAX_TXT_KEYS
    marker_max = len(binary_marker(b"\x00" * (MAX_BINARY_SHOWN + 1))) + 10
    for key, value in shown.items():
        assert 0 < len(key) <= MAX_KEY_LEN and not has_control_chars(key)
        if value is True:
            continue
        assert isinstance(value, str) and not has_control_chars(value)
        assert len(value) <= max(MAX_TXT_TEXT + 40, marker_max), value[:60]
        if is_secret_key(key) and value:
            assert value == MASK


@fuzz(100)
@given(_TXT_MAPS)
@example({b"": None})
@example({b"": b"orphan"})
@example({b"model": b"a", b"MODEL": b"b"})
@example({b"\x00\x00": b"x", b"pw\x00": b"y"})
@example({b"password": b"hunter2", b"token": b"\xff" * 300})
def test_read_txt_never_raises_and_shows_clean_capped_values(txt: dict[bytes, bytes | None]) -> None:
    view = read_txt(txt)
    _check_shown(view.shown)
    assert len(view.raw) <= MAX_TXT_KEYS
    assert all(not has_control_chars(r) for r in view.repairs)
    for text in view.texts:
        assert text and not has_control_chars(text) and len(text) <= MAX_TXT_TEXT


@fuzz(80)
@given(txt_wire())
def test_wire_records_survive_zeroconf_and_the_collector(wire: bytes) -> None:
    view = read_txt(_decoded(wire))
    _check_shown(view.shown)


@fuzz(100)
@given(st.binary(max_size=400))
def test_binary_detection_and_marker(value: bytes) -> None:
    marker = binary_marker(value)
    assert len(marker) <= 2 * MAX_BINARY_SHOWN + 40
    assert is_binary(value) in (True, False)


@fuzz(60)
@given(st.lists(services(), min_size=1, max_size=4))
@example([ResolvedService(TYPE, "x", server=None, addresses=(), txt={})])
def test_any_services_give_one_clean_observation_per_host(found: list[ResolvedService]) -> None:
    observations = observe_hosts(found, CATALOG, NOW)
    assert len(observations) == len(group_by_host(found))
    for obs in observations:
        check_observation(obs)
        for service in obs.attributes["services"]:
            _check_shown(service["txt"])
            assert service["instance"] and len(service["instance"]) <= MAX_NAME_LEN
        assert len([i for i in obs.health if i.code == "mdns-data"]) <= len(found)
