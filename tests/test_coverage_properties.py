"""Properties of the coverage rules over generated entitlement records (hypothesis)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.coverage import (
    Flag,
    LayerKind,
    Status,
    Verdict,
    add_days,
    add_years,
    evaluate,
    evaluate_all,
    period_end,
)
from agent.entitlements import Customer, EntitlementRecord, Entitlements
from tests.test_coverage import CATALOG

# 200 examples a property: 3.5-4.7 s each, ~30 s for the file (measured on the shared 2-core box).
pytestmark = pytest.mark.slow

SERIALS = [f"S{i}" for i in range(6)]
PRODUCTS = ["Tap", "Rally Bar", "Rally Bar Huddle", "PTZ Pro 2", "Three Year Cam", "Not In Catalog", None]
dates = st.dates(min_value=date(2015, 1, 1), max_value=date(2035, 12, 31))
# Purchase dates near the rules' boundaries are drawn far more often than chance would.
purchase_dates = st.one_of(
    dates,
    st.sampled_from(
        [date(2020, 2, 29), date(2020, 3, 6), date(2020, 3, 7), date(2024, 2, 29), date(2021, 2, 28)]
    ),
)
maybe = st.none


@st.composite
def records(draw: st.DrawFn, serial: str | None = None) -> EntitlementRecord:
    bought = draw(maybe() | purchase_dates)
    near = bought or date(2022, 1, 1)
    offset = st.integers(-400, 2500).map(lambda days: near + timedelta(days=days))
    replaced = draw(maybe() | st.sampled_from([*SERIALS, "GONE1"]))
    reseller_until = draw(maybe() | offset)
    if bought and reseller_until and reseller_until < bought:
        reseller_until = None
    return EntitlementRecord(
        serial=serial or draw(st.sampled_from(SERIALS)),
        purchase_date=bought,
        country=draw(maybe() | st.sampled_from(["NO", "US", "GB", "DE", "CH", "JP", "CA"])),
        customer=draw(st.sampled_from(list(Customer))),
        extension_years=draw(maybe() | st.integers(0, 6)),
        extension_purchased=draw(maybe() | st.integers(-10, 45).map(lambda d: near + timedelta(days=d))),
        select_contract=draw(maybe() | st.just("SEL-1")),
        select_order_date=draw(maybe() | offset),
        select_activation_date=draw(maybe() | offset),
        select_term_years=draw(maybe() | st.integers(0, 6)),
        select_registered=draw(maybe() | offset),
        reseller_contract=draw(maybe() | st.just("HZ-1")),
        reseller_until=reseller_until,
        replaced_serial=replaced,
        replacement_date=draw(offset) if replaced else None,
    )


@st.composite
def record_sets(draw: st.DrawFn) -> Entitlements:
    serials = draw(st.lists(st.sampled_from(SERIALS), min_size=1, max_size=len(SERIALS), unique=True))
    return Entitlements.of([draw(records(serial)) for serial in serials])


def judge(record: EntitlementRecord, records: Entitlements, product: str | None, today: date) -> Verdict:
    return evaluate(record.serial, product, record, records, CATALOG, today)


common = settings(max_examples=200, deadline=None)


@common
@given(records=record_sets(), product=st.sampled_from(PRODUCTS), today=dates, more=st.integers(1, 5))
def test_more_extension_years_never_shorten_coverage(
    records: Entitlements, product: str | None, today: date, more: int
) -> None:
    record = next(iter(records.values()))
    longer = replace(record, extension_years=(record.extension_years or 0) + more)
    before = judge(record, records, product, today).covered_until
    after = judge(
        longer, Entitlements.of([longer, *(r for r in records.values() if r is not record)]), product, today
    ).covered_until
    assert before is None or (after is not None and after >= before)


@common
@given(records=record_sets(), product=st.sampled_from(PRODUCTS), today=dates)
def test_select_never_reaches_the_fifth_birthday(
    records: Entitlements, product: str | None, today: date
) -> None:
    for record in records.values():
        for layer in judge(record, records, product, today).layers:
            if layer.kind is LayerKind.SELECT:
                assert record.purchase_date is not None
                assert layer.until < add_years(record.purchase_date, 5)  # S7


@common
@given(records=record_sets(), product=st.sampled_from(PRODUCTS), today=dates)
def test_a_replacement_is_covered_for_at_least_30_days(
    records: Entitlements, product: str | None, today: date
) -> None:
    for record in records.values():
        verdict = judge(record, records, product, today)
        if record.replacement_date is not None:
            assert verdict.covered_until is not None
            assert verdict.covered_until >= add_days(record.replacement_date, 29)  # W8, S11
            assert any(layer.kind is LayerKind.REPLACEMENT for layer in verdict.layers)


@common
@given(records=record_sets(), product=st.sampled_from(PRODUCTS), today=dates)
def test_coverage_is_never_shorter_than_the_standard_warranty(
    records: Entitlements, product: str | None, today: date
) -> None:
    for record in records.values():
        verdict = judge(record, records, product, today)
        standard = [layer for layer in verdict.layers if layer.kind is LayerKind.STANDARD]
        assert bool(standard) == (record.purchase_date is not None)  # W1
        if standard:
            assert standard[0].until == period_end(standard[0].start, CATALOG.warranty_years(product))
            assert verdict.covered_until is not None and verdict.covered_until >= standard[0].until


@common
@given(records=record_sets(), product=st.sampled_from(PRODUCTS), today=dates)
def test_status_follows_covered_until(records: Entitlements, product: str | None, today: date) -> None:
    for record in records.values():
        verdict = judge(record, records, product, today)
        cu = verdict.covered_until
        if cu is None:
            assert verdict.status is Status.UNKNOWN
            assert "unknown-purchase-date" in verdict.flags
        elif today > cu:
            assert verdict.status is Status.OUT_OF_WARRANTY
        else:
            expected = Status.EXPIRING_SOON if (cu - today).days < 90 else Status.IN_WARRANTY
            assert verdict.status is expected
        assert cu == max((layer.until for layer in verdict.layers), default=None)
        # Out of warranty stays out: a later day never brings coverage back.
        if verdict.status is Status.OUT_OF_WARRANTY:
            later = judge(record, records, product, today + timedelta(days=365))
            assert later.status is Status.OUT_OF_WARRANTY


@common
@given(records=record_sets(), product=st.sampled_from(PRODUCTS), today=dates)
def test_verdicts_are_well_formed(records: Entitlements, product: str | None, today: date) -> None:
    known_flags = {str(f) for f in Flag}
    for record in records.values():
        verdict = judge(record, records, product, today)
        kinds = [layer.kind for layer in verdict.layers]
        assert kinds == sorted(set(kinds), key=list(LayerKind).index)
        assert all(layer.start <= layer.until for layer in verdict.layers)
        assert list(verdict.flags) == sorted(set(verdict.flags)) and set(verdict.flags) <= known_flags
        assert verdict.reason and "\n" not in verdict.reason
        data = json.loads(json.dumps(verdict.to_dict()))
        assert set(data) == {
            "serial",
            "product",
            "status",
            "covered_until",
            "layers",
            "flags",
            "serial_verified",
            "first_seen",
            "check_by",
        }
        assert verdict == judge(record, records, product, today)  # pure: same input, same verdict


@common
@given(records=record_sets(), product=st.sampled_from(PRODUCTS), today=dates, order=st.permutations(SERIALS))
def test_evaluate_all_agrees_with_evaluate(
    records: Entitlements, product: str | None, today: date, order: list[str]
) -> None:
    units = [(serial, product) for serial in order]
    together = evaluate_all(units, records, CATALOG, today)
    one_by_one = [evaluate(s, product, records.get(s), records, CATALOG, today) for s in order]
    assert together == one_by_one
