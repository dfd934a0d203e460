"""USB discovery from fake sysfs trees: reading, grouping into units, bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.catalog import UNKNOWN_LOGITECH, load_catalog
from agent.cli import main
from agent.collectors.usb_descriptor import observe_unit
from agent.discovery import ScanContext
from agent.discovery.usb import UsbSource
from agent.usbtree import UsbDiscoveryError, group_units, read_sysfs
from tests.sysfs import add_device

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LOGI = 0x046D


def scan(root: Path, **kw) -> list:
    return UsbSource(root, libusb_strings=False, **kw).scan(ScanContext(load_catalog(), NOW)).observations


def rally_bar(root: Path, port: str = "1", serial: str = "2313FD1N08Z3") -> None:
    """A Rally Bar as it shows on a USB 3 port: main + hub on bus 2, hub/HID/audio on bus 1."""
    add_device(root, f"2-{port}", LOGI, 0x08A5)
    add_device(
        root,
        f"2-{port}.1",
        LOGI,
        0x089B,
        bcd=0x0020,
        serial=serial,
        product="Logi Rally Bar",
        manufacturer="Logitech",
    )
    add_device(root, f"1-{port}", LOGI, 0x08A4)
    add_device(root, f"1-{port}.2", LOGI, 0x089A, product="Logi Rally Bar")
    add_device(root, f"1-{port}.3", LOGI, 0x0898)


def test_reads_devices_and_skips_interfaces(tmp_path: Path) -> None:
    add_device(tmp_path, "usb1", 0x1D6B, 0x0002, product="xHCI Host Controller")
    add_device(tmp_path, "1-2", LOGI, 0x085E, bcd=0x0317, serial="476C95B3", product="Logitech BRIO")
    found = read_sysfs(tmp_path)
    assert found.bus_visible
    assert [r.name for r in found.records] == ["usb1", "1-2"]
    brio = found.records[1]
    assert (brio.vendor_id, brio.product_id, brio.bcd_device) == (LOGI, 0x085E, 0x0317)
    assert brio.serial == "476C95B3"
    assert brio.product == "Logitech BRIO"
    assert brio.busnum == 1 and brio.port_chain == (2,)
    assert brio.release == "3.17"
    assert found.errors == []


def test_symlinked_entries_like_real_sysfs(tmp_path: Path) -> None:
    add_device(tmp_path, "3-1", LOGI, 0x08E2, serial="A1B2C3D4E5F6", symlink=True)
    [obs] = scan(tmp_path)
    assert obs.product == "Scribe"
    assert obs.serial == "A1B2C3D4E5F6"


def test_rally_bar_functions_fold_into_one_unit(tmp_path: Path) -> None:
    rally_bar(tmp_path)
    add_device(tmp_path, "1-4", 0x0BDA, 0x5411, product="USB hub")  # not Logitech
    observations = scan(tmp_path)
    assert len(observations) == 1
    bar = observations[0]
    assert bar.product == "Rally Bar"
    assert bar.model == "VR0019"
    assert bar.serial == "2313FD1N08Z3"
    assert str(bar.serial_source) == "usb-descriptor"
    assert bar.serial_label_grade is True
    # bcdDevice is the USB release, not the CollabOS version (protocols.md): not firmware.
    assert bar.firmware is None
    assert bar.attributes["usb_release"] == "0.20"
    roles = sorted((f["address"], f["role"]) for f in bar.attributes["functions"])
    assert roles == [("1-1", "hub"), ("1-1.2", "hid"), ("1-1.3", "audio"), ("2-1", "hub")]


def test_two_rally_bars_keep_their_own_functions(tmp_path: Path) -> None:
    rally_bar(tmp_path, "1", "2313FD1N0AAA")
    rally_bar(tmp_path, "2", "2313FD1N0BBB")
    observations = scan(tmp_path)
    by_serial = {o.serial: o for o in observations}
    assert set(by_serial) == {"2313FD1N0AAA", "2313FD1N0BBB"}
    first = {f["address"] for f in by_serial["2313FD1N0AAA"].attributes["functions"]}
    second = {f["address"] for f in by_serial["2313FD1N0BBB"].attributes["functions"]}
    assert first == {"2-1", "1-1", "1-1.2", "1-1.3"}
    assert second == {"2-2", "1-2", "1-2.2", "1-2.3"}


def test_function_without_its_main_is_reported_not_dropped(tmp_path: Path) -> None:
    add_device(tmp_path, "1-5", LOGI, 0x089A, product="Logi Rally Bar")
    [obs] = scan(tmp_path)
    assert obs.product == "Rally Bar"
    issue = next(i for i in obs.health if i.code == "usb-function-without-main")
    assert "Rally Bar Mini" in issue.message  # the HID id is shared by both bars


def test_tap_is_one_unit_with_its_touch_screen(tmp_path: Path) -> None:
    add_device(tmp_path, "1-3", 0x05E3, 0x0610, product="hub")
    add_device(tmp_path, "1-3.1", LOGI, 0x0876, bcd=0x0110, serial="2020AB12CD34")
    add_device(tmp_path, "1-3.2", LOGI, 0x0872)
    add_device(tmp_path, "1-3.3", 0x222A, 0x0001, product="ILITEK touch")
    observations = scan(tmp_path)
    assert [o.product for o in observations] == ["Tap"]
    tap = observations[0]
    assert tap.model == "V-U0053"
    assert {f["product_id"] for f in tap.attributes["functions"]} == {"0872", "0001"}
    # bcdDevice is not the Tap's firmware (issue [11/16]): kept as the USB release only.
    assert tap.firmware is None and tap.attributes["usb_release"] == "1.10"
    assert tap.serial_label_grade is False  # the Tap's label serial comes over HID, not here


def test_touch_screen_alone_is_not_a_tap(tmp_path: Path) -> None:
    add_device(tmp_path, "1-3", 0x222A, 0x0001, product="ILITEK touch")
    assert scan(tmp_path) == []
    [other] = scan(tmp_path, all_usb=True)
    assert other.product == "ILITEK touch"
    assert other.vendor_id == 0x222A


def test_unknown_logitech_id_is_kept_with_its_ids(tmp_path: Path) -> None:
    add_device(tmp_path, "1-7", LOGI, 0x0999, serial="XYZ", product="Logi Mystery")
    [obs] = scan(tmp_path)
    assert obs.product == UNKNOWN_LOGITECH
    assert (obs.vendor_id, obs.product_id) == (LOGI, 0x0999)
    assert any(i.code == "unknown-product" for i in obs.health)


def test_product_string_identifies_products_without_known_ids(tmp_path: Path) -> None:
    add_device(tmp_path, "1-8", LOGI, 0x0998, product="Logitech Swytch")
    [obs] = scan(tmp_path)
    assert obs.product == "Swytch"


def test_non_logitech_devices_only_with_all_usb(tmp_path: Path) -> None:
    add_device(tmp_path, "usb1", 0x1D6B, 0x0002)
    add_device(tmp_path, "1-1", 0x0BDA, 0x8153, product="USB 10/100/1000 LAN", manufacturer="Realtek")
    add_device(tmp_path, "1-2", LOGI, 0x085E, serial="476C95B3")
    assert [o.product for o in scan(tmp_path)] == ["Brio"]
    everything = scan(tmp_path, all_usb=True)
    assert sorted(o.product for o in everything) == ["Brio", "USB 10/100/1000 LAN", "Unknown device"]
    realtek = next(o for o in everything if o.vendor_id == 0x0BDA)
    assert realtek.vendor == "Realtek"


def test_webcam_chip_serial_is_not_label_grade(tmp_path: Path) -> None:
    add_device(tmp_path, "1-2", LOGI, 0x085E, bcd=0x0317, serial="476C95B3")
    [brio] = scan(tmp_path)
    assert brio.serial == "476C95B3"
    assert brio.serial_label_grade is False
    assert (brio.firmware, brio.firmware_source) == ("3.17", "usb-bcdDevice")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("raw", "serial", "problem"),
    [
        (b"0000000000\n", None, "placeholder"),
        (b"To be filled by O.E.M.\n", None, "placeholder"),
        (b"\n", None, "empty"),
        (b"", None, "empty"),
        (b"2313FD1N08Z3\x00\x00\x00\x00", "2313FD1N08Z3", None),
        (b"2313FD1N\x0008Z3\n", "2313FD1N", "nul-padded"),
        (b"23\xff\xfe13FD\n", "23\ufffd\ufffd13FD", "not-utf8"),
        (b"AB\x07CD\n", "ABCD", "control-chars"),
        (b"S1" * 1500 + b"\n", "S1" * 32, "too-long"),
    ],
)
def test_bad_serial_strings(tmp_path: Path, raw: bytes, serial: str | None, problem: str | None) -> None:
    add_device(tmp_path, "2-1.1", LOGI, 0x089B, serial=raw)
    [bar] = scan(tmp_path)
    assert bar.serial == serial
    codes = {i.code for i in bar.health}
    if problem is None:
        assert bar.serial_label_grade is True
        assert not any(c.startswith("usb-string-") for c in codes)
    else:
        assert f"usb-string-{problem}" in codes
        assert bar.serial_label_grade is False
    if serial is None:
        assert "serial-missing" in codes  # a key device without a serial is worth a warning


def test_absurd_product_string_is_cut_and_reported(tmp_path: Path) -> None:
    add_device(tmp_path, "1-2", LOGI, 0x085E, product="B" * 100_000)
    found = read_sysfs(tmp_path)
    assert len(found.records[0].product) <= 128
    assert "too-long" in found.records[0].string_problems["product"]


def test_unusable_entries_are_errors_and_the_scan_goes_on(tmp_path: Path) -> None:
    add_device(tmp_path, "1-1", LOGI, 0x085E, serial="476C95B3")
    broken = add_device(tmp_path, "1-2", LOGI, 0x0866)
    (broken / "idProduct").unlink()
    garbage = add_device(tmp_path, "1-3", LOGI, 0x0866)
    (garbage / "idVendor").write_bytes(b"\xff\xfe not hex")
    (tmp_path / "bus/usb/devices/not-a-device").mkdir()
    found = read_sysfs(tmp_path)
    assert [r.name for r in found.records] == ["1-1"]
    assert {name for name, _ in found.errors} == {"1-2", "1-3", "not-a-device"}


def test_unreadable_attribute_is_a_note_not_a_crash(tmp_path: Path) -> None:
    path = add_device(tmp_path, "2-1.1", LOGI, 0x089B)
    (path / "serial").mkdir()  # reading it fails with EISDIR, even as root
    [bar] = scan(tmp_path)
    assert bar.serial is None
    assert any(i.code == "usb-attribute-unreadable" and "serial" in i.message for i in bar.health)


def test_missing_root_and_missing_bus(tmp_path: Path) -> None:
    with pytest.raises(UsbDiscoveryError, match="does not exist"):
        read_sysfs(tmp_path / "nope")
    found = read_sysfs(tmp_path)
    assert found.bus_visible is False
    assert "no USB bus is visible" in found.message


def test_grouping_is_independent_of_entry_order(tmp_path: Path) -> None:
    rally_bar(tmp_path)
    records = read_sysfs(tmp_path).records
    catalog = load_catalog()
    forward = [observe_unit(u, catalog, NOW) for u in group_units(records, catalog)]
    backward = [observe_unit(u, catalog, NOW) for u in group_units(records[::-1], catalog)]
    assert [o.serial for o in forward] == [o.serial for o in backward] == ["2313FD1N08Z3"]
    assert len(forward[0].attributes["functions"]) == len(backward[0].attributes["functions"]) == 4


# ----------------------------------------------------------------------------- the command


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_scan_json_from_a_captured_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOMSYNC_CONFIG", str(tmp_path / "agent.toml"))
    (tmp_path / "agent.toml").write_text('[room]\nid = "oslo-4-12"\nname = "Fjord"\n')
    sysfs = tmp_path / "site-capture"
    rally_bar(sysfs)
    add_device(sysfs, "1-6", LOGI, 0x0866, bcd=0x0172, serial="1234ABCD")
    code, out, err = run_cli(capsys, "scan", "--sysfs-root", str(sysfs), "--json", "--no-libusb")
    assert code == 0, err
    data = json.loads(out)
    assert data["errors"] == []
    assert data["room"]["id"] == "oslo-4-12"
    by_product = {d["product"]: d for d in data["devices"]}
    assert set(by_product) == {"Rally Bar", "MeetUp"}
    bar = by_product["Rally Bar"]
    for key in (
        "product",
        "model",
        "serial",
        "serial_source",
        "firmware",
        "transport",
        "address",
        "vendor_id",
        "product_id",
        "room",
    ):
        assert key in bar
    assert bar["serial"] == "2313FD1N08Z3"
    assert bar["vendor_id"] == "046d" and bar["product_id"] == "089b"
    assert bar["transport"] == "usb" and bar["address"] == "2-1.1"
    assert bar["room"] == "oslo-4-12"
    assert by_product["MeetUp"]["model"] == "V-R0007"
    # A captured tree is not this host's USB: the MeetUp's firmware collector does not run,
    # and its bcdDevice is not its firmware.
    assert by_product["MeetUp"]["firmware"] is None
    assert by_product["MeetUp"]["attributes"]["usb_release"] == "1.72"


def test_scan_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOMSYNC_CONFIG", str(tmp_path / "absent.toml"))
    add_device(tmp_path, "1-2", LOGI, 0x085E, bcd=0x0317, serial="476C95B3")
    monkeypatch.delenv("ROOMSYNC_CONFIG")
    code, out, _ = run_cli(capsys, "scan", "--sysfs-root", str(tmp_path), "--no-libusb")
    assert code == 0
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["PRODUCT", "MODEL", "SERIAL"]
    assert row.split()[:3] == ["Brio", "-", "476C95B3*"]
    assert "not label-grade" in out


def test_scan_without_usb_bus_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "scan", "--sysfs-root", str(tmp_path), "--no-libusb")
    assert code == 0
    assert "no USB bus is visible" in out


def test_scan_with_missing_sysfs_root_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "scan", "--sysfs-root", str(tmp_path / "missing"))
    assert code == 2
    assert "no such directory" in err and "Traceback" not in err
    assert out == ""


def _reference_nearest(record: Any, candidates: list[Any]) -> Any:
    """Where a function went before the index (a comparison with every main unit), kept here
    to check that the indexed lookup folds every function into the same unit."""

    def common(a: tuple[int, ...], b: tuple[int, ...]) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    if not candidates:
        return None
    scored = [
        ((common(record.port_chain, u.main.port_chain), u.main.bus == record.bus), u) for u in candidates
    ]
    best = max(score for score, _ in scored)
    winners = [u for score, u in scored if score == best]
    if best[0] >= 1 and len(winners) == 1:
        return winners[0]
    return candidates[0] if len(candidates) == 1 else None


@settings(max_examples=300, deadline=None)
@given(
    placed=st.lists(
        st.tuples(
            st.sampled_from([0x0876, 0x0872, 0x089B, 0x08A4, 0x089A, 0x08D3, 0x08D2, 0x0881, 0x0885, 0x08E2]),
            st.integers(1, 3),
            st.lists(st.integers(1, 3), min_size=1, max_size=3),
        ),
        max_size=14,
        unique_by=lambda t: (t[1], tuple(t[2])),
    )
)
def test_the_indexed_topology_folds_functions_where_the_comparison_did(placed: list[Any]) -> None:
    from agent.usbtree import UsbRecord

    records = [
        UsbRecord(
            name=f"{bus}-{'.'.join(map(str, ports))}", path=Path("/x"), vendor_id=0x046D, product_id=pid
        )
        for pid, bus, ports in placed
    ]
    units = group_units(records, load_catalog())
    # The same grouping, each function placed by comparing it with every main unit.
    mains = [u for u in units if u.match is not None and u.match.is_main and u.product is not None]
    for unit in units:
        for record, match in unit.functions:
            names = {p.name for p in match.products}
            candidates = [u for u in mains if u.product.name in names]
            assert _reference_nearest(record, candidates) is unit, record.name
    for unit in units:
        if unit.match is not None and not unit.match.is_main:  # a function left on its own
            names = {p.name for p in unit.match.products}
            assert _reference_nearest(unit.main, [u for u in mains if u.product.name in names]) is None
