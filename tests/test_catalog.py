"""The catalog against the shared documents: every USB id and model code in protocols.md and
every model number in domain.md resolves to its product."""

from __future__ import annotations

import re

import pytest

from agent.catalog import (
    LOGITECH_VID,
    CatalogError,
    load_catalog,
    parse_catalog,
)
from tests.shared import SHARED, shared_file, shared_missing_reason

_HEX = re.compile(r"0x([0-9A-Fa-f]{4})")


def protocols_usb_table() -> list[tuple[str, list[tuple[int, int]]]]:
    """(product, [(vid, pid)…]) for every row of protocols.md's USB table, parsed here."""
    text = shared_file("protocols.md").read_text(encoding="utf-8")
    section = text.split("## USB identities", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("product", "") or set(cells[0]) <= {"-"}:
            continue
        ids: list[tuple[int, int]] = []
        for clause in re.split(r"[;]", cells[1] + ";" + cells[3]):
            vendor = re.search(r"vendor 0x([0-9A-Fa-f]{4})", clause)
            vid = int(vendor.group(1), 16) if vendor else LOGITECH_VID
            for m in _HEX.finditer(clause):
                if vendor and m.start() == vendor.start(1) - 2:
                    continue
                ids.append((vid, int(m.group(1), 16)))
        rows.append((cells[0], ids))
    return rows


def test_protocols_table_was_parsed() -> None:
    rows = dict(protocols_usb_table())
    assert len(rows) >= 19
    assert (0x222A, 0x0001) in rows["Tap"] and (0x222A, 0xFF51) in rows["Tap"]
    assert (LOGITECH_VID, 0x0867) in rows["MeetUp"]  # ids from the notes column count too


def _rows_for_collection() -> list:
    if not (SHARED / "protocols.md").is_file():
        return [
            pytest.param(
                ("", []),
                marks=pytest.mark.missing(shared_missing_reason(SHARED / "protocols.md")),
            )
        ]
    return [pytest.param(row, id=row[0]) for row in protocols_usb_table()]


@pytest.mark.parametrize("row", _rows_for_collection())
def test_every_usb_id_resolves_to_its_product(row: tuple[str, list[tuple[int, int]]]) -> None:
    product, ids = row
    catalog = load_catalog()
    if not ids:  # "MeetUp 2, Swytch, … distinct ids: not found"
        for name in re.split(r",\s*", product.replace(" distinct ids", "")):
            assert name in catalog.products, f"{name} should be in the catalog"
        return
    assert product in catalog.products, "product names are exactly protocols.md's first column"
    for vid, pid in ids:
        match = catalog.match_usb(vid, pid)
        assert match is not None, f"{vid:04x}:{pid:04x} ({product}) is not in the catalog"
        assert product in {p.name for p in match.products}


def test_collabos_model_codes() -> None:
    catalog = load_catalog()
    assert catalog.by_collabos_model("VR0019").name == "Rally Bar"
    assert catalog.by_collabos_model("vu0067").name == "Sight"
    assert catalog.by_collabos_model("VX9999") is None


@pytest.mark.parametrize(
    ("number", "products"),
    [
        ("V-R0010", {"Rally Camera", "Rally", "Rally Plus"}),
        ("V-R0007", {"MeetUp"}),
        ("V-U0053", {"Tap"}),
        ("VU0053", {"Tap"}),
    ],
)
def test_model_numbers_from_domain(number: str, products: set[str]) -> None:
    text = shared_file("domain.md").read_text(encoding="utf-8")
    assert number.replace("VU", "V-U") in text
    assert {p.name for p in load_catalog().by_model_number(number)} == products


def test_primary_units_and_warranty_follow_domain_md() -> None:
    c = load_catalog()
    # domain.md "Products": each schedule-A product has a 2-year standard warranty (W1).
    for name in ("Rally Camera", "Rally", "Rally Plus", "MeetUp", "Tap"):
        p = c.product(name)
        assert p.standard_warranty_years == 2 and p.extension_eligible
        assert p.warranty_source.startswith("seeds 001/002")
    assert c.product("Rally Camera").primary_unit  # P1: a Rally system registers its camera
    assert not c.product("Rally Display Hub").primary_unit
    # S-list (seed 003): key devices whose serial must be registered to a room.
    for name in ("Rally Camera", "Rally Bar", "Tap", "Swytch", "Scribe"):
        assert c.product(name).key_device, name
    for name in ("Rally Mic Pod", "Rally Display Hub", "Rally Table Hub"):
        assert not c.product(name).key_device, name
    # SELECT scope (003) and HEZO+ scope (004).
    for name in ("Rally Bar", "Rally Bar Mini", "Rally Bar Huddle", "Sight", "Scribe", "RoomMate"):
        assert c.product(name).select_supported, name
    assert not c.product("Brio").select_supported
    for name in (
        "MeetUp",
        "Rally",
        "Rally Plus",
        "Rally Camera",
        "Rally Bar",
        "Rally Bar Mini",
        "Tap",
        "Tap IP",
        "Swytch",
    ):
        assert c.product(name).reseller_supported, name
    assert c.warranty_years("Brio") == c.warranty_years("no such product") == 2


def test_catalog_rejects_malformed_data() -> None:
    base = {"name": "X", "family": "camera"}
    with pytest.raises(CatalogError, match="family"):
        parse_catalog({"product": [{"name": "X", "family": "toaster"}]})
    with pytest.raises(CatalogError, match="unknown keys"):
        parse_catalog({"product": [{**base, "colour": "red"}]})
    with pytest.raises(CatalogError, match="listed under both"):
        parse_catalog(
            {
                "product": [
                    {**base, "usb": [{"pid": 1}]},
                    {"name": "Y", "family": "camera", "usb": [{"pid": 1}]},
                ]
            }
        )
    with pytest.raises(CatalogError, match="pid"):
        parse_catalog({"product": [{**base, "usb": [{"pid": 0x10000}]}]})
    with pytest.raises(CatalogError, match="listed twice"):
        parse_catalog({"product": [base, base]})
