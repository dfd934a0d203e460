"""Coverage rules of domain.md, one table per rule id, dates on and around every boundary."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.catalog import Catalog, load_catalog, parse_catalog
from agent.coverage import (
    URGENCY,
    Flag,
    LayerKind,
    Sighting,
    Status,
    Verdict,
    add_days,
    add_years,
    evaluate,
    evaluate_all,
    period_end,
    urgency_key,
)
from agent.entitlements import Customer, EntitlementRecord, Entitlements, load_entitlements

REPO = Path(__file__).resolve().parents[1]
D = date.fromisoformat
#: When a scan first found the units these tests judge as found (W9).
FOUND = D("2023-01-02")

#: A small catalog of our own, so that these tests do not move when the shipped one grows.
CATALOG: Catalog = parse_catalog(
    {
        "default_standard_warranty_years": 2,
        "product": [
            {
                "name": "Tap",
                "family": "controller",
                "extension_eligible": True,
                "select_supported": True,
                "reseller_supported": True,
                "standard_warranty_years": 2,
            },
            {
                "name": "Rally Bar",
                "family": "collabos-bar",
                "select_supported": True,
                "reseller_supported": True,
            },
            {"name": "Rally Bar Huddle", "family": "collabos-bar", "select_supported": True},
            {"name": "PTZ Pro 2", "family": "camera"},
            {
                "name": "Three Year Cam",
                "family": "camera",
                "standard_warranty_years": 3,
                "extension_eligible": True,
                "select_supported": True,
                "reseller_supported": True,
            },
        ],
    }
)


def rec(serial: str = "U1", **fields: Any) -> EntitlementRecord:
    """A record of a business customer in Norway unless told otherwise."""
    fields.setdefault("country", "NO")
    fields.setdefault("customer", Customer.BUSINESS)
    return EntitlementRecord(serial=serial, **fields)


def judge(
    record: EntitlementRecord | None,
    today: str | date = "2024-06-01",
    product: str | None = "Tap",
    others: tuple[EntitlementRecord, ...] = (),
    **kw: Any,
) -> Verdict:
    records = Entitlements.of([*([record] if record else []), *others])
    day = today if isinstance(today, date) else D(today)
    serial = record.serial if record else "NONE1"
    if product is not None:  # a unit a scan found (W9: its serial verified), unless said otherwise
        kw.setdefault("seen", Sighting(FOUND, product))
    return evaluate(serial, product, record, records, CATALOG, day, **kw)


def layer(verdict: Verdict, kind: LayerKind) -> tuple[str, str] | None:
    found = [x for x in verdict.layers if x.kind is kind]
    assert len(found) <= 1
    return (found[0].start.isoformat(), found[0].until.isoformat()) if found else None


# --- date arithmetic ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "years", "expected"),
    [
        ("2022-03-15", 2, "2024-03-15"),
        ("2024-02-29", 1, "2025-02-28"),  # no 29 February: the 28th
        ("2024-02-29", 4, "2028-02-29"),  # a leap year again
        ("2023-02-28", 1, "2024-02-28"),
        ("2021-12-31", 3, "2024-12-31"),
        ("9998-06-01", 5, "9999-12-31"),  # saturates
    ],
)
def test_add_years(day: str, years: int, expected: str) -> None:
    assert add_years(D(day), years) == D(expected)


@pytest.mark.parametrize(
    ("start", "years", "last"),
    [
        ("2022-03-15", 2, "2024-03-14"),
        ("2024-02-29", 2, "2026-02-27"),  # D + 2 years is 28 February: the day before is the last
        ("2024-02-29", 4, "2028-02-28"),
        ("2024-03-01", 1, "2025-02-28"),
        ("2023-03-01", 1, "2024-02-29"),  # a period ending in a leap year keeps 29 February
    ],
)
def test_period_end(start: str, years: int, last: str) -> None:
    assert period_end(D(start), years) == D(last)


def test_add_days_is_calendar_days() -> None:
    assert add_days(D("2024-01-31"), 30) == D("2024-03-01")
    assert add_days(D("2023-01-31"), 30) == D("2023-03-02")
    assert add_days(D("2023-12-01"), 60) == D("2024-01-30")
    assert add_days(date.max, 1) == date.max


# --- W1 standard warranty -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bought", "product", "today", "until", "status"),
    [
        ("2022-03-15", "Tap", "2024-03-14", "2024-03-14", Status.EXPIRING_SOON),  # last day
        ("2022-03-15", "Tap", "2024-03-15", "2024-03-14", Status.OUT_OF_WARRANTY),  # first day after
        ("2022-03-15", "Tap", "2022-03-15", "2024-03-14", Status.IN_WARRANTY),  # purchase day
        ("2024-02-29", "Tap", "2025-01-01", "2026-02-27", Status.IN_WARRANTY),  # leap purchase
        (
            "2020-02-29",
            "Three Year Cam",
            "2023-02-27",
            "2023-02-27",
            Status.EXPIRING_SOON,
        ),  # catalog: 3 years
        ("2020-02-29", "Three Year Cam", "2023-02-28", "2023-02-27", Status.OUT_OF_WARRANTY),
        ("2022-03-15", "Not In Catalog", "2024-06-01", "2024-03-14", Status.OUT_OF_WARRANTY),  # default 2
        ("2022-03-15", None, "2024-03-14", "2024-03-14", Status.EXPIRING_SOON),
    ],
)
def test_w1_standard_warranty(
    bought: str, product: str | None, today: str, until: str, status: Status
) -> None:
    v = judge(rec(purchase_date=D(bought)), today, product)
    assert layer(v, LayerKind.STANDARD) == (bought, until)
    assert [x.rules for x in v.layers] == [("W1",)]
    assert v.covered_until == D(until)
    assert v.status is status
    assert v.flags == ()


def test_w1_shipped_catalog_gives_the_schedule_a_products_two_years() -> None:
    catalog = load_catalog()
    record = rec(purchase_date=D("2022-03-15"))
    for product in ("Rally Camera", "Rally", "Rally Plus", "MeetUp", "Tap"):
        v = evaluate("U1", product, record, {"U1": record}, catalog, D("2023-01-01"))
        assert v.covered_until == D("2024-03-14"), product


# --- W2 extended warranty ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bought", "years", "product", "extended", "until"),
    [
        ("2022-03-15", 1, "Tap", ("2024-03-15", "2025-03-14"), "2025-03-14"),  # +1 = 3 years in total
        ("2022-03-15", 2, "Tap", ("2024-03-15", "2026-03-14"), "2026-03-14"),
        ("2022-03-15", 0, "Tap", None, "2024-03-14"),  # nothing bought
        ("2024-02-29", 1, "Tap", ("2026-02-28", "2027-02-27"), "2027-02-27"),  # leap purchase
        ("2022-03-15", 1, "Three Year Cam", ("2025-03-15", "2026-03-14"), "2026-03-14"),  # 3-year standard
        ("2022-03-15", 1, "Not In Catalog", ("2024-03-15", "2025-03-14"), "2025-03-14"),  # not judged
    ],
)
def test_w2_extension_adds_years_from_the_purchase_date(
    bought: str, years: int, product: str, extended: tuple[str, str] | None, until: str
) -> None:
    v = judge(
        rec(purchase_date=D(bought), extension_years=years, extension_purchased=D(bought)),
        "2023-01-01",
        product,
    )
    assert layer(v, LayerKind.EXTENDED) == extended
    assert v.covered_until == D(until)
    assert v.flags == ()
    if extended:
        extension = next(x for x in v.layers if x.kind is LayerKind.EXTENDED)
        assert extension.rules == ("W2", "W3", "W4", "W5", "W6")


@pytest.mark.parametrize("product", ["Rally Bar", "PTZ Pro 2"])
def test_w2_only_schedule_a_products(product: str) -> None:
    v = judge(
        rec(purchase_date=D("2022-03-15"), extension_years=1, extension_purchased=D("2022-03-15")),
        "2024-06-01",
        product,
    )
    assert layer(v, LayerKind.EXTENDED) is None
    assert v.flags == ("extension-ineligible-product",)
    assert v.reason == (
        f"standard warranty ended 2024-03-14 (W1); {product} is not in the extended "
        "warranty's schedule A (W2)"
    )


# --- W3 bought with the product or within 30 days ------------------------------------------------


@pytest.mark.parametrize(
    ("bought", "extension_bought", "valid"),
    [
        ("2022-03-15", "2022-03-15", True),  # with the product
        ("2022-03-15", "2022-03-01", True),  # ordered before the invoice date
        ("2022-03-15", "2022-04-13", True),  # day 29
        ("2022-03-15", "2022-04-14", True),  # day 30
        ("2022-03-15", "2022-04-15", False),  # day 31
        ("2023-01-31", "2023-03-02", True),  # day 30 across a short February
        ("2023-01-31", "2023-03-03", False),
        ("2024-01-31", "2024-03-01", True),  # day 30 in a leap year
        ("2024-01-31", "2024-03-02", False),
    ],
)
def test_w3_extension_bought_in_time(bought: str, extension_bought: str, valid: bool) -> None:
    v = judge(rec(purchase_date=D(bought), extension_years=1, extension_purchased=D(extension_bought)))
    assert (layer(v, LayerKind.EXTENDED) is not None) is valid
    assert v.flags == (() if valid else ("extension-bought-late",))


def test_w3_late_extension_reason_names_the_days() -> None:
    v = judge(
        rec(purchase_date=D("2022-01-01"), extension_years=1, extension_purchased=D("2022-02-15")),
        "2024-06-01",
    )
    assert v.status is Status.OUT_OF_WARRANTY
    assert v.reason == "standard warranty ended 2023-12-31 (W1); extension bought 45 days after purchase (W3)"


def test_w3_unknown_extension_purchase_date_is_flagged_not_honoured() -> None:
    v = judge(rec(purchase_date=D("2022-03-15"), extension_years=1))
    assert layer(v, LayerKind.EXTENDED) is None
    assert v.flags == ("extension-purchase-date-unknown",)


# --- W4 business customers only ------------------------------------------------------------------


@pytest.mark.parametrize(("customer", "valid"), [(Customer.BUSINESS, True), (Customer.CONSUMER, False)])
def test_w4_business_customers_only(customer: Customer, valid: bool) -> None:
    v = judge(
        rec(
            purchase_date=D("2022-03-15"),
            extension_years=1,
            extension_purchased=D("2022-03-15"),
            customer=customer,
        )
    )
    assert (layer(v, LayerKind.EXTENDED) is not None) is valid
    assert v.flags == (() if valid else ("extension-ineligible-customer",))


# --- W5 countries of schedule A -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "valid"),
    [
        ("US", True),
        ("GB", True),
        ("DE", True),
        ("FR", True),
        ("PL", True),
        ("IE", True),
        ("CY", True),
        ("NO", True),
        ("IS", True),
        ("LI", True),
        ("CH", True),  # EFTA
        ("CA", False),
        ("AU", False),
        ("JP", False),
        ("TR", False),
        ("RS", False),
        ("UA", False),
        (None, False),  # cannot be shown eligible
    ],
)
def test_w5_countries(country: str | None, valid: bool) -> None:
    v = judge(
        rec(
            purchase_date=D("2022-03-15"),
            extension_years=1,
            extension_purchased=D("2022-03-15"),
            country=country,
        )
    )
    assert (layer(v, LayerKind.EXTENDED) is not None) is valid
    assert v.flags == (() if valid else ("extension-ineligible-country",))


def test_w5_reason_names_the_country() -> None:
    v = judge(
        rec(
            purchase_date=D("2022-03-15"),
            extension_years=1,
            extension_purchased=D("2022-03-15"),
            country="CA",
        ),
        "2023-01-01",
    )
    assert v.reason == "standard warranty until 2024-03-14 (W1); extension not valid in CA (W5)"


# --- W6 bought after 6 March 2020 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("bought", "valid"),
    [
        ("2019-12-31", False),
        ("2020-03-05", False),
        ("2020-03-06", False),
        ("2020-03-07", True),
        ("2020-02-29", False),
    ],
)
def test_w6_purchase_date(bought: str, valid: bool) -> None:
    v = judge(rec(purchase_date=D(bought), extension_years=1, extension_purchased=D(bought)), "2021-01-01")
    assert (layer(v, LayerKind.EXTENDED) is not None) is valid
    assert v.flags == (() if valid else ("extension-ineligible-date",))


def test_every_failed_extension_condition_is_flagged_at_once() -> None:
    v = judge(
        rec(
            purchase_date=D("2019-05-01"),
            extension_years=2,
            extension_purchased=D("2019-07-01"),
            customer=Customer.CONSUMER,
            country="JP",
        ),
        "2022-01-01",
        "Rally Bar",
    )
    assert v.layers and [x.kind for x in v.layers] == [LayerKind.STANDARD]
    assert v.flags == (
        "extension-bought-late",
        "extension-ineligible-country",
        "extension-ineligible-customer",
        "extension-ineligible-date",
        "extension-ineligible-product",
    )
    assert list(v.flags) == sorted(v.flags)


# --- W8 replaced or repaired unit -----------------------------------------------------------------

ORIGINAL = rec("OLD1", purchase_date=D("2022-03-15"))  # standard warranty until 2024-03-14


@pytest.mark.parametrize(
    ("replaced_on", "until"),
    [
        ("2023-06-01", "2024-03-14"),  # the rest of the original period is longer
        ("2024-02-14", "2024-03-14"),  # both end on the same day
        ("2024-02-15", "2024-03-15"),  # now 30 days is longer
        ("2024-03-14", "2024-04-12"),  # on the original's last day
        ("2024-05-01", "2024-05-30"),  # after the original ended: 30 days
    ],
)
def test_w8_replacement_rest_of_original_or_30_days(replaced_on: str, until: str) -> None:
    v = judge(
        rec("NEW1", replaced_serial="OLD1", replacement_date=D(replaced_on)), "2023-06-01", others=(ORIGINAL,)
    )
    assert layer(v, LayerKind.REPLACEMENT) == (replaced_on, until)
    assert v.layers[0].rules == ("W8", "S11")
    assert v.covered_until == D(until)
    assert v.flags == ()


def test_w8_replaced_unit_without_record_gets_30_days() -> None:
    v = judge(rec("NEW1", replaced_serial="GONE1", replacement_date=D("2024-01-01")), "2024-01-30")
    assert layer(v, LayerKind.REPLACEMENT) == ("2024-01-01", "2024-01-30")
    assert v.status is Status.EXPIRING_SOON
    assert v.flags == ("replaced-unit-unknown",)
    assert v.reason == (
        "replacement unit warranty until 2024-01-30 (W8); replaced unit GONE1 has no record: "
        "30 days from the replacement (W8)"
    )


def test_w8_replaced_unit_without_coverage_gets_30_days() -> None:
    v = judge(
        rec("NEW1", replaced_serial="OLD1", replacement_date=D("2024-01-01")),
        "2024-02-01",
        others=(rec("OLD1"),),
    )
    assert v.covered_until == D("2024-01-30") and v.status is Status.OUT_OF_WARRANTY
    assert v.flags == ("replaced-unit-coverage-unknown",)


def test_w8_replacement_inherits_an_extension() -> None:
    original = rec(
        "OLD1", purchase_date=D("2022-03-15"), extension_years=2, extension_purchased=D("2022-03-15")
    )
    v = judge(rec("NEW1", replaced_serial="OLD1", replacement_date=D("2024-05-01")), others=(original,))
    assert v.covered_until == D("2026-03-14")


def test_w8_chains_are_followed() -> None:
    a = rec("A1", purchase_date=D("2022-03-15"), extension_years=1, extension_purchased=D("2022-03-15"))
    b = rec("B1", replaced_serial="A1", replacement_date=D("2023-01-01"))
    c = rec("C1", replaced_serial="B1", replacement_date=D("2024-01-01"))
    assert judge(c, others=(a, b)).covered_until == D("2025-03-14")
    late = rec("C1", replaced_serial="B1", replacement_date=D("2025-03-01"))
    assert judge(late, others=(a, b)).covered_until == D("2025-03-30")


def test_w8_a_cycle_is_flagged_and_ends() -> None:
    e = rec("E1", replaced_serial="F1", replacement_date=D("2024-01-01"))
    f = rec("F1", purchase_date=D("2021-01-01"), replaced_serial="E1", replacement_date=D("2023-01-01"))
    v = judge(e, "2024-01-10", others=(f,))
    assert v.flags == ("replacement-cycle",)
    # F1: standard to 2022-12-31, its own 30 days to 2023-01-30; E1: its 30 days are longer.
    assert v.covered_until == D("2024-01-30")
    assert v.reason.endswith("the replacement chain loops back to E1 (W8)")


def test_w8_a_long_chain_needs_no_recursion() -> None:
    n = 5000
    chain = [rec("R0", purchase_date=D("2020-06-01"))]
    chain += [
        rec(f"R{i}", replaced_serial=f"R{i - 1}", replacement_date=D("2021-01-01") + timedelta(days=i % 7))
        for i in range(1, n)
    ]
    records = Entitlements.of(chain)
    v = evaluate(f"R{n - 1}", "Tap", records[f"R{n - 1}"], records, CATALOG, D("2022-01-01"))
    assert v.covered_until == D("2022-05-31") and v.flags == ()


def test_w8_replacement_without_purchase_date_is_not_unknown() -> None:
    v = judge(
        rec("NEW1", replaced_serial="OLD1", replacement_date=D("2023-06-01")),
        "2023-06-01",
        others=(ORIGINAL,),
    )
    assert v.status is Status.IN_WARRANTY
    assert "unknown-purchase-date" not in v.flags


# --- S11 deployed on-site spare -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deployed", "original_until", "until"),
    [
        ("2023-09-01", "2025-03-14", "2025-03-14"),  # the rest of the original (extended) warranty
        ("2025-03-01", "2025-03-14", "2025-03-30"),  # 30 days are longer
        ("2025-03-15", "2025-03-14", "2025-04-13"),  # deployed the day after the original ended
    ],
)
def test_s11_deployed_spare(deployed: str, original_until: str, until: str) -> None:
    failed = rec(
        "FAILED1", purchase_date=D("2022-03-15"), extension_years=1, extension_purchased=D("2022-03-15")
    )
    assert judge(failed).covered_until == D(original_until)
    v = judge(
        rec("SPARE1", replaced_serial="FAILED1", replacement_date=D(deployed)), "2023-09-01", others=(failed,)
    )
    assert layer(v, LayerKind.REPLACEMENT) == (deployed, until)
    assert set(v.layers[0].rules) == {"W8", "S11"}


# --- S4 SELECT service start --------------------------------------------------------------------

BOUGHT = D("2023-01-01")  # standard warranty until 2024-12-31; turns 5 on 2028-01-01


@pytest.mark.parametrize(
    ("order", "activation", "start"),
    [
        ("2023-03-01", None, "2023-04-30"),  # order + 60 days
        (None, "2023-03-10", "2023-03-10"),  # activation alone
        ("2023-03-01", "2023-03-10", "2023-03-10"),  # activated before order + 60
        ("2023-03-01", "2023-04-29", "2023-04-29"),  # day 59
        ("2023-03-01", "2023-04-30", "2023-04-30"),  # day 60: the same day
        ("2023-03-01", "2023-05-01", "2023-04-30"),  # activated later: the service began at day 60
        ("2023-12-15", None, "2024-02-13"),  # across a year end into a leap February
    ],
)
def test_s4_select_service_start(order: str | None, activation: str | None, start: str) -> None:
    v = judge(
        rec(
            purchase_date=BOUGHT,
            select_order_date=order and D(order),
            select_activation_date=activation and D(activation),
            select_term_years=1,
        ),
        "2023-06-01",
        "Rally Bar",
    )
    select = layer(v, LayerKind.SELECT)
    assert select is not None and select[0] == start
    assert select[1] == period_end(D(start), 1).isoformat()
    assert v.flags == ()


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"select_term_years": 3}, "a start date"),
        ({"select_contract": "SEL-1", "select_order_date": D("2023-03-01")}, "a term"),
        ({"select_activation_date": D("2023-03-01"), "select_term_years": 0}, "a term"),
    ],
)
def test_s4_s5_incomplete_select_data_is_flagged(fields: dict[str, Any], missing: str) -> None:
    v = judge(rec(purchase_date=BOUGHT, **fields), "2023-06-01", "Rally Bar")
    assert layer(v, LayerKind.SELECT) is None
    assert v.flags == ("select-incomplete",)
    assert f"SELECT contract without {missing}: ignored (S4, S5)" in v.reason


# --- S5 the term as bought -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "term", "until"),
    [
        ("2023-03-10", 1, "2024-03-09"),
        ("2023-03-10", 3, "2026-03-09"),
        ("2024-02-29", 1, "2025-02-27"),
        ("2024-02-29", 3, "2027-02-27"),
    ],
)
def test_s5_select_term(start: str, term: int, until: str) -> None:
    v = judge(
        rec(purchase_date=BOUGHT, select_activation_date=D(start), select_term_years=term),
        "2023-06-01",
        "Rally Bar",
    )
    assert layer(v, LayerKind.SELECT) == (start, until)
    assert v.covered_until == max(D(until), D("2024-12-31"))  # or the standard warranty's end
    assert next(x for x in v.layers if x.kind is LayerKind.SELECT).rules == ("S4", "S5", "S7", "S8")


def test_s5_select_on_an_unsupported_product_is_flagged() -> None:
    v = judge(
        rec(purchase_date=BOUGHT, select_activation_date=D("2023-03-10"), select_term_years=3),
        product="PTZ Pro 2",
    )
    assert layer(v, LayerKind.SELECT) is None
    assert v.flags == ("select-unsupported-product",)


# --- S7 product replacement only while the unit is under 5 -----------------------------------------


@pytest.mark.parametrize(
    ("bought", "start", "term", "until", "capped"),
    [
        ("2021-06-01", "2023-06-01", 3, "2026-05-31", False),  # the term ends on the 5th birthday - 1
        ("2021-06-01", "2023-06-02", 3, "2026-05-31", True),  # one day later: the age limit ends it
        ("2021-06-01", "2022-06-01", 5, "2026-05-31", True),
        ("2021-06-01", "2022-06-01", 1, "2023-05-31", False),
        ("2020-02-29", "2021-01-01", 5, "2025-02-27", True),  # turns 5 on 2025-02-28
        ("2024-02-29", "2025-01-01", 5, "2029-02-27", True),  # 2029 has no 29 February
    ],
)
def test_s7_five_year_age_limit(bought: str, start: str, term: int, until: str, capped: bool) -> None:
    v = judge(
        rec(
            purchase_date=D(bought),
            select_activation_date=D(start),
            select_term_years=term,
            select_registered=D(bought),
        ),
        start,
        "Rally Bar",
    )
    assert layer(v, LayerKind.SELECT) == (start, until)
    assert v.flags == (("select-age-cap",) if capped else ())
    if capped:
        assert v.reason.startswith(f"SELECT product replacement until {until} (S7)")


@pytest.mark.parametrize(
    ("today", "status"),
    [
        ("2025-02-27", Status.EXPIRING_SOON),
        ("2025-02-28", Status.OUT_OF_WARRANTY),
    ],
)
def test_s7_status_around_the_fifth_birthday(today: str, status: Status) -> None:
    v = judge(
        rec(purchase_date=D("2020-02-29"), select_activation_date=D("2021-01-01"), select_term_years=5),
        today,
        "Rally Bar",
    )
    assert v.status is status


# --- S8 registered while under valid coverage ------------------------------------------------------


@pytest.mark.parametrize(
    ("registered", "start", "valid"),
    [
        ("2024-12-31", "2024-12-01", True),  # the standard warranty's last day
        ("2025-01-01", "2024-12-01", False),  # the day after: a gap
        (None, "2024-12-31", True),  # blank: the service start counts
        (None, "2025-01-01", False),
        ("2022-12-31", "2022-12-01", False),  # before the purchase
    ],
)
def test_s8_registration_must_be_under_warranty(registered: str | None, start: str, valid: bool) -> None:
    v = judge(
        rec(
            purchase_date=BOUGHT,
            select_activation_date=D(start),
            select_term_years=3,
            select_registered=registered and D(registered),
        ),
        "2025-06-01",
        "Tap",
    )
    assert (layer(v, LayerKind.SELECT) is not None) is valid
    assert v.flags == (() if valid else ("select-gap",))
    if not valid:
        assert v.status is Status.OUT_OF_WARRANTY and v.covered_until == D("2024-12-31")


def test_s8_a_valid_extension_counts_as_coverage() -> None:
    fields: dict[str, Any] = {
        "purchase_date": BOUGHT,
        "extension_years": 1,
        "select_activation_date": D("2025-06-01"),
        "select_term_years": 2,
    }
    v = judge(rec(extension_purchased=BOUGHT, **fields), "2025-06-01")
    assert layer(v, LayerKind.SELECT) == ("2025-06-01", "2027-05-31")
    # S8: SELECT cannot cure a gap: the same extension bought late leaves year 3 uncovered.
    v = judge(rec(extension_purchased=D("2023-03-01"), **fields), "2025-06-01")
    assert layer(v, LayerKind.SELECT) is None
    assert v.flags == ("extension-bought-late", "select-gap")


def test_s8_a_replacement_unit_is_under_the_original_warranty() -> None:
    # A spare bought long ago: its own standard warranty ended 2022-12-31; it inherits OLD1's.
    v = judge(
        rec(
            "NEW1",
            purchase_date=D("2021-01-01"),
            replaced_serial="OLD1",
            replacement_date=D("2023-06-01"),
            select_activation_date=D("2024-03-01"),
            select_term_years=1,
        ),
        "2024-03-01",
        others=(ORIGINAL,),
    )
    assert layer(v, LayerKind.SELECT) == ("2024-03-01", "2025-02-28")


def test_s8_a_reseller_contract_does_not_count() -> None:
    v = judge(
        rec(
            purchase_date=BOUGHT,
            reseller_until=D("2027-12-31"),
            select_activation_date=D("2025-06-01"),
            select_term_years=1,
        ),
        "2025-06-01",
        "Rally Bar",
    )
    assert layer(v, LayerKind.SELECT) is None and "select-gap" in v.flags


# --- H1 reseller service contract -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("until", "today", "covered_until", "status"),
    [
        ("2027-12-31", "2027-10-03", "2027-12-31", Status.EXPIRING_SOON),  # 89 days left
        ("2027-12-31", "2027-10-02", "2027-12-31", Status.IN_WARRANTY),  # 90 days left
        ("2027-12-31", "2028-01-01", "2027-12-31", Status.OUT_OF_WARRANTY),
        ("2024-06-30", "2024-06-01", "2024-12-31", Status.IN_WARRANTY),  # shorter than the standard
    ],
)
def test_h1_reseller_contract(until: str, today: str, covered_until: str, status: Status) -> None:
    v = judge(
        rec(purchase_date=BOUGHT, reseller_contract="HEZO-1", reseller_until=D(until)), today, "Rally Bar"
    )
    assert layer(v, LayerKind.RESELLER) == ("2023-01-01", until)
    assert next(x for x in v.layers if x.kind is LayerKind.RESELLER).rules == ("H1",)
    assert v.covered_until == D(covered_until)
    assert v.status is status


@pytest.mark.parametrize(
    ("product", "fields", "flag"),
    [
        ("Rally Bar Huddle", {"reseller_until": D("2027-12-31")}, "reseller-unsupported-product"),
        ("Rally Bar", {"reseller_contract": "HEZO-1"}, "reseller-incomplete"),
    ],
)
def test_h1_reseller_problems(product: str, fields: dict[str, Any], flag: str) -> None:
    v = judge(rec(purchase_date=BOUGHT, **fields), product=product)
    assert layer(v, LayerKind.RESELLER) is None
    assert v.flags == (flag,)


# --- status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days_left", "expiring_days", "status"),
    [
        (-1, 90, Status.OUT_OF_WARRANTY),
        (0, 90, Status.EXPIRING_SOON),  # covered_until == today
        (89, 90, Status.EXPIRING_SOON),
        (90, 90, Status.IN_WARRANTY),
        (29, 30, Status.EXPIRING_SOON),
        (30, 30, Status.IN_WARRANTY),
        (0, 0, Status.IN_WARRANTY),
    ],
)
def test_status_boundaries(days_left: int, expiring_days: int, status: Status) -> None:
    covered_until = D("2024-03-14")
    today = covered_until - timedelta(days=days_left)
    v = judge(rec(purchase_date=D("2022-03-15")), today, expiring_days=expiring_days)
    assert v.covered_until == covered_until
    assert v.status is status


def test_negative_expiring_days_is_refused() -> None:
    with pytest.raises(ValueError, match="expiring_days"):
        judge(rec(purchase_date=D("2022-03-15")), expiring_days=-1)


def test_no_purchase_date_is_unknown() -> None:
    v = judge(rec(extension_years=1, select_activation_date=D("2023-01-01"), select_term_years=1))
    assert v.status is Status.UNKNOWN and v.covered_until is None and v.layers == ()
    assert v.flags == ("unknown-purchase-date",)
    assert v.reason == "coverage unknown; no purchase date in the entitlement record"


@pytest.mark.parametrize(
    "fields",
    [
        {"select_activation_date": D("2023-07-01"), "select_term_years": 1},
        {"extension_years": 1, "extension_purchased": D("2023-06-01")},
        {"reseller_until": D("2026-01-01")},
        {},
    ],
)
def test_a_replacement_without_purchase_date_says_what_it_could_not_use(fields: dict[str, Any]) -> None:
    v = judge(
        rec("NEW1", replaced_serial="OLD1", replacement_date=D("2023-06-01"), **fields), others=(ORIGINAL,)
    )
    assert [x.kind for x in v.layers] == [LayerKind.REPLACEMENT]
    assert v.flags == (("unknown-purchase-date",) if fields else ())


def test_no_record_is_unknown() -> None:
    v = judge(None)
    assert v.status is Status.UNKNOWN and v.covered_until is None
    assert v.flags == ("no-entitlement-record", "unknown-purchase-date")
    assert v.reason == "coverage unknown; no entitlement record for this serial"


# --- output -----------------------------------------------------------------------------------------


def test_to_dict_has_exactly_the_agreed_keys_and_is_json() -> None:
    v = judge(
        rec(
            purchase_date=D("2022-03-15"),
            extension_years=1,
            extension_purchased=D("2022-03-15"),
            select_activation_date=D("2023-06-01"),
            select_term_years=3,
        ),
        "2024-06-01",
        "Tap",
    )
    data = json.loads(json.dumps(v.to_dict()))
    assert data == {
        "serial": "U1",
        "product": "Tap",
        "status": "in_warranty",
        "covered_until": "2026-05-31",
        "layers": [
            {"kind": "standard", "from": "2022-03-15", "until": "2024-03-14", "rules": ["W1"]},
            {
                "kind": "extended",
                "from": "2024-03-15",
                "until": "2025-03-14",
                "rules": ["W2", "W3", "W4", "W5", "W6"],
            },
            {
                "kind": "select",
                "from": "2023-06-01",
                "until": "2026-05-31",
                "rules": ["S4", "S5", "S7", "S8"],
            },
        ],
        "flags": [],
        # W9: the record bought an extension and a scan found the unit.
        "serial_verified": True,
        "first_seen": "2023-01-02",
        "check_by": "2022-04-14",
    }
    assert v.reason == "SELECT product replacement until 2026-05-31 (S5)"
    assert judge(None).to_dict()["covered_until"] is None


@pytest.mark.parametrize(
    ("reseller_until", "reason"),
    [
        ("2024-12-31", "standard warranty until 2024-12-31 (W1)"),  # a tie: the warranty is named
        ("2025-01-01", "reseller service contract until 2025-01-01 (H1)"),
    ],
)
def test_reason_names_the_layer_that_ends_last(reseller_until: str, reason: str) -> None:
    v = judge(rec(purchase_date=BOUGHT, reseller_until=D(reseller_until)), "2024-06-01", "Rally Bar")
    assert v.reason == reason


def test_extended_reason() -> None:
    v = judge(
        rec(purchase_date=D("2024-03-02"), extension_years=1, extension_purchased=D("2024-03-02")),
        "2024-06-01",
    )
    assert v.reason == "extended warranty until 2027-03-01 (W2)"


def test_urgency_order() -> None:
    assert [str(s) for s in URGENCY] == ["out_of_warranty", "expiring_soon", "unknown", "in_warranty"]
    verdicts = [
        judge(rec("IN1", purchase_date=D("2024-01-01"))),
        judge(rec("OUT2", purchase_date=D("2021-01-01"))),
        judge(None),
        judge(rec("SOON1", purchase_date=D("2022-07-01"))),
        judge(rec("OUT1", purchase_date=D("2020-01-01"))),
        judge(rec("IN2", purchase_date=D("2023-01-01"))),
    ]
    ordered = [v.serial for v in sorted(verdicts, key=urgency_key)]
    assert ordered == ["OUT1", "OUT2", "SOON1", "NONE1", "IN2", "IN1"]


def test_evaluate_all_matches_evaluate_one_by_one() -> None:
    records = Entitlements.of(
        [
            ORIGINAL,
            rec("NEW1", replaced_serial="OLD1", replacement_date=D("2024-01-01")),
            rec(
                "X1",
                purchase_date=D("2023-02-01"),
                select_activation_date=D("2023-03-01"),
                select_term_years=3,
            ),
        ]
    )
    units = [("new1", "Tap"), ("X1", "Rally Bar"), ("MISSING", "Tap"), (None, "Brio"), ("OLD1", "Tap")]
    today = D("2024-02-01")
    verdicts = evaluate_all(units, records, CATALOG, today)
    expected = [evaluate(s, p, records.get(s) if s else None, records, CATALOG, today) for s, p in units]
    assert verdicts == expected
    assert [v.status for v in verdicts] == [
        Status.EXPIRING_SOON,
        Status.IN_WARRANTY,
        Status.UNKNOWN,
        Status.UNKNOWN,
        Status.EXPIRING_SOON,
    ]


def test_the_example_file_shows_every_layer_kind() -> None:
    records = load_entitlements(REPO / "config" / "entitlements.example.csv")
    units = [
        ("2301SC0005E2", "Scribe"),
        ("2210RC0001A1", "Rally Camera"),
        ("2104TP0007B3", "Tap"),
        ("2313FD1N08Z2", "Rally Bar"),
        ("2206MU0042C9", "MeetUp"),
        ("2402TP0099D4", "Tap"),
    ]
    found = {serial: Sighting(D("2024-02-01"), product) for serial, product in units}  # all scanned
    verdicts = evaluate_all(units, records, load_catalog(), D("2024-03-01"), sightings=found)
    kinds = {layer.kind for v in verdicts for layer in v.layers}
    assert kinds == set(LayerKind)
    # The Tap's row names a Tap IP (W9: extension-serial-mismatch, tests/test_coverage_w7_w9.py).
    assert verdicts[2].flags == ("extension-bought-late", "extension-serial-mismatch")
    assert [v.flags for v in verdicts if v.serial != "2104TP0007B3"] == [()] * 5


def test_the_rules_never_read_the_clock() -> None:
    source = (REPO / "agent" / "coverage.py").read_text()
    for call in ("today()", "now(", "time.time", "utcnow"):
        assert call not in source


def test_flag_names_are_stable() -> None:
    assert {str(f) for f in Flag} >= {
        "unknown-purchase-date",
        "extension-bought-late",
        "extension-ineligible-customer",
        "extension-ineligible-country",
        "extension-ineligible-date",
        "select-age-cap",
        "select-gap",
        "replaced-unit-unknown",
    }
