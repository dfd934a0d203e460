"""Verdicts of entitlement records as units no scan found (``agent.coverage.RowVerdicts``):
worked out once per shape, never held per record, and always what evaluating each record on
its own gives (issue [13/16]: a 1.85 M-row file)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import coverage
from agent.coverage import RowVerdicts, Status, Verdict, evaluate, evaluate_all
from agent.entitlements import COLUMNS, EntitlementRecord, Entitlements, parse_entitlements, record_shape
from tests.test_coverage import CATALOG
from tests.test_coverage_properties import records
from tests.test_entitlements import _to_csv

SERIALS = [*(f"S{i}" for i in range(8)), 'Q-"1\\', "ÆØ2"]  # two JSON must escape or may keep
TEXTS = st.sampled_from(["SEL-1", "SEL-2", "HZ-9", "x"])
DAYS = st.dates(min_value=date(2016, 1, 1), max_value=date(2032, 12, 31))


@st.composite
def record_lists(draw: st.DrawFn) -> list[EntitlementRecord]:
    """Records of distinct serials, many of them a copy of an earlier one's content under
    another serial and other contract texts (the records that share a verdict), or with a
    contract there or not (the records that look alike, and may not share one)."""
    serials = draw(st.lists(st.sampled_from(SERIALS), min_size=1, max_size=len(SERIALS), unique=True))
    out: list[EntitlementRecord] = []
    for serial in serials:
        if out and draw(st.booleans()):
            like = draw(st.sampled_from(out))
            toggle = draw(st.sampled_from(["", "select_contract", "reseller_contract"]))
            texts = {
                column: (draw(TEXTS) if getattr(like, column) is None else None)
                if column == toggle
                else getattr(like, column) and draw(TEXTS)
                for column in ("select_contract", "reseller_contract")
            }
            out.append(
                replace(
                    like,
                    serial=serial,
                    **texts,
                    replaced_serial=None if like.replaced_serial == serial else like.replaced_serial,
                    replacement_date=None if like.replaced_serial == serial else like.replacement_date,
                )
            )
        else:
            record = draw(records(serial))
            if record.replaced_serial == serial:  # a unit cannot replace itself (import refuses)
                record = replace(record, replaced_serial=None, replacement_date=None)
            out.append(record)
    return out


def imported(rows: list[EntitlementRecord]) -> Entitlements:
    """The records as an import of a CSV file holding them (packed)."""
    return parse_entitlements(_to_csv(rows, ",", list(COLUMNS)))


def one_by_one(ents: Entitlements, today: date) -> list[Verdict]:
    """Each record's verdict as a unit of unknown product, worked out on its own."""
    return evaluate_all([(r.serial, None) for r in ents.values()], ents, CATALOG, today)


def as_dicts(verdicts: Any) -> list[tuple[dict[str, Any], str]]:
    return [(v.to_dict(), v.reason) for v in verdicts]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=record_lists(), today=DAYS, packed=st.booleans(), data=st.data())
def test_row_verdicts_are_each_records_own(
    rows: list[EntitlementRecord], today: date, packed: bool, data: st.DataObject
) -> None:
    ents = imported(rows) if packed else Entitlements.of(rows)
    expected = one_by_one(ents, today)
    book = RowVerdicts(ents, CATALOG, today)
    assert as_dicts(book.verdicts()) == as_dicts(expected)
    assert book.counts() == {status: Counter(v.status for v in expected)[status] for status in Status}
    # Some of them: the units a scan found, listed with their own verdicts, not again.
    skip = set(data.draw(st.lists(st.sampled_from([*SERIALS, "NOT-A-RECORD"]), unique=True)))
    rest = [v for v in expected if v.serial not in skip]
    assert as_dicts(book.verdicts(skip=skip)) == as_dicts(rest)
    assert book.counts(skip=skip) == {status: Counter(v.status for v in rest)[status] for status in Status}
    # From any position on, as a page of /v1/coverage starts; as JSON, as the whole one.
    start = data.draw(st.integers(0, len(rows)))
    assert as_dicts(book.verdicts(start)) == as_dicts(expected[start:])
    texts = list(book.texts(start, skip=skip))
    assert [json.loads(text) for text in texts] == [
        v.to_dict() for v in expected[start:] if v.serial not in skip
    ]
    assert texts == [
        json.dumps(v.to_dict(), ensure_ascii=False).encode() for v in book.verdicts(start, skip=skip)
    ]
    groups = book.groups(skip=skip)
    assert sorted(s for _, serials in groups for s in serials) == sorted(v.serial for v in rest)
    for verdict, serials in groups:
        assert {json.dumps(replace(verdict, serial=s).to_dict()) for s in serials} <= {
            json.dumps(v.to_dict()) for v in rest
        }
    for at, serial in enumerate(ents):
        assert ents.index_of(serial) == at
    assert ents.index_of("NOT-A-RECORD") is None


