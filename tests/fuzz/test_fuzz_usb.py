"""Fuzz: strings and numbers USB devices put in sysfs (agent/discovery/usb.py,
agent/collectors/usb_descriptor.py) and the cleaning every device string goes through
(agent/sanitize.py).

A USB device writes its own descriptors, so every attribute file under
``bus/usb/devices/<entry>/`` is outside input: ids, bcdDevice, bus and device numbers, the
raw ``descriptors`` blob and the manufacturer, product and serial strings — any bytes, any
length. A captured tree (``--sysfs-root``) adds odd entry names, files where directories
belong and dangling links. Documented behaviour: ``parse_device`` gives a record or
:class:`ValueError` (unusable ids); ``read_sysfs``/``read_entries`` turn each unusable entry
into one error line and read the rest; the USB source's scan never raises for what it reads.
``clean_text`` and ``normalize_serial`` are idempotent, and what they return is clean.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from agent.catalog import load_catalog
from agent.discovery import ScanContext
from agent.discovery.usb import UsbSource
from agent.model import HealthIssue
from agent.sanitize import (
    DEFAULT_MAX_LEN,
    clean_serial,
    clean_text,
    is_placeholder_serial,
    is_secret_key,
    normalize_serial,
)
from agent.usbtree import MAX_ATTRIBUTE_BYTES, parse_device, read_sysfs
from tests.fuzz import check_observation, fuzz, has_control_chars
from tests.sysfs import device_descriptor

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()
CTX = ScanContext(CATALOG, NOW)
#: Catalog USB ids, so that grouping into units and product rules run on fuzzed strings.
USB_IDS = sorted({(u.vid, u.pid) for p in CATALOG.products.values() for u in p.usb})
_IDS = st.one_of(st.sampled_from(USB_IDS), st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)))

_STRINGS = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=130).map(lambda t: (t + "\n").encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"2313FD1N08Z2\n",
            b"To be filled by O.E.M.\n",
            b"00000000\n",
            b"\n",
            b"",
            b"Logi Rally Bar\n",
            b"Rally\x00\x00garbage\n",
            b"\xff\xfe\xfd\n",
            b"\x1b[31mred\n",
            "Cámara ☃\n".encode(),
            b"\xe2\x80\xae\xe2\x80\x8b\n",
            b"x" * (MAX_ATTRIBUTE_BYTES + 10),
        ]
    ),
)
_HEX = st.one_of(
    st.integers(0, 0xFFFF).map(lambda n: f"{n:04x}\n".encode()),
    st.binary(max_size=12),
    st.sampled_from(
        [
            b"046d",
            b"046D\n",
            b"0x46d\n",
            b"46d\n",
            b"\n",
            b"",
            b"12345\n",
            b"\xef\xbc\x90\xef\xbc\x94\n",
            b"-1\n",
            b" 046d \x00",
        ]
    ),
)
_DEC = st.one_of(
    st.integers(0, 999).map(lambda n: f"{n}\n".encode()),
    st.binary(max_size=10),
    st.sampled_from([b"1234567\n", "٣\n".encode(), b"\n", b"-2\n"]),
)


@st.composite
def attributes(draw: st.DrawFn) -> dict[str, bytes]:
    """The attribute files of one device entry: good values, garbage, or absent."""
    vid, pid = draw(_IDS)
    attrs: dict[str, bytes] = {
        "idVendor": draw(st.just(f"{vid:04x}\n".encode()) | _HEX),
        "idProduct": draw(st.just(f"{pid:04x}\n".encode()) | _HEX),
        "bcdDevice": draw(_HEX),
        "busnum": draw(_DEC),
        "devnum": draw(_DEC),
        "descriptors": draw(
            st.one_of(
                st.just(device_descriptor(vid, pid)),
                st.binary(max_size=40),
                st.just(device_descriptor(vid, pid)).map(lambda d: d[:17]),
            )
        ),
        "manufacturer": draw(_STRINGS),
        "product": draw(_STRINGS),
        "serial": draw(_STRINGS),
    }
    for name in draw(st.lists(st.sampled_from(sorted(attrs)), max_size=3)):
        attrs.pop(name, None)
    return attrs


def _check_record_strings(record: object) -> None:
    for name, cap in (("manufacturer", DEFAULT_MAX_LEN), ("product", DEFAULT_MAX_LEN), ("serial", 64)):
        value = getattr(record, name)
        assert value is None or (0 < len(value) <= cap and not has_control_chars(value)), (name, value)


@fuzz(180)
@given(attributes())
@example({"idVendor": b"046d\n", "idProduct": b"085e\n", "serial": b"\xff" * 4096})
@example({"idVendor": b"046d\n", "idProduct": b"085e\n", "descriptors": b"\x12\x01" + b"\xff" * 16})
@example({"idVendor": "０４６ｄ".encode(), "idProduct": b"085e\n"})
def test_parse_device_gives_a_record_or_a_value_error(attrs: dict[str, bytes]) -> None:
    issues: list[HealthIssue] = []
    try:
        record = parse_device("1-1.2", Path("/x/1-1.2"), attrs.get, issues)
    except ValueError as exc:
        assert str(exc)
        return
    assert 0 <= record.vendor_id <= 0xFFFF and 0 <= record.product_id <= 0xFFFF
    assert record.bcd_device is None or 0 <= record.bcd_device <= 0xFFFF
    assert record.busnum is None or 0 <= record.busnum <= 999_999
    assert all(0 <= i <= 255 for i in record.string_indexes.values())
    _check_record_strings(record)


_NAMES = st.one_of(
    st.sampled_from(
        [
            "usb1",
            "usb2",
            "1-1",
            "1-1.2",
            "1-1.4",
            "1-1.4.1",
            "2-1",
            "2-1.4",
            "1-1:1.0",
            "1-2",
            "3-1.1.1.1.1.1",
            "usb",
            "1-",
            "x",
            "1-1.2.",
            "99999999999-1",
            "０-1",
            "1-01",
        ]
    ),
    st.text(st.characters(exclude_characters="/\x00", codec="utf-8"), min_size=1, max_size=20).filter(
        lambda n: n not in (".", "..")
    ),
)


@st.composite
def sysfs_trees(draw: st.DrawFn) -> list[tuple[str, str, dict[str, bytes]]]:
    """Entries as ``(name, shape, attributes)``; shape: dir, file (an entry that is not a
    directory), dangling (a broken link) or odd (attribute files that are directories)."""
    names = draw(st.lists(_NAMES, min_size=0, max_size=6, unique=True))
    shapes = st.sampled_from(["dir"] * 6 + ["file", "dangling", "odd"])
    return [(name, draw(shapes), draw(attributes())) for name in names]


def _build(root: Path, entries: list[tuple[str, str, dict[str, bytes]]]) -> None:
    devices = root / "bus" / "usb" / "devices"
    devices.mkdir(parents=True)
    for name, shape, attrs in entries:
        path = devices / name
        if shape == "file":
            path.write_bytes(b"not a directory")
            continue
        if shape == "dangling":
            os.symlink(root / "devices" / "gone" / name.replace(os.sep, "_"), path)
            continue
        path.mkdir()
        for key, value in attrs.items():
            if shape == "odd" and key in ("serial", "busnum"):
                (path / key).mkdir()
            else:
                (path / key).write_bytes(value)


@fuzz(50, deadline=timedelta(seconds=10))
@given(sysfs_trees())
def test_a_captured_tree_reads_every_entry_or_names_why_not(
    entries: list[tuple[str, str, dict[str, bytes]]],
) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-sysfs-") as tmp:
        root = Path(tmp)
        _build(root, entries)
        found = read_sysfs(root)
        device_names = {n for n, _, _ in entries if ":" not in n}
        read = {r.name for r in found.records} | {name for name, _ in found.errors}
        assert read == device_names, "every device entry is read or listed as an error"
        for record in found.records:
            _check_record_strings(record)
        result = UsbSource(root, all_usb=True).scan(CTX)
        assert result.complete
        for obs in result.observations:
            check_observation(obs)
        assert len(result.errors) == len(found.errors)


# --------------------------------------------------------------------------- sanitize

_AWKWARD = "a \x00\t\n\u200b\u200c\u200d\u202e\u00a0\u3000\u2028\ufeff\ud800é"
_TEXT = st.one_of(
    st.text(max_size=200), st.binary(max_size=200), st.text(st.sampled_from(_AWKWARD), max_size=40)
)


@fuzz(280)
@given(_TEXT, st.integers(1, 300))
@example("a\u200d\u200d", 128)
@example(" \x00 a", 1)
@example("\u00a0a\u3000\u3000b ", 3)
def test_clean_text_is_clean_capped_and_idempotent(raw: str | bytes, max_len: int) -> None:
    cleaned = clean_text(raw, max_len=max_len)
    if cleaned.value is None:
        assert "empty" in cleaned.problems or raw is None
        return
    value = cleaned.value
    assert 0 < len(value) <= max_len
    assert value == value.strip(" ") and "  " not in value
    assert all(unicodedata.category(ch)[0] != "C" or ch in "\u200c\u200d" for ch in value)
    assert clean_text(value, max_len=max_len) == type(cleaned)(value, ())  # idempotent


@fuzz(210)
@given(_TEXT)
@example("ß")
@example("ﬁ\u0345")
def test_serial_forms_are_idempotent(raw: str | bytes) -> None:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    once = normalize_serial(text)
    assert normalize_serial(once) == once
    assert not any(ch.isspace() for ch in once)
    serial = clean_serial(raw)
    if serial.value is not None:
        assert not is_placeholder_serial(serial.value)
        assert clean_serial(serial.value).value == serial.value
    assert is_secret_key(text) in (True, False)
