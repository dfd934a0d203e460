"""Support across a site (agent/support.py ``supports_by_identity``): a room's platform as
configured, else as its CollabOS units' ``serviceProvider`` tells it ([10/16]: MTR is a
Microsoft Teams room; ``[support] service_platforms``), and ``support`` per unit in the
snapshot the portal, MQTT and ``roomsync export`` get — the issue's "done when" through a real
store and the strict wire models: a Tap bundle in a Teams room quotes the Tap at JumpStart,
in a Zoom room at Logitech Support, a unit under a live reseller contract goes to the reseller
with its contract number, a Brio to the distributor."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.catalog import load_catalog
from agent.config import ConfigError, load_config
from agent.entitlements import EntitlementRecord, Entitlements
from agent.inventory import summarize_rooms
from agent.model import Device, Room, Transport
from agent.support import (
    SERVICE_PLATFORMS,
    SiteSupport,
    SupportSettings,
    site_support,
    support_settings_from,
)

CATALOG = load_catalog()
TODAY = date(2026, 12, 2)
AT = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
TAP = "2125TAP0A1B2"


def unit(product: str, serial: str | None, room: str | None, provider: str | None = None) -> Device:
    device = Device(
        product=product,
        transport=Transport.USB,
        address=f"1-{serial or product}-{room}",
        first_seen=AT,
        last_seen=AT,
        room=room,
        serial=serial,
        serial_label_grade=serial is not None,
        sources=["usb"],
        category=CATALOG.product(product).family,
    )
    if provider is not None:
        device.attributes["service_provider"] = provider
    return device


def bundle_room(room: str, provider: str | None, tag: str = "") -> list[Device]:
    """A Tap bundle (Rally) and, beside it, a Rally Bar with its Tap IP whose CollabOS API
    reports ``provider`` as its ``serviceProvider``."""
    return [
        unit("Rally Bar", f"2313FD1N08Z{tag or '2'}", room, provider),
        unit("Tap IP", f"2125TAPIP00{tag or '1'}", room),
        unit("Tap", TAP if not tag else f"2125TAP0A1B{tag}", room),
        unit("Rally Camera", f"2114RC0XY1{tag or '2'}", room),
        unit("Room PC", f"G6JY00A{tag or '1'}", room),
    ]


def bundle_routes(
    devices: list[Device], rooms: list[Room], settings: SupportSettings | None = None
) -> dict[str, tuple[str | None, tuple[str, ...], str | None, str | None, tuple[str, ...]]]:
    report = summarize_rooms(devices, CATALOG, rooms)
    pairs = list(SiteSupport(report, {}, None, catalog=CATALOG, today=TODAY, settings=settings).every())
    found = {device.identity: support for device, support in pairs}
    assert len(found) == len(pairs) == len(devices)  # every unit once, serial or not
    return {
        d.product: (s.route, s.routes, s.ticket_serial, s.platform, s.flags)
        for d in devices
        for s in [found[d.identity]]
    }


def test_a_rooms_platform_is_what_its_collabos_units_report_when_not_configured() -> None:
    for provider in ("MTR", "mtr", " Mtr "):
        routes = bundle_routes(bundle_room("oslo-4-12", provider), [Room("oslo-4-12")])
        for product in ("Tap", "Rally Camera", "Room PC"):  # the bundle: the Tap's serial, D2/P2
            assert routes[product][:4] == ("logitech-jumpstart", ("logitech-jumpstart",), TAP, "teams")
            assert "platform-unknown" not in routes[product][4]
        # The bar and its Tap IP are a CollabOS system: Logitech Support, the bar's serial (P1).
        assert routes["Tap IP"][:3] == ("logitech-support", ("logitech-support",), "2313FD1N08Z2")


def test_a_configured_platform_wins_over_what_the_units_report() -> None:
    routes = bundle_routes(bundle_room("oslo-4-12", "MTR"), [Room("oslo-4-12", platform="zoom")])
    assert routes["Rally Camera"][:4] == ("logitech-support", ("logitech-support",), TAP, "zoom")


@pytest.mark.parametrize(
    "providers",
    [
        [None],  # nothing reported
        ["BYOD"],  # not a platform
        ["MTR", "ZOOM"],  # two units that disagree (ZOOM mapped below): a room is not both
    ],
)
def test_a_platform_not_known_gives_both_routes(providers: list[str | None]) -> None:
    devices = bundle_room("oslo-4-12", providers[0])
    if len(providers) > 1:  # the Tap IP says otherwise
        devices[1].attributes["service_provider"] = providers[1]
    settings = SupportSettings(service_platforms={**SERVICE_PLATFORMS, "ZOOM": "zoom"})
    routes = bundle_routes(devices, [Room("oslo-4-12")], settings)
    route, both, serial, platform, flags = routes["Room PC"]
    assert (route, both, serial, platform) == (None, ("logitech-jumpstart", "logitech-support"), TAP, None)
    assert "platform-unknown" in flags


def test_service_platforms_come_from_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    assert dict(support_settings_from(load_config(None, environ={}).config.support).service_platforms) == {
        "MTR": "teams"
    }
    assert SupportSettings().service_platforms == SERVICE_PLATFORMS  # the default, both places
    path.write_text('[support]\nservice_platforms = { ZoomRooms = "zoom" }\n')
    settings = support_settings_from(load_config(path, environ={}).config.support)
    assert dict(settings.service_platforms) == {"ZOOMROOMS": "zoom"}  # replaces the default
    routes = bundle_routes(bundle_room("oslo-4-12", "zoomrooms"), [Room("oslo-4-12")], settings)
    assert routes["Tap"][:4] == ("logitech-support", ("logitech-support",), TAP, "zoom")
    routes = bundle_routes(bundle_room("oslo-4-12", "MTR"), [Room("oslo-4-12")], settings)
    assert routes["Tap"][0] is None  # MTR is no longer listed
    path.write_text('[support]\nservice_platforms = { "Google Meet" = "google-meet" }\n')
    settings = support_settings_from(load_config(path, environ={}).config.support)
    assert dict(settings.service_platforms) == {"GOOGLE MEET": "google-meet"}  # a space inside is kept
    for bad, said in (
        ('{ MTR = "webex" }', "support.service_platforms.MTR"),
        ('{ MTR = "teams", mtr = "zoom" }', "'MTR' and 'mtr' name one provider"),
        ('{ " MTR" = "teams" }', "string should match pattern"),
    ):
        path.write_text(f"[support]\nservice_platforms = {bad}\n")
        with pytest.raises(ConfigError) as exc:
            load_config(path, environ={})
        assert any(said in problem.lower() or said in problem for problem in exc.value.problems), (
            exc.value.problems
        )


def test_site_support_answers_for_the_unit_coverage_lists_under_each_serial() -> None:
    """By serial, the unit whose verdict coverage lists (agent/coverage.py ``coverage_units``:
    the first of the inventory's units to carry it, children after their parent), whatever
    order the rooms put units in: a verdict and its ``support`` are of one unit."""
    from agent.coverage import coverage_units

    room = bundle_room("oslo-4-12", "MTR")
    stray = unit("Brio", "2313FD1N08Z2", None)  # claims the bar's serial (docs/identity.md)
    pod = unit("Rally Mic Pod", None, None)
    for devices in ([stray, *room, pod], [*room, stray, pod]):
        report = summarize_rooms(devices, CATALOG, [Room("oslo-4-12")])
        found = site_support(report, devices, {}, None, catalog=CATALOG, today=TODAY)
        assert set(found) == {d.serial for d in devices if d.serial}  # the serial-less pod is not keyed
        listed = {u.serial: u.product for u in coverage_units(devices)}
        assert {serial: device.product for serial, (device, _) in found.items()} == listed
        route = found["2313FD1N08Z2"][1].route
        assert route == ("distributor-rma" if devices[0] is stray else "logitech-support")


# --------------------------------------------------------------------------- in the snapshot


def test_the_snapshot_carries_each_units_support_as_the_issue_asks(tmp_path: Path) -> None:
    from agent.store import Store
    from agent.uploader.outbox import Outbox
    from agent.uploader.protocol import parse_message, serialize
    from agent.uploader.snapshot import SnapshotContext, build_snapshot, snapshot_body

    teams = bundle_room("teams-room", None)
    zoom = bundle_room("zoom-room", None, tag="7")
    collabos = bundle_room("mtr-room", "MTR", tag="8")
    resold = unit("Rally Bar", "2313FD1N0RES", "resold-room")
    brio = unit("Brio", "9C7A2B10", "teams-room")
    rooms = (
        Room("teams-room", platform="teams"),
        Room("zoom-room", platform="zoom"),
        Room("mtr-room"),
        Room("resold-room"),
    )
    records = Entitlements.of(
        [
            EntitlementRecord(
                serial="2313FD1N0RES",
                purchase_date=date(2025, 1, 10),
                country="PL",
                reseller_contract="HEZO-2025-0042",
                reseller_until=date(2028, 1, 9),
            ),
            EntitlementRecord(serial="9C7A2B10", purchase_date=date(2020, 1, 10), country="NL"),
        ]
    )
    context = SnapshotContext(CATALOG, rooms, records, today=TODAY)
    store = Store.open(tmp_path / "state")
    try:
        store.record_scan([*teams, *zoom, *collabos, resold, brio], list(rooms), AT, sources_run={"usb"})
        agent = Outbox(store, agent_id="agent-1", hostname="pi").agent
        message = build_snapshot(store, context, agent, 1, AT)
        body = snapshot_body(store, context, agent, 1, AT)
        assert body == serialize(message)
        wire: dict[str, Any] = json.loads(body)
        assert parse_message(body) == message  # the strict models take it back
    finally:
        store.close()
    support = {d["serial"]: d["support"] for p in wire["places"] for d in p["devices"]}
    for device in teams[2:]:
        assert (support[device.serial]["route"], support[device.serial]["ticket_serial"]) == (
            "logitech-jumpstart",
            TAP,
        ), device.product
    for device in zoom[2:]:
        found = support[device.serial]
        assert (found["route"], found["ticket_serial"]) == ("logitech-support", "2125TAP0A1B7"), (
            device.product
        )
        assert found["contact"]["url"].startswith("https://support.logi.com/")  # the Tap-bundle form
    for device in collabos[2:]:  # no platform configured: the bar's serviceProvider says Teams
        assert (support[device.serial]["route"], support[device.serial]["platform"]) == (
            "logitech-jumpstart",
            "teams",
        )
    reseller = support["2313FD1N0RES"]
    assert (reseller["route"], reseller["ticket_serial"], reseller["contract"]) == (
        "reseller",
        "2313FD1N0RES",
        "HEZO-2025-0042",
    )
    assert reseller["priority"] == "request" and {"H1", "H2", "P3", "H3"} <= set(reseller["rules"])
    assert support["9C7A2B10"]["route"] == "distributor-rma" and support["9C7A2B10"]["rules"] == ["D1"]
    assert "not-covered" in support["9C7A2B10"]["flags"]  # a 2020 Brio is out of warranty
