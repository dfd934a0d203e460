"""The snapshot builder's coverage memo: the verdicts of a build that reuses it equal a
fresh evaluation, on the same day and on the next (a new day evaluates again)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from agent.catalog import load_catalog
from agent.coverage import evaluate_all
from agent.entitlements import load_entitlements
from agent.model import Device, SerialSource, Transport
from agent.uploader.snapshot import SnapshotContext, verdicts_for

REPO = Path(__file__).resolve().parents[1]
DAY = date(2025, 6, 1)


def unit(serial: str, product: str) -> Device:
    from datetime import UTC, datetime

    seen = datetime(2025, 6, 1, tzinfo=UTC)
    return Device(
        product=product,
        transport=Transport.USB,
        address=f"1-{serial[-2:]}",
        first_seen=seen,
        last_seen=seen,
        serial=serial,
        serial_label_grade=True,
        serial_source=SerialSource.USB_DESCRIPTOR,
    )


def test_memoised_verdicts_equal_fresh_ones_and_a_new_day_is_evaluated_again() -> None:
    catalog = load_catalog()
    records = load_entitlements(REPO / "config" / "entitlements.example.csv")
    devices = [
        unit("2313FD1N08Z2", "Rally Bar"),
        unit("2104TP0007B3", "Tap"),
        unit("2206MU0042C9", "MeetUp"),
        unit("NOPE0001", "Scribe"),
    ]
    context = SnapshotContext(catalog, entitlements=records)

    def fresh(day: date) -> dict[str, dict]:
        found = evaluate_all([(d.serial, d.product) for d in devices], records, catalog, day)
        return {d.serial: v.to_dict() for d, v in zip(devices, found, strict=True) if d.serial}

    for day in (DAY, DAY, DAY + timedelta(days=400), DAY + timedelta(days=400), DAY):
        got = {k: v.to_dict() for k, v in verdicts_for(devices, context, day).items()}
        assert got == fresh(day), day
    # The days chosen do give different verdicts, so a stale memo would have been caught.
    assert fresh(DAY) != fresh(DAY + timedelta(days=400))
