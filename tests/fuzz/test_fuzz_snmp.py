"""Fuzz: SNMP values → observations (agent/collectors/snmp/entity.py, the sweep's walk of
ENTITY-MIB in agent/discovery/snmp.py) and SNMP target specifications.

A responder can put any ASN.1 type in any column, any bytes in an OctetString, any object id
in a GETBULK answer (repeated, decreasing, outside the column), rows short or long. Documented
behaviour: the entity functions never raise (they are pure, "values in, one observation
out"); a walk ends (loop detection, a row cap) and keeps what it read; targets give a list or
:class:`TargetError` (``check_targets`` lists problems and never raises).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from pysnmp.proto.api import v2c

from agent.catalog import load_catalog
from agent.collectors.snmp.client import SnmpError, SnmpTimeout
from agent.collectors.snmp.entity import (
    DESCR_MAX,
    ENT_PHYSICAL_ENTRY,
    ENTITY_COLUMNS,
    SYS_DESCR,
    SYS_NAME,
    SYS_OBJECT_ID,
    SYSTEM_OIDS,
    SystemInfo,
    entity_rows,
    object_id_text,
    observe,
    snmp_text,
)
from agent.discovery import ScanContext
from agent.discovery.snmp import SnmpSweep, walk_columns
from agent.discovery.targets import MAX_ADDRESSES, Target, TargetError, check_targets, parse_targets
from tests.fuzz import check_observation, fuzz, has_control_chars

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()
CTX = ScanContext(CATALOG, NOW)

_OIDS = st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=16).map(lambda arcs: (1, 3, *arcs))
_TEXTS = st.sampled_from(
    [
        "Logitech Rally Bar",
        "RallyBar-1L5V32",
        "Linux 5.10 aarch64",
        "Logitech",
        "2313FD1N08Z2",
        "N/A",
        "0000000000",
        "To be filled by O.E.M.",
    ]
)
#: What a decoded GET/GETBULK answer can hold, plus Python types the code should survive.
SNMP_VALUES = st.one_of(
    st.binary(max_size=300).map(v2c.OctetString),
    st.text(max_size=200).map(lambda t: v2c.OctetString(t.encode("utf-8", "surrogatepass"))),
    _TEXTS.map(lambda t: v2c.OctetString(t.encode())),
    st.binary(max_size=40).map(lambda b: v2c.OctetString(b + b"\x00" * 20)),  # NUL padded
    st.integers(-(2**31), 2**31 - 1).map(v2c.Integer),
    st.integers(0, 2**32 - 1).map(v2c.Counter32),
    st.integers(0, 2**32 - 1).map(v2c.Gauge32),
    st.integers(0, 2**32 - 1).map(v2c.TimeTicks),
    st.integers(0, 2**32 - 1).map(v2c.Unsigned32),
    st.integers(0, 2**64 - 1).map(v2c.Counter64),
    _OIDS.map(v2c.ObjectIdentifier),
    st.binary(min_size=4, max_size=4).map(v2c.IpAddress),
    st.binary(max_size=40).map(v2c.Opaque),
    st.binary(max_size=4).map(v2c.Bits),
    st.just(v2c.Null("")),
    st.sampled_from([v2c.NoSuchObject(""), v2c.NoSuchInstance(""), v2c.EndOfMibView("")]),
    st.none(),
    st.integers(),
    st.text(max_size=20),
    st.binary(max_size=20),
)
#: Column 5 (entPhysicalClass) is an integer; give it plausible ones often.
_CLASS_VALUES = st.integers(-2, 20).map(v2c.Integer) | SNMP_VALUES
_INDEXES = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3).map(tuple)


def _columns() -> st.SearchStrategy[dict[int, list[tuple[tuple[int, ...], Any]]]]:
    column = st.sampled_from([*ENTITY_COLUMNS, 1, 3, 99])
    return st.dictionaries(column, st.lists(st.tuples(_INDEXES, SNMP_VALUES), max_size=6), max_size=10)


@fuzz(280)
@given(SNMP_VALUES, st.integers(1, 600), st.booleans())
@example(v2c.OctetString(b"\xff\xfe\x00\x01" * 200), 128, False)
@example(v2c.OctetString(b"2313FD1N08Z2\x00\x00\x00"), 64, True)
@example(v2c.IpAddress(b"\x0a\x00\x00\x01"), 128, False)
def test_snmp_text_is_clean_and_capped(value: Any, max_len: int, serial: bool) -> None:
    text = snmp_text(value, max_len=max_len, serial=serial)
    if text.value is not None:
        assert 0 < len(text.value) <= max_len
        assert not has_control_chars(text.value)
        assert text.value == text.value.strip()
    assert all(isinstance(p, str) for p in text.problems)


@fuzz(140)
@given(SNMP_VALUES)
def test_object_id_text_is_dotted_numbers_or_none(value: Any) -> None:
    text = object_id_text(value)
    assert text is None or all(part.isdigit() for part in text.split("."))


@fuzz(80)
@given(
    st.dictionaries(st.sampled_from([*SYSTEM_OIDS, (1, 3, 6, 1, 2, 1, 1, 3, 0)]), SNMP_VALUES),
    _columns(),
    st.lists(st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=60), max_size=3),
)
def test_values_become_one_clean_observation(
    system_values: dict[tuple[int, ...], Any], columns: dict[int, list[Any]], problems: list[str]
) -> None:
    system = SystemInfo.from_values(system_values)
    assert system.descr.value is None or len(system.descr.value) <= DESCR_MAX
    rows = entity_rows(columns)
    assert len({r.index for r in rows}) == len(rows)
    obs = observe("10.0.0.5", system, rows, CATALOG, NOW, entity_problems=problems)
    check_observation(obs)
    assert obs.serial is None or len(obs.serial) <= 128


# --------------------------------------------------------------------------- the walk


class FuzzAgent:
    """A fake SnmpClient whose GETBULK answers hypothesis writes: rows of any length, object
    ids that repeat, go backwards or leave the column, any value type, errors mid-walk. After
    ``FUZZED`` requests it answers like a well-behaved agent with an endless table."""

    FUZZED = 12

    def __init__(self, data: st.DataObject, *, endless: bool = True) -> None:
        self.data = data
        self.endless = endless
        self.requests_sent = 0
        self.bulk_calls = 0

    async def get(self, address: tuple[str, int], oids: Any) -> list[tuple[tuple[int, ...], Any]]:
        self.requests_sent += 1
        kind = self.data.draw(
            st.sampled_from(["answer", "answer", "answer", "timeout", "error"]), label="get"
        )
        if kind == "timeout":
            raise SnmpTimeout("no answer")
        if kind == "error":
            raise SnmpError("agent answered error-status 5 (genErr)")
        values = self.data.draw(st.lists(SNMP_VALUES, min_size=len(oids), max_size=len(oids)), label="system")
        return list(zip(oids, values, strict=True))

    async def get_bulk(
        self, address: tuple[str, int], oids: list[tuple[int, ...]], repetitions: int
    ) -> list[list[tuple[tuple[int, ...], Any]]]:
        self.requests_sent += 1
        self.bulk_calls += 1
        assert self.bulk_calls < 2_000, "the walk does not end"
        if self.bulk_calls > self.FUZZED:
            if not self.endless:
                return [[(oid, v2c.EndOfMibView("")) for oid in oids]]
            return [[((*oid, r + 1), v2c.OctetString(b"x")) for oid in oids] for r in range(repetitions)]
        if self.data.draw(st.integers(0, 9), label="fail") == 0:
            raise SnmpError("request timed out")
        rows = self.data.draw(st.integers(0, 4), label="rows")
        table = []
        for _ in range(rows):
            width = self.data.draw(
                st.sampled_from([len(oids), len(oids), 0, 1, len(oids) + 1]), label="width"
            )
            row = []
            for i in range(width):
                base = oids[i % len(oids)] if oids else (1, 3)
                oid = self.data.draw(
                    st.one_of(
                        st.just((*base, 1)),  # the next row
                        st.integers(0, 2**32 - 1).map(lambda n, b=base: (*b[:12], n)),  # any row
                        st.just(base),  # repeated
                        st.just(base[:-1]) if len(base) > 1 else st.just(base),  # backwards
                        _OIDS,  # anywhere
                    ),
                    label="oid",
                )
                row.append((oid, self.data.draw(SNMP_VALUES, label="value")))
            table.append(row)
        return table


@fuzz(60, deadline=timedelta(seconds=5))
@given(st.data(), st.integers(1, 60), st.integers(1, 16))
def test_walk_ends_and_keeps_what_it_read(data: st.DataObject, max_rows: int, repetitions: int) -> None:
    agent = FuzzAgent(data)
    columns = {c: (*ENT_PHYSICAL_ENTRY, c) for c in ENTITY_COLUMNS}
    cells, problems = asyncio.run(
        walk_columns(
            agent,
            ("10.0.0.5", 161),
            columns,  # type: ignore[arg-type]
            max_rows=max_rows,
            repetitions=repetitions,
        )
    )
    assert set(cells) == set(columns)
    for column, found in cells.items():
        assert len(found) <= max_rows
        indexes = [index for index, _ in found]
        full = [(*columns[column], *index) for index in indexes]
        assert full == sorted(set(full)), "object ids must strictly increase within a column"
    assert all(isinstance(p, str) and p for p in problems)
    check_observation(
        observe(
            "10.0.0.5", SystemInfo.from_values({}), entity_rows(cells), CATALOG, NOW, entity_problems=problems
        )
    )


@fuzz(60, deadline=timedelta(seconds=5))
@given(st.data())
def test_sweep_reports_every_responder_or_an_error(data: st.DataObject) -> None:
    agent = FuzzAgent(data, endless=False)
    target = Target("10.0.0.5", 161)
    result = asyncio.run(SnmpSweep(agent, [target], CTX).run())  # type: ignore[arg-type]
    assert len(result.observations) + len(result.errors) + result.stats.silent >= 1
    for obs in result.observations:
        check_observation(obs)
        assert obs.address == target.address


@fuzz(70)
@given(
    st.dictionaries(
        st.sampled_from([SYS_DESCR, SYS_OBJECT_ID, SYS_NAME]),
        _TEXTS.map(lambda t: v2c.OctetString(t.encode())) | _OIDS.map(v2c.ObjectIdentifier),
    )
)
def test_catalog_matching_survives_any_identity(values: dict[tuple[int, ...], Any]) -> None:
    check_observation(observe("10.0.0.5", SystemInfo.from_values(values), [], CATALOG, NOW))


# --------------------------------------------------------------------------- targets

_SPEC_PARTS = st.sampled_from(
    [
        "10.0.0.1",
        "10.0.0.0/24",
        "[fd00::1]",
        "fd00::/120",
        "host",
        "a.b",
        ":",
        "/",
        "[",
        "]",
        "161",
        "0",
        "65536",
        "²",
        "٣",
        "-",
        ".",
        " ",
        "10.0.0.0/8",
        "::",
        "%eth0",
        "1" * 30,
    ]
)
TARGET_SPECS = st.one_of(st.text(max_size=40), st.lists(_SPEC_PARTS, max_size=5).map("".join))


@fuzz(210)
@given(st.lists(TARGET_SPECS, max_size=4), st.integers(1, 65535))
@example(["1.2.3.4:²"], 161)
@example(["10.0.0.0/24:٣"], 161)
def test_targets_parse_or_list_every_problem(specs: list[str], port: int) -> None:
    problems = check_targets(specs, port)
    assert all(isinstance(p, str) and p for p in problems)
    assert not any("invalid literal" in p for p in problems), problems  # Python's words, not ours
    try:
        targets = parse_targets(specs, port, max_addresses=512)
    except TargetError as exc:
        assert exc.problems
        return
    assert len(targets) <= 512 or len(targets) <= MAX_ADDRESSES
    assert all(1 <= t.port <= 65535 and t.host for t in targets)
