"""The two extended-warranty rules of domain.md with their own flags (issue [17/17]):

* **W7** — components sold separately and consumables are excluded from the B2B extension: a
  row that buys an extension for one gets the standard warranty only, flag
  ``extension-excluded-component``, the reason naming the product; a component of a primary
  unit's original box has no row of its own and is covered with that unit (P1, unchanged).
* **W9** — every serial on an extension's confirmation must be checked within 30 days of buying
  it: never found by a scan, ``extension-serial-unverified`` until ``check_by`` (purchase + 30
  days) and ``extension-serial-unverified-late`` after it; found, ``serial_verified`` with the
  day it was first seen; found as another product than the row's ``product``,
  ``extension-serial-mismatch``.

Verdicts from the real evaluator and the shipped catalog; the records no scan found through
:class:`RowVerdicts` (shared shapes) and the CLI on a real store."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from agent.catalog import load_catalog
from agent.coverage import EXTENSION_CHECKS, LayerKind, RowVerdicts, Sighting, Verdict, evaluate, evaluate_all
from agent.entitlements import EntitlementRecord, Entitlements, load_entitlements
from agent.model import Device, Transport
from agent.store import Store

CATALOG = load_catalog()
D = date.fromisoformat
BOUGHT = D("2026-06-02")
EXTENSION = D("2026-06-10")  # bought 8 days after the product: in time (W3)
CHECK_BY = D("2026-07-10")  # W9: the extension's purchase + 30 days


def row(serial: str = "2210RC0001A1", **more: object) -> EntitlementRecord:
    fields: dict[str, object] = {
        "purchase_date": BOUGHT,
        "country": "DE",
        "extension_years": 1,
        "extension_purchased": EXTENSION,
    }
    fields.update(more)
    return EntitlementRecord(serial=serial, **fields)  # type: ignore[arg-type]


def judge(
    record: EntitlementRecord, product: str | None, today: date, seen: Sighting | None = None
) -> Verdict:
    return evaluate(record.serial, product, record, Entitlements.of([record]), CATALOG, today, seen=seen)


#: When the scans of these tests found their units.
SCANNED = datetime(2026, 6, 12, 9, tzinfo=UTC)


def unit(
    serial: str, product: str, children: list[Device] | None = None, *, room: str | None = "oslo-4-12"
) -> Device:
    """A unit a USB scan found at :data:`SCANNED`, with a label-grade serial."""
    return Device(
        product=product,
        transport=Transport.USB,
        address=f"1-{serial}",
        first_seen=SCANNED,
        last_seen=SCANNED,
        room=room,
        serial=serial,
        serial_label_grade=True,
        sources=["usb"],
        children=children or [],
    )


def kinds(verdict: Verdict) -> list[LayerKind]:
    return [layer.kind for layer in verdict.layers]


# --------------------------------------------------------------------------- W7


@pytest.mark.parametrize(
    ("product", "kind"),
    [
        ("Rally Mic Pod", "component"),
        ("Rally Speaker", "component"),
        ("Rally Mount Kit", "component"),
        ("Mic Pod Extension Cable", "consumable"),
        ("Power Adapter", "consumable"),
    ],
)
def test_w7_an_extension_for_a_part_sold_separately_is_standard_warranty_only(
    product: str, kind: str
) -> None:
    found = Sighting(BOUGHT, product)
    for scanned, record in ((product, row()), (None, row(product=product))):  # found, or named by the row
        verdict = judge(record, scanned, D("2026-12-02"), found if scanned else None)
        assert kinds(verdict) == [LayerKind.STANDARD], (product, scanned)
        assert "extension-excluded-component" in verdict.flags
        assert "extension-ineligible-product" not in verdict.flags  # W7 says why, not W2
        assert f"{product} is a {kind} sold separately" in verdict.reason and "(W7)" in verdict.reason
        assert verdict.covered_until == D("2028-06-01")  # W1: two years, nothing added


def test_w7_a_schedule_a_unit_keeps_its_extension_and_its_original_box_parts_go_with_it() -> None:
    """P1, unchanged: the Rally Camera's row buys the extension; the mic pods that came in its
    box have no row of their own, so W7 never judges them (no extension was bought for them)."""
    camera = judge(row(), "Rally Camera", D("2026-12-02"), Sighting(BOUGHT, "Rally Camera"))
    assert kinds(camera) == [LayerKind.STANDARD, LayerKind.EXTENDED]
    assert camera.covered_until == D("2029-06-01") and not set(camera.flags) & set(EXTENSION_CHECKS)
    pod = evaluate("2220MP0011A1", "Rally Mic Pod", None, Entitlements.of([row()]), CATALOG, D("2026-12-02"))
    assert "extension-excluded-component" not in pod.flags
    # Without the extension a part's own row is plain W1: nothing for W7 to exclude.
    plain = judge(row(extension_years=None, extension_purchased=None), "Rally Mic Pod", D("2026-12-02"))
    assert plain.flags == () and kinds(plain) == [LayerKind.STANDARD]


# --------------------------------------------------------------------------- W9


@pytest.mark.parametrize(
    ("today", "flag"),
    [
        (EXTENSION, "extension-serial-unverified"),  # the day it was bought
        (CHECK_BY, "extension-serial-unverified"),  # the last day to report a discrepancy
        (D("2026-07-11"), "extension-serial-unverified-late"),  # the day after
        (D("2027-03-01"), "extension-serial-unverified-late"),
    ],
)
def test_w9_a_serial_no_scan_has_found_is_unverified_until_check_by_then_late(today: date, flag: str) -> None:
    verdict = judge(row(), "Rally Camera", today, seen=None)
    other = (
        "extension-serial-unverified-late"
        if flag == "extension-serial-unverified"
        else "extension-serial-unverified"
    )
    assert flag in verdict.flags and other not in verdict.flags
    assert (verdict.serial_verified, verdict.first_seen, verdict.check_by) == (False, None, CHECK_BY)
    assert "(W9)" in verdict.reason and CHECK_BY.isoformat() in verdict.reason
    # The flag says what to do; the coverage itself is the extension's (W2), unchanged.
    assert LayerKind.EXTENDED in kinds(verdict)


def test_w9_a_serial_a_scan_found_is_verified_with_the_day_it_was_first_seen() -> None:
    verdict = judge(row(), "Rally Camera", D("2027-03-01"), Sighting(D("2026-06-20"), "Rally Camera"))
    assert (verdict.serial_verified, verdict.first_seen, verdict.check_by) == (
        True,
        D("2026-06-20"),
        CHECK_BY,
    )
    assert not set(verdict.flags) & set(EXTENSION_CHECKS)
    assert verdict.to_dict()["serial_verified"] is True and verdict.to_dict()["first_seen"] == "2026-06-20"


def test_w9_a_found_unit_of_another_product_than_the_row_names_is_a_mismatch() -> None:
    seen = Sighting(D("2026-06-20"), "Rally Camera")
    mismatch = judge(row(product="MeetUp"), "Rally Camera", D("2026-12-02"), seen)
    assert "extension-serial-mismatch" in mismatch.flags and mismatch.serial_verified is True
    assert "names a MeetUp, the unit found with its serial is a Rally Camera (W9)" in mismatch.reason
    same = judge(row(product="rally camera"), "Rally Camera", D("2026-12-02"), seen)  # case does not matter
    assert "extension-serial-mismatch" not in same.flags


def test_w9_asks_only_rows_that_bought_an_extension_and_without_its_date_has_no_deadline() -> None:
    plain = judge(row(extension_years=None, extension_purchased=None), "Rally Camera", D("2026-12-02"))
    assert (plain.serial_verified, plain.first_seen, plain.check_by) == (None, None, None)
    assert not set(plain.flags) & set(EXTENSION_CHECKS)
    undated = judge(row(extension_purchased=None), "Rally Camera", D("2030-01-01"))
    assert "extension-serial-unverified" in undated.flags and undated.check_by is None
    assert "extension-purchase-date-unknown" in undated.flags  # W3, as before


def test_w9_records_no_scan_found_share_verdicts_but_a_unit_found_once_is_verified() -> None:
    """Records as units of unknown product (:class:`RowVerdicts`): the unverified ones share
    their shape's verdict; a record whose unit scans found once (removed since) is worked out
    on its own, verified — in every form the listings use."""
    records = Entitlements.of([row("A1"), row("A2"), row("A3", product="Power Adapter")])
    today = D("2026-06-20")
    rows = RowVerdicts(records, CATALOG, today)
    seen = {"A2": Sighting(D("2026-06-12"), "Rally Camera")}
    listed = dict(rows.shared(seen=seen))
    assert listed["A1"].flags == ("extension-serial-unverified",) and listed["A1"].check_by == CHECK_BY
    assert (listed["A2"].serial_verified, listed["A2"].first_seen) == (True, D("2026-06-12"))
    assert set(listed["A3"].flags) == {"extension-excluded-component", "extension-serial-unverified"}
    texts = [json.loads(t) for t in rows.texts(seen=seen)]
    assert texts == [v.to_dict() for v in rows.verdicts(seen=seen)]
    assert [t["serial_verified"] for t in texts] == [False, True, False]
    # Each record alone, as evaluate_all would: the same verdicts.
    alone = evaluate_all([(s, None) for s in records], records, CATALOG, today, sightings=seen)
    assert [v.to_dict() for v in rows.verdicts(seen=seen)] == [v.to_dict() for v in alone]
    assert rows.counts() == rows.counts(skip=())  # statuses do not depend on sightings


# --------------------------------------------------------------------------- through the CLI


def test_the_cli_lists_verifies_and_counts_the_checks(tmp_path: Path) -> None:
    at = SCANNED

    with Store.open(tmp_path / "state") as store:
        store.record_scan(
            [unit("2210RC0001A1", "Rally Camera"), unit("2301SC0005E9", "Scribe")],
            [],
            at,
            sources_run={"usb"},
        )
        # The Scribe leaves the inventory: scans found it once all the same (W9).
        later = datetime(2026, 6, 15, 9, tzinfo=UTC)
        store.record_scan(
            [unit("2210RC0001A1", "Rally Camera")], [], later, sources_run={"usb"}, remove_after=1
        )
        assert [d.serial for d in store.devices(removed=True)] == ["2301SC0005E9"]
    (tmp_path / "entitlements.csv").write_text(
        "serial,purchase_date,country,extension_years,extension_purchased,product\n"
        f"2210RC0001A1,{BOUGHT},DE,1,{EXTENSION},MeetUp\n"  # found, as a Rally Camera: mismatch
        f"2301SC0005E9,{BOUGHT},DE,1,{EXTENSION},Scribe\n"  # found once, then removed: verified
        f"2220MP0011A1,{BOUGHT},DE,1,{EXTENSION},rally mic pod\n"  # a component, never found
        f"2104TP0007B3,{BOUGHT},DE,1,{EXTENSION},Tap\n"  # never found
    )
    (tmp_path / "agent.toml").write_text(f'state_dir = "{tmp_path / "state"}"\n')

    def roomsync(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "agent", "coverage", "--config", str(tmp_path / "agent.toml")]
        command += ["--entitlements", str(tmp_path / "entitlements.csv"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    for today, unverified in (
        ("2026-07-01", "extension-serial-unverified"),
        ("2026-08-01", "extension-serial-unverified-late"),
    ):
        listed = roomsync("--json", "--today", today)
        assert listed.returncode == 0, listed.stderr
        by_serial = {item["serial"]: item for item in json.loads(listed.stdout)}
        camera, scribe = by_serial["2210RC0001A1"], by_serial["2301SC0005E9"]
        assert "extension-serial-mismatch" in camera["flags"] and camera["serial_verified"] is True
        assert (scribe["serial_verified"], scribe["first_seen"]) == (True, "2026-06-12")
        assert not set(scribe["flags"]) & set(EXTENSION_CHECKS)
        pod, tap = by_serial["2220MP0011A1"], by_serial["2104TP0007B3"]
        assert {"extension-excluded-component", unverified} <= set(pod["flags"])
        assert unverified in tap["flags"] and tap["check_by"] == CHECK_BY.isoformat()
        summary = roomsync("--summary", "--json", "--today", today)
        assert summary.returncode == 0, summary.stderr
        checks = json.loads(summary.stdout)["extension_checks"]
        assert checks == {
            "extension-excluded-component": 1,
            "extension-serial-unverified": 2 if unverified == "extension-serial-unverified" else 0,
            "extension-serial-unverified-late": 2 if unverified.endswith("late") else 0,
            "extension-serial-mismatch": 1,
        }
        text = roomsync("--summary", "--today", today)
        assert "extensions (W7, W9): extension-excluded-component 1" in text.stdout, text.stdout


def test_the_example_entitlements_show_each_flag() -> None:
    """config/entitlements.example.csv (the README quickstart's): each W7/W9 flag once, as of
    a day within the 30 days of its recent extension, with the quickstart's four units found."""
    records = load_entitlements(Path(__file__).resolve().parents[1] / "config" / "entitlements.example.csv")
    quickstart = {
        "2313FD1N08Z2": "Rally Bar",
        "2104TP0007B3": "Tap",
        "2301SC0005E2": "Scribe",
        "2206MU0042C9": "MeetUp",
    }
    found = {serial: Sighting(D("2024-01-01"), product) for serial, product in quickstart.items()}
    units = [(serial, quickstart.get(serial)) for serial in records]
    verdicts = evaluate_all(units, records, CATALOG, D("2026-12-02"), sightings=found)
    flags = [flag for verdict in verdicts for flag in verdict.flags if flag in EXTENSION_CHECKS]
    assert sorted(set(flags)) == sorted(EXTENSION_CHECKS), flags


def test_docs_say_what_to_do_about_every_flag() -> None:
    from agent.coverage import Flag

    text = (Path(__file__).resolve().parents[1] / "docs" / "coverage.md").read_text()
    missing = [str(flag) for flag in Flag if f"| `{flag}` |" not in text]
    assert missing == [], missing


def test_flag_counts_of_the_records_agree_with_listing_them() -> None:
    """``RowVerdicts.flag_counts`` (kept from one pass, then corrected for the units a scan
    found and the ones it found once) counts what listing the records gives."""
    from collections import Counter

    records = Entitlements.of(
        [
            row("A1"),
            row("A2"),
            row("A3", product="Power Adapter"),
            row("A4", extension_purchased=None),
            row("A5", extension_years=None, extension_purchased=None),
            row("A6", product="MeetUp"),
        ]
    )
    rows = RowVerdicts(records, CATALOG, D("2026-08-01"))
    for skip, seen in (
        ((), {}),
        ({"A1"}, {}),
        (
            {"A3"},
            {
                "A2": Sighting(D("2026-06-12"), "Rally Camera"),
                "A6": Sighting(D("2026-06-12"), "Rally Camera"),
            },
        ),
        ({"A2"}, {"A2": Sighting(D("2026-06-12"), "Rally Camera")}),  # skipped wins
    ):
        listed = Counter(flag for _, verdict in rows.shared(skip=skip, seen=seen) for flag in verdict.flags)
        assert rows.flag_counts(skip=skip, seen=seen) == dict(listed), (skip, seen)
    assert (
        rows.flag_counts(seen={"A6": Sighting(D("2026-06-12"), "Rally Camera")})["extension-serial-mismatch"]
        == 1
    )


def test_the_snapshot_carries_the_flags(tmp_path: Path) -> None:
    from agent.uploader.protocol import AgentInfo
    from agent.uploader.snapshot import SnapshotContext, build_snapshot

    at = SCANNED
    units = [unit("2220MP0011A1", "Rally Mic Pod", room=None), unit("2104TP0007B3", "Tap", room=None)]
    records = Entitlements.of([row("2220MP0011A1"), row("2104TP0007B3", product="Tap IP")])
    with Store.open(tmp_path / "state") as store:
        store.record_scan(units, [], at, sources_run={"usb"})
        context = SnapshotContext(CATALOG, (), records, today=D("2026-07-01"))
        message = build_snapshot(store, context, AgentInfo(id="a", version="1", hostname="h"), 1, at)
    flags = {d.serial: d.coverage.flags for d in message.unassigned if d.coverage is not None}
    assert "extension-excluded-component" in flags["2220MP0011A1"]
    assert "extension-serial-mismatch" in flags["2104TP0007B3"]
    assert not {"extension-serial-unverified", "extension-serial-unverified-late"} & {
        f for found in flags.values() for f in found
    }  # both were found by the scan


def test_a_unit_found_once_is_judged_as_found_and_an_unnamed_one_as_its_row_says() -> None:
    """W7 judges the product a scan found — also for a unit that has left the inventory —
    and the row's ``product`` where the scan could not name the unit (W9: no mismatch then)."""
    records = Entitlements.of([row("A1"), row("A2", product="Rally Mic Pod Hub")])
    rows = RowVerdicts(records, CATALOG, D("2026-07-01"))
    gone = dict(rows.shared(seen={"A1": Sighting(D("2026-06-12"), "Rally Mic Pod")}))["A1"]
    assert gone.product == "Rally Mic Pod" and "extension-excluded-component" in gone.flags
    assert kinds(gone) == [LayerKind.STANDARD] and gone.serial_verified is True
    assert (
        rows.flag_counts(seen={"A1": Sighting(D("2026-06-12"), "Rally Mic Pod")})[
            "extension-excluded-component"
        ]
        == 2
    )
    unnamed = judge(
        records["A2"],
        "Unknown Logitech device",
        D("2026-07-01"),
        Sighting(D("2026-06-12"), "Unknown Logitech device"),
    )
    assert (
        "extension-excluded-component" in unnamed.flags and "extension-serial-mismatch" not in unnamed.flags
    )
    # A row judged by its own product column shows that product.
    assert dict(rows.shared())["A2"].product == "Rally Mic Pod Hub"


def test_a_unit_read_through_another_is_found_without_a_first_day() -> None:
    """A bar's mic pod: its own first sighting is not kept (each reading is dated), so it is
    verified with ``first_seen`` null rather than a day that moves with every scan."""
    from agent.coverage import coverage_units

    pod = unit("2220MP0011A1", "Rally Mic Pod")
    bar, found = coverage_units([unit("2313FD1N08Z2", "Rally Bar", [pod])])
    assert (bar.first_seen, found.first_seen) == (D("2026-06-12"), None)
    verdict = judge(
        row("2220MP0011A1", extension_purchased=D("2026-06-02")),
        "Rally Mic Pod",
        D("2026-07-01"),
        found.sighting,
    )
    assert (verdict.serial_verified, verdict.first_seen) == (True, None)
