"""Site summary rules S3, S10, S11, with counts on and around every boundary."""

from __future__ import annotations

from datetime import date

import pytest

from agent.coverage import Layer, LayerKind, Status, Verdict
from agent.site import TIER_EXCEEDED, summarize

TODAY = date(2026, 11, 21)


def verdict(serial: str, *, select_until: date | None = None, status: Status = Status.IN_WARRANTY) -> Verdict:
    layers = [Layer(LayerKind.STANDARD, date(2025, 1, 1), date(2026, 12, 31), ("W1",))]
    if select_until is not None:
        layers.append(Layer(LayerKind.SELECT, date(2025, 2, 1), select_until, ("S4", "S5", "S7", "S8")))
    return Verdict(serial, "Rally Bar", status, max(layer.until for layer in layers), tuple(layers), (), "")


def site(active_rooms: int, *, expired_rooms: int = 0, tier: str | None = None):
    units = [(verdict(f"A{i}", select_until=date(2027, 1, 31)), f"room-{i}") for i in range(active_rooms)]
    units += [(verdict(f"E{i}", select_until=date(2026, 11, 20)), f"old-{i}") for i in range(expired_rooms)]
    return summarize(units, [], TODAY, enterprise_tier=tier)


@pytest.mark.parametrize("rooms, spares", [(0, 0), (49, 0), (50, 1), (99, 1), (100, 2), (149, 2), (150, 3)])
def test_s11_room_licences_give_one_spare_per_50_active_rooms(rooms: int, spares: int):
    assert site(rooms).spares_due == spares


def test_s11_counts_rooms_with_an_active_licence_only():
    summary = site(49, expired_rooms=10)
    assert (summary.select_rooms_active, summary.spares_due, summary.rooms) == (49, 0, 59)


def test_s11_a_room_with_two_select_units_counts_once():
    until = date(2027, 1, 1)
    units = [(verdict("A", select_until=until), "r1"), (verdict("B", select_until=until), "r1")]
    assert summarize(units, [], TODAY).select_rooms_active == 1


@pytest.mark.parametrize(
    "tier, spares", [("100", 1), ("250", 2), ("500", 3), ("1000", 5), ("2000", 10), ("5000", 15), ("SLX", 20)]
)
def test_s11_enterprise_tiers(tier: str, spares: int):
    summary = site(3, tier=tier)
    assert summary.spares_due == spares and summary.dedicated_service_manager


@pytest.mark.parametrize("rooms, dsm", [(49, False), (50, True)])
def test_s10_dedicated_service_manager_from_50_rooms(rooms: int, dsm: bool):
    assert site(rooms).dedicated_service_manager is dsm


@pytest.mark.parametrize(
    "tier, rooms, exceeded",
    [("100", 100, False), ("100", 101, True), ("250", 251, True), ("SLX", 300, False)],
)
def test_s3_tier_exceeded(tier: str, rooms: int, exceeded: bool):
    summary = site(rooms, tier=tier)
    assert (TIER_EXCEEDED in summary.flags) is exceeded
    assert "S3" in summary.rules


def test_counts_per_status_and_unassigned_units():
    units = [
        (verdict("A", status=Status.OUT_OF_WARRANTY), "r1"),
        (verdict("B", status=Status.UNKNOWN), None),
        (verdict("C"), "r2"),
    ]
    summary = summarize(units, ["r3"], TODAY)
    assert summary.by_status == {"out_of_warranty": 1, "expiring_soon": 0, "unknown": 1, "in_warranty": 1}
    assert (summary.rooms, summary.units) == (3, 3)
    assert summary.to_dict()["by_status"]["unknown"] == 1
