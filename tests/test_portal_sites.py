"""One unit seen by several agents (docs/portal-api.md): a room PC's agent sees a Rally Bar on
USB, a site agent sees it over mDNS; each pushes its own view to the portal stand-in, which
keeps each agent's latest snapshot and merges their units by the rules of docs/identity.md.

The end-to-end tests run the real agent (subprocesses, fake sysfs, a zeroconf publisher on
loopback, real SQLite, real pushes). Their serials carry :data:`RUN_TOKEN`: other tests on this
machine publish the catalog's example serials on 127.0.0.1, and one serial announced by two
hosts would turn this test into one about contested serials."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.model import SerialSource, Transport
from agent.uploader.protocol import (
    SCHEMA_INVENTORY,
    AgentInfo,
    DeviceOut,
    InventoryMessage,
    SeenByOut,
)
from tests.peers_mdns import RUN_TOKEN, Publisher, Service
from tests.sysfs import add_device
from tools.portal_standin import PortalStandIn, SiteUnit, merge_site

TOKEN = f"tok-sites-{RUN_TOKEN}"
BAR_SERIAL = f"2313FD{RUN_TOKEN}"  # on agent A's USB and announced by bar A
OTHER_SERIAL = f"2313FE{RUN_TOKEN}"  # announced by bar B only
SCRIBE_SERIAL = "2301SC0005E2"  # a USB chip serial: not label-grade
HOST_A, HOST_B = f"RallyBar-{RUN_TOKEN}A.local.", f"RallyBar-{RUN_TOKEN}B.local."
NOW = datetime(2026, 3, 4, 9, 30, tzinfo=UTC)


# --------------------------------------------------------------------------- hand-made snapshots


def seen(transport: str, address: str, collector: str, *, missed: int = 0) -> SeenByOut:
    return SeenByOut(
        source=transport,
        transport=transport,
        address=address,
        serial_source=None,
        last_seen=NOW,
        collector=collector,
        missed=missed,
    )


def device(
    product: str,
    serial: str | None = None,
    *,
    category: str = "collabos-bar",
    transport: Transport = Transport.MDNS,
    address: str = "10.0.0.5",
    host_name: str | None = None,
    firmware: str | None = None,
    collector: str = "mdns-txt",
) -> DeviceOut:
    where = f"{transport}:{address}"
    return DeviceOut(
        identity=f"serial:{product}:{serial}" if serial else where,
        identity_kind="serial" if serial else "transport",
        parent=None,
        serial=serial,
        serial_source=SerialSource(collector) if serial else None,
        serial_label_grade=serial is not None,
        product=product,
        category=category,
        model=None,
        vendor="Logitech",
        firmware=firmware,
        components={},
        transport=transport,
        address=address,
        host_name=host_name,
        status="Online",
        state=None,
        health="NoIssues",
        health_issues=[],
        peripherals={},
        first_seen=NOW,
        last_seen=NOW,
        coverage=None,
        seen_by=[seen(str(transport), address, collector)],
    )


def snapshot(agent: str, *devices: DeviceOut, sequence: int = 1) -> InventoryMessage:
    return InventoryMessage(
        schema=SCHEMA_INVENTORY,
        agent=AgentInfo(id=agent, version="0.1.0", hostname=agent),
        sequence=sequence,
        generated_at=NOW,
        places=[],
        unassigned=list(devices),
    )


def merged(*messages: InventoryMessage) -> list[SiteUnit]:
    return merge_site({m.agent.id: m for m in messages})


def test_one_serial_in_one_family_is_one_unit_and_the_most_trusted_channel_wins():
    usb = device(
        "Rally Bar",
        "2313 fd1n08z2",
        transport=Transport.USB,
        address="2-1.1",
        firmware="1.9.556",
        collector="sync-interface",
    )
    lan = device(
        "CollabOS bar (unnamed)", "2313FD1N08Z2", host_name="RallyBar-1L5V32.local.", firmware="1.9.5"
    )
    [unit] = merged(snapshot("site", lan), snapshot("room-pc", usb))
    assert (unit.serial, unit.product, unit.firmware) == ("2313FD1N08Z2", "Rally Bar", "1.9.556")
    assert unit.agents == ("room-pc", "site")
    assert [(agent, s.collector) for agent, s in unit.seen_by] == [
        ("room-pc", "sync-interface"),
        ("site", "mdns-txt"),
    ]
    # the most trusted device says nothing of its firmware: the next one that does
    quiet = usb.model_copy(update={"firmware": None})
    [unit] = merged(snapshot("site", lan), snapshot("room-pc", quiet))
    assert (unit.product, unit.firmware) == ("Rally Bar", "1.9.5")


def test_two_label_grade_serials_never_join_even_on_one_host_name():
    a = device("Rally Bar", "2313FD1N08Z2", host_name="RallyBar-AAA.local.")
    b = device("Rally Bar", "2313FD1N0999", host_name="rallybar-aaa", address="10.0.0.6")
    units = merged(snapshot("a", a), snapshot("b", b))
    assert sorted(u.serial or "" for u in units) == ["2313FD1N08Z2", "2313FD1N0999"]


def test_one_serial_in_two_families_is_two_units():
    bar = device(
        "Rally Bar", "2313FD1N08Z2", transport=Transport.USB, address="2-1.1", collector="usb-descriptor"
    )
    tap = device("Tap IP", "2313FD1N08Z2", category="controller", address="10.0.0.9")
    units = merged(snapshot("room-pc", bar), snapshot("site", tap))
    assert sorted((u.category, u.agents) for u in units) == [
        ("collabos-bar", ("room-pc",)),
        ("controller", ("site",)),
    ]


def test_units_without_a_serial_join_by_host_name_then_by_an_unambiguous_address():
    ssh = device(
        "Room PC", category="room-pc", transport=Transport.SSH, address="10.0.0.20", host_name="ROOM5-PC"
    )
    mdns = device("Room PC", category="room-pc", address="10.0.0.21", host_name="room5-pc.local.")
    snmp = device("Room PC", category="room-pc", transport=Transport.SNMP, address="10.0.0.21")
    other_port = device("Room PC", category="room-pc", transport=Transport.SNMP, address="10.0.0.21:1161")
    units = merged(snapshot("a", ssh), snapshot("b", mdns), snapshot("c", snmp), snapshot("d", other_port))
    assert sorted(u.agents for u in units) == [("a", "b", "c"), ("d",)]


def test_an_address_two_named_units_share_joins_neither_and_one_agent_is_never_merged_with_itself():
    one = device("Rally Bar", host_name="a.local.", address="127.0.0.1")
    two = device("Rally Bar", host_name="b.local.", address="127.0.0.1")
    bare = device("Rally Bar", transport=Transport.SNMP, address="127.0.0.1")
    assert sorted(u.agents for u in merged(snapshot("a", one), snapshot("b", two), snapshot("c", bare))) == [
        ("a",),
        ("b",),
        ("c",),
    ]
    # two hosts one agent announces with one serial (contested): it listed them apart
    contested = [device("Rally Bar", "2313FD1N08Z2", host_name=h, address="127.0.0.1") for h in "xy"]
    assert len(merged(snapshot("site", *contested))) == 2


# --------------------------------------------------------------------------- two real agents


def roomsync(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(site / "agent.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def scan(site: Path, *args: str) -> dict:
    done = roomsync(site, "scan", "--json", *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    out: dict = json.loads(done.stdout)
    assert out["errors"] == [], out["errors"]
    return out


def scan_mdns(site: Path) -> dict:
    return scan(site, "--mdns", "--mdns-interface", "127.0.0.1", "--mdns-timeout", "2")


def push(site: Path, portal: PortalStandIn) -> str:
    """Push ``site``'s outbox; the id of the agent whose snapshot arrived last."""
    done = roomsync(
        site, "push", "--once", "--portal-url", portal.url, "--token-file", str(site / "portal.token")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return portal.inventory[-1].agent.id


def bar(letter: str, serial: str, fw: str | None = None) -> Service:
    host = f"RallyBar-{RUN_TOKEN}{letter}.local."
    properties: dict[bytes | str, bytes | str | None] = {"serial": serial}
    if fw is not None:
        properties["fw"] = fw
    return Service("_https._tcp.local.", f"Rally Bar {RUN_TOKEN}{letter}", host, 443, properties)


@dataclass
class Site:
    portal: PortalStandIn
    room_pc: Path  # agent A
    site_agent: Path  # agent B
    bar_b: Publisher  # stops to take bar B off the network
    a: str  # agent ids
    b: str
    first: dict[str, InventoryMessage]  # latest_by_agent after the first pushes
    units: list[SiteUnit]  # site_units() then


def mine(units: list[SiteUnit], a: str) -> list[SiteUnit]:
    """The units of this test: agent A's, and agent B's at this run's hosts (other peers on
    loopback may answer agent B's browse)."""
    return [u for u in units if any(agent == a or RUN_TOKEN in (d.host_name or "") for agent, d in u.devices)]


def by_serial(units: list[SiteUnit]) -> dict[str | None, SiteUnit]:
    return {u.serial: u for u in units if u.serial is not None}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("sites")
    room_pc, site_agent = root / "room-pc", root / "site-agent"
    for where in (room_pc, site_agent):
        where.mkdir()
        (where / "portal.token").write_text(TOKEN + "\n")
    add_device(room_pc / "sys", "2-1.1", 0x046D, 0x089B, serial=BAR_SERIAL, product="Logi Rally Bar")
    add_device(room_pc / "sys", "2-2", 0x046D, 0x08E2, serial=SCRIBE_SERIAL, product="Logi Scribe")
    portal_settings = "[portal]\ntimeout = 5\nbackoff_cap = 1\n"
    (room_pc / "agent.toml").write_text(
        f'state_dir = "{room_pc / "state"}"\n[room]\nid = "oslo-4-12"\n{portal_settings}'
    )
    (site_agent / "agent.toml").write_text(
        f'state_dir = "{site_agent / "state"}"\n[sources.usb]\nenabled = false\n'
        f"[store]\nremove_after_missed_scans = 1\n{portal_settings}"
    )
    with (
        PortalStandIn(TOKEN) as portal,
        Publisher([bar("A", BAR_SERIAL, fw="1.9.556")], workdir=root) as _bar_a,
        Publisher([bar("B", OTHER_SERIAL)], workdir=root) as bar_b,
    ):
        scan(room_pc, "--sysfs-root", str(room_pc / "sys"))
        found = {d["attributes"].get("host") for d in scan_mdns(site_agent)["devices"]}
        assert {HOST_A, HOST_B} <= found
        a, b = push(room_pc, portal), push(site_agent, portal)
        yield Site(portal, room_pc, site_agent, bar_b, a, b, portal.latest_by_agent, portal.site_units())


@pytest.mark.slow
def test_two_agents_push_their_own_views_and_the_portal_merges_one_bar(site: Site):
    assert sorted(site.first) == sorted([site.a, site.b]) and site.a != site.b
    units = mine(site.units, site.a)
    serials = by_serial(units)
    assert sorted(s for s in serials if s) == sorted([BAR_SERIAL, OTHER_SERIAL])
    assert len(units) == 3  # the bar, bar B, the Scribe

    shared = serials[BAR_SERIAL]
    assert shared.agents == tuple(sorted([site.a, site.b]))
    assert sorted((agent, s.transport, s.collector) for agent, s in shared.seen_by) == sorted(
        [(site.a, "usb", "usb-descriptor"), (site.b, "mdns", "mdns-txt")]
    )
    # a fake sysfs has no Sync interface: mDNS TXT outranks the USB descriptor
    assert shared.seen_by[0][0] == site.b
    assert (shared.product, shared.category, shared.firmware) == ("Rally Bar", "collabos-bar", "1.9.556")
    [(_, usb)] = [(agent, d) for agent, d in shared.devices if agent == site.a]
    assert (usb.transport, usb.address) == ("usb", "2-1.1")

    other = serials[OTHER_SERIAL]
    assert other.agents == (site.b,)
    assert [(s.transport, s.address) for _, s in other.seen_by] == [("mdns", "127.0.0.1")]

    [scribe] = [u for u in units if u.product == "Scribe"]
    assert scribe.agents == (site.a,) and scribe.serial is None  # its USB serial is not label-grade
    assert [d.serial for _, d in scribe.devices] == [SCRIBE_SERIAL]


@pytest.mark.slow
def test_a_newer_snapshot_supersedes_only_its_own_agents_view(site: Site):
    site.bar_b.stop()  # zeroconf says goodbye: bar B leaves the network
    out = scan_mdns(site.site_agent)
    assert HOST_B not in {d["attributes"].get("host") for d in out["devices"]}
    assert push(site.site_agent, site.portal) == site.b

    latest = site.portal.latest_by_agent
    assert latest[site.b].sequence > site.first[site.b].sequence
    assert latest[site.a] == site.first[site.a]  # agent A's view stands as it was
    units = mine(site.portal.site_units(), site.a)
    serials = by_serial(units)
    assert OTHER_SERIAL not in serials  # no agent's latest snapshot lists bar B
    assert serials[BAR_SERIAL].agents == tuple(sorted([site.a, site.b]))
    assert [u.agents for u in units if u.product == "Scribe"] == [(site.a,)]
    # agent B's first snapshot is still recorded (it listed bar B), superseded
    [older] = [
        m for m in site.portal.inventory if m.agent.id == site.b and m.sequence < latest[site.b].sequence
    ]
    assert any(d.serial == OTHER_SERIAL for d in older.unassigned)