@settings(max_examples=200, deadline=None)
@given(record=records("S1"), serial=st.sampled_from(SERIALS[2:]), texts=st.tuples(TEXTS, TEXTS), today=DAYS)
def test_a_records_shape_is_all_its_verdict_depends_on(
    record: EntitlementRecord, serial: str, texts: tuple[str, str], today: date
) -> None:
    """Two records of one shape get one verdict (as units of unknown product): the serial
    and the contracts' texts, which the shape leaves out, change nothing else."""
    if record.replaced_serial is not None:
        assert record_shape(record) is None  # worked out on its own: it follows another unit
        record = replace(record, replaced_serial=None, replacement_date=None)
    other = replace(
        record,
        serial=serial,
        select_contract=record.select_contract and texts[0],
        reseller_contract=record.reseller_contract and texts[1],
    )
    assert record_shape(other) == record_shape(record)
    ents = Entitlements.of([record, other])
    first = evaluate(record.serial, None, record, ents, CATALOG, today)
    second = evaluate(other.serial, None, other, ents, CATALOG, today)
    assert replace(second, serial=record.serial) == first


@settings(max_examples=60, deadline=None)
@given(rows=record_lists())
def test_packed_shapes_are_equal_when_the_records_shapes_are(rows: list[EntitlementRecord]) -> None:
    """An import's shapes come from its packed columns; they tell records apart exactly as
    ``record_shape`` does."""
    ents = imported(rows)
    packed = {key: shape for key, _, shape in ents.shapes()}
    plain = {key: record_shape(record) for key, record in ents.items()}
    assert [key for key, _, _ in ents.shapes()] == list(ents)
    for a in ents:
        assert (packed[a] is None) == (plain[a] is None)
        for b in ents:
            if packed[a] is not None and packed[b] is not None:
                assert (packed[a] == packed[b]) == (plain[a] == plain[b]), (a, b)


def test_shapes_and_positions_across_the_blocks_of_a_large_file() -> None:
    """A file of many 256 KB blocks: a position is found, and listing starts there, in any
    block (the first row of a block, the last, one inside)."""
    lines = ["serial,purchase_date,country,select_contract"]
    for i in range(30_000):
        contract = f"SEL-{i // 7}" if i % 3 == 0 else ""
        country = ["NO", "US", "JP"][i % 3]
        lines.append(f"U{i:07d}XYZW,20{18 + i % 7}-0{1 + i % 9}-1{i % 10},{country},{contract}")
    ents = parse_entitlements("\n".join(lines) + "\n")
    serials = list(ents)
    assert len(serials) == 30_000
    for at in (0, 1, 8_000, 9_999, 10_000, 17_321, 29_999):
        assert ents.index_of(serials[at]) == at
        assert [key for key, _, _ in ents.shapes(at)] == serials[at:]
    assert list(ents.shapes(30_000)) == []
    shapes = Counter(shape for _, _, shape in ents.shapes())
    assert len(shapes) < 30_000 / 10  # records share shapes: the point of them
    today = date(2026, 12, 2)
    book = RowVerdicts(ents, CATALOG, today)
    assert as_dicts(book.verdicts(17_000)) == as_dicts(one_by_one(ents, today)[17_000:])


def test_the_shape_memo_is_bounded_and_changes_no_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coverage, "MAX_SHAPES", 5)
    rows = [f"U{i:05d}X,20{18 + i % 8}-0{1 + i % 9}-15,{['NO', 'US', 'JP', 'GB'][i % 4]}" for i in range(400)]
    ents = parse_entitlements("serial,purchase_date,country\n" + "\n".join(rows) + "\n")
    today = date(2026, 12, 2)
    book = RowVerdicts(ents, CATALOG, today)
    expected = one_by_one(ents, today)
    assert as_dicts(book.verdicts()) == as_dicts(expected)
    assert book.counts() == {status: Counter(v.status for v in expected)[status] for status in Status}
    assert [json.loads(t) for t in book.texts(7)] == [v.to_dict() for v in expected[7:]]
    assert [json.loads(t) for t in book.texts(7)] == [v.to_dict() for v in expected[7:]]  # kept ones
    listed = {s: replace(v, serial=s) for v, serials in book.groups() for s in serials}
    assert as_dicts(listed[v.serial or ""] for v in expected) == as_dicts(expected)
    assert len(book._by_shape) == len(book._texts) == 5


def test_replaced_units_coverage_is_remembered_only_for_replaced_units() -> None:
    """The evaluator remembers ``covered_until`` of the units a replacement names (a chain is
    followed once), not of every record: a run over 1.85 M records kept 1.85 M entries."""
    rows = [
        EntitlementRecord(serial=f"P{i}", purchase_date=date(2022, 1, 1 + i), country="NO") for i in range(20)
    ]
    for serial, replaced, day in (("R1", "P3", date(2023, 5, 1)), ("R2", "R1", date(2024, 5, 1))):
        rows.append(
            EntitlementRecord(
                serial=serial, purchase_date=day, replaced_serial=replaced, replacement_date=day
            )
        )
    ents = Entitlements.of(rows)
    book = RowVerdicts(ents, CATALOG, date(2026, 12, 2))
    assert len(list(book.verdicts())) == 22
    assert {serial for serial, _ in book._evaluator._until} == {"P3", "R1"}
