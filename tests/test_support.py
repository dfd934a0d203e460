"""Whom to call when a unit fails (agent/support.py), rule by rule — H1/H2/H3/P3 (a reseller
contract), S2/S12/S6/S7/S15 (a SELECT room), D2/P2 (a Tap bundle, by the room's platform),
D2/P1 (other conference systems), D1 (anything else), and the coverage flags — with the
coverage verdicts the real evaluator gives the entitlement records, and the systems the real
grouping finds in the room."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from agent.catalog import load_catalog
from agent.coverage import Verdict, evaluate
from agent.entitlements import EntitlementRecord
from agent.model import Device, HealthIssue, Severity, Transport
from agent.support import COUNTRY_NOTES, Contacts, Support, room_has_select, support_for
from agent.systems import summarize_room

CATALOG = load_catalog()
TODAY = date(2026, 12, 2)
AT = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
ROOM = "oslo-4-12"


def unit(product: str, serial: str | None, *, label: bool = True, address: str | None = None) -> Device:
    return Device(
        product=product,
        transport=Transport.USB,
        address=address or f"1-{serial or product}",
        first_seen=AT,
        last_seen=AT,
        room=ROOM,
        serial=serial,
        serial_label_grade=label,
        sources=["usb"],
        category=CATALOG.product(product).family,
    )


def verdict(device: Device, record: EntitlementRecord | None) -> Verdict:
    records = {record.serial: record} if record is not None else {}
    return evaluate(device.serial, device.product, record, records, CATALOG, TODAY)


def bought(serial: str, on: date = date(2025, 6, 1), **more: object) -> EntitlementRecord:
    return EntitlementRecord(serial=serial, purchase_date=on, country="NO", **more)  # type: ignore[arg-type]


def support(device: Device, record: EntitlementRecord | None = None, **kwargs: object) -> Support:
    return support_for(
        device,
        catalog=CATALOG,
        today=TODAY,
        verdict=verdict(device, record),
        record=record,
        **kwargs,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- H1, H2, H3, P3


@pytest.mark.parametrize(
    ("issue", "seen", "priority", "hours", "updates"),
    [
        (Severity.ERROR, True, "critical", "24x7", "1 h"),
        (None, False, "critical", "24x7", "1 h"),  # offline: it does not work
        (Severity.WARNING, True, "degraded", "8x5", "2 h"),
        (None, True, "request", "8x5", "4 h"),
    ],
)
def test_a_live_reseller_contract_routes_to_the_reseller_with_the_units_serial_and_contract(
    issue: Severity | None, seen: bool, priority: str, hours: str, updates: str
) -> None:
    bar = unit("Rally Bar", "2313FD1N08Z2")
    if issue is not None:
        bar.health_issues.append(HealthIssue("test", "a fault", issue))
    record = bought("2313FD1N08Z2", reseller_contract="HZ-2026-0042", reseller_until=date(2027, 6, 1))
    found = support(bar, record, seen=seen, room_select=True)  # H1 comes first, SELECT or not
    assert (found.route, found.ticket_serial, found.contract) == ("reseller", "2313FD1N08Z2", "HZ-2026-0042")
    assert (found.priority, found.hours, found.updates) == (priority, hours, updates)
    assert found.response == ("4 h" if priority == "request" else "1 h")
    assert (
        found.replacement
        == {
            "critical": "on site within 8 h of confirmation",
            "degraded": "within 8 h of confirmation",
            "request": None,
        }[priority]
    )
    assert any("within 7 days with the prepaid waybill" in step for step in found.steps)  # H3
    assert set(found.rules) == {"H1", "H2", "P3", "H3"} and found.flags == ()
    assert found.contact == Contacts().reseller


def test_an_ended_reseller_contract_is_no_route_to_the_reseller() -> None:
    bar = unit("Rally Bar", "2313FD1N08Z2")
    record = bought("2313FD1N08Z2", reseller_contract="HZ-2020-0001", reseller_until=date(2026, 1, 1))
    assert support(bar, record).route == "logitech-support"


# --------------------------------------------------------------------------- S2, S12, S6, S7, S15


def test_a_select_room_routes_to_the_service_portal_naming_the_room() -> None:
    scribe = unit("Scribe", "2301SC0005E2")
    found = support(scribe, bought("2301SC0005E2"), room_select=True, room_name="Fjord")
    assert (found.route, found.room, found.ticket_serial) == ("logitech-select", "Fjord", "2301SC0005E2")
    assert found.hours is not None and found.hours.startswith("24x7") and found.response == "1 h (objective)"
    assert any("accident, abuse" in step for step in found.steps)  # S6, listed
    assert set(found.rules) == {"S2", "S12", "S6", "S7"} and found.flags == ()


@pytest.mark.parametrize(
    ("purchase", "flag"),
    [
        (date(2021, 12, 2), "select-replacement-age"),
        (date(2021, 12, 3), None),
        (None, "purchase-date-unknown"),
    ],
)
def test_select_replacement_only_under_five_years(purchase: date | None, flag: str | None) -> None:
    scribe = unit("Scribe", "2301SC0005E2")
    record = EntitlementRecord(serial="2301SC0005E2", purchase_date=purchase, country="NO")
    found = support_for(scribe, catalog=CATALOG, today=TODAY, record=record, room_select=True)
    assert ("select-replacement-age" in found.flags) == (flag == "select-replacement-age")
    assert ("purchase-date-unknown" in found.flags) == (flag == "purchase-date-unknown")


@pytest.mark.parametrize("country", ["IN", "AE", "ZA", "TR", "CO", "AR", "CL", "PE", "NO"])
def test_select_country_notes(country: str) -> None:
    record = EntitlementRecord(serial="2301SC0005E2", purchase_date=date(2025, 1, 1), country=country)
    found = support_for(
        unit("Scribe", "2301SC0005E2"), catalog=CATALOG, today=TODAY, record=record, room_select=True
    )
    assert (COUNTRY_NOTES.get(country) in found.steps) == (country != "NO")
    assert ("S15" in found.rules) == (country != "NO")


def test_a_room_has_select_when_one_of_its_units_has_a_live_select_layer() -> None:
    bar, scribe = unit("Rally Bar", "2313FD1N08Z2"), unit("Scribe", "2301SC0005E2")
    licensed = bought(
        "2313FD1N08Z2",
        select_contract="SEL-1",
        select_activation_date=date(2025, 7, 1),
        select_term_years=3,
    )
    assert room_has_select([verdict(bar, licensed), verdict(scribe, bought("2301SC0005E2"))], TODAY)
    assert not room_has_select([verdict(bar, bought("2313FD1N08Z2")), None], TODAY)
    assert not room_has_select([verdict(bar, licensed)], date(2030, 1, 1))  # the term has ended


# --------------------------------------------------------------------------- D2, P2: Tap bundles


def tap_bundle() -> list[Device]:
    return [
        unit("Tap", "2125TAP0A1B2"),
        unit("Rally Camera", "2114RC0XY12"),
        unit("Rally Display Hub", "2114DH00001"),
        unit("Room PC", "G6JY00A1"),
    ]


@pytest.mark.parametrize(
    ("platform", "route", "desk"),
    [
        ("teams", "logitech-jumpstart", "jumpstart"),
        ("zoom", "logitech-support", "tap_support"),
        ("google-meet", "logitech-support", "tap_support"),
    ],
)
def test_every_unit_of_a_tap_bundle_quotes_the_taps_serial_at_the_platforms_desk(
    platform: str, route: str, desk: str
) -> None:
    devices = tap_bundle()
    summary = summarize_room(ROOM, devices, CATALOG)
    assert [s.name for s in summary.systems] == ["Tap bundle (Rally)"]
    for device in devices:
        found = support(device, bought(device.serial or ""), summary=summary, platform=platform)
        assert (found.route, found.ticket_serial) == (route, "2125TAP0A1B2"), device.product
        assert found.contact == getattr(Contacts(), desk) and found.response == "1 business day"
        assert set(found.rules) == {"D2", "P2"} and "platform-unknown" not in found.flags
        assert any("Rally, MeetUp and NUC serials are not accepted" in step for step in found.steps)
        nuc = any("NUC and Chromebox replacements" in step for step in found.steps)
        assert nuc == (device.product == "Room PC")


def test_a_tap_bundle_in_a_room_of_unknown_platform_gets_both_routes() -> None:
    devices = tap_bundle()
    summary = summarize_room(ROOM, devices, CATALOG)
    found = support(devices[1], bought("2114RC0XY12"), summary=summary, platform=None)
    assert found.route is None and found.routes == ("logitech-jumpstart", "logitech-support")
    assert "platform-unknown" in found.flags and found.contact is None and len(found.contacts) == 2
    assert found.ticket_serial == "2125TAP0A1B2"


def test_a_tap_without_a_label_serial_is_never_stood_in_for() -> None:
    devices = tap_bundle()
    devices[0] = unit("Tap", "USBCHIP01", label=False)
    summary = summarize_room(ROOM, devices, CATALOG)
    found = support(devices[1], bought("2114RC0XY12"), summary=summary, platform="teams")
    assert found.ticket_serial is None and "ticket-serial-unknown" in found.flags


# --------------------------------------------------------------------------- D2, P1; D1


def test_other_conference_systems_go_to_logitech_support_quoting_the_primary_unit() -> None:
    rally = [unit("Rally Camera", "2114RC0XY12"), unit("Rally Display Hub", "2114DH00001")]
    summary = summarize_room(ROOM, rally, CATALOG)
    hub = support(rally[1], bought("2114DH00001"), summary=summary)
    assert (hub.route, hub.ticket_serial) == ("logitech-support", "2114RC0XY12")  # P1: the camera's
    assert set(hub.rules) == {"D2", "P1"} and hub.contact == Contacts().support
    bar = unit("Rally Bar", "2313FD1N08Z2")
    own = support(bar, bought("2313FD1N08Z2"), summary=summarize_room(ROOM, [bar], CATALOG))
    assert (own.route, own.ticket_serial) == ("logitech-support", "2313FD1N08Z2")


@pytest.mark.parametrize("product", ["Brio", "PTZ Pro 2", "Room PC"])
def test_anything_else_goes_to_the_distributor(product: str) -> None:
    device = unit(product, "9C7A2B10")
    found = support(device, bought("9C7A2B10"), summary=summarize_room(ROOM, [device], CATALOG))
    assert (found.route, found.ticket_serial) == ("distributor-rma", "9C7A2B10")
    assert found.rules == ("D1",) and found.contact == Contacts().distributor
    assert any("credit note" in step for step in found.steps)


# --------------------------------------------------------------------------- flags


def test_an_uncovered_unit_keeps_its_route_flagged_and_unknown_coverage_is_flagged() -> None:
    old = support(unit("Brio", "9C7A2B10"), bought("9C7A2B10", on=date(2019, 1, 1)))
    assert old.route == "distributor-rma" and "not-covered" in old.flags
    unknown = support(unit("Brio", "9C7A2B10"), None)
    assert unknown.route == "distributor-rma" and "coverage-unknown" in unknown.flags
    assert "not-covered" not in unknown.flags
    covered = support(unit("Brio", "9C7A2B10"), bought("9C7A2B10"))
    assert not {"not-covered", "coverage-unknown"} & set(covered.flags)


def test_contacts_come_from_the_configuration() -> None:
    from agent.support import Contact

    mine = Contacts(distributor=Contact("Acme Distribution", phone="+47 22 00 00 00"))
    found = support_for(unit("Brio", "9C7A2B10"), catalog=CATALOG, today=TODAY, contacts=mine)
    assert found.to_dict()["contact"] == {
        "name": "Acme Distribution",
        "url": None,
        "phone": "+47 22 00 00 00",
    }


def test_a_select_room_does_not_take_a_product_select_does_not_support() -> None:
    brio = unit("Brio", "9C7A2B10")
    found = support(brio, bought("9C7A2B10"), room_select=True, room_name="Fjord")
    assert found.route == "distributor-rma"  # S2: the licence covers supported products only
