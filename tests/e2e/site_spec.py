"""The customer site of the end-to-end test: five rooms, the units in them, the operator's
files (entitlements CSV, room map, each agent's agent.toml) and what the portal must end up
showing. Rooms A to D are the site agent's; room E is a second agent's (the test keeps the name
``test_the_site_end_to_end``: docs cite it).

Rooms (ids as in the room map; room E's as its agent's ``[room]`` gives it):

* **room A** (``e2e-a``, the agent's own ``[room]``): a Rally Bar read over its Sync interface
  from the recorded session in ``../shared/fixtures`` (``roomsync run --replay``), a Scribe
  whose firmware is read over its UVC extension unit from fwupd's recording of its
  video4linux node there (a second ``--replay``: issue [11/16]), and, on the agent host's USB
  (a fake sysfs tree), a Tap and a Brio — the Brio is the unit unplugged.
  The same bar is also on the LAN (issue [9/16]): it announces itself over mDNS (host
  ``RallyBar-<token>``, TXT serial) and answers SNMP (ENTITY-MIB serial), so it is one unit
  seen on three channels (docs/identity.md): one record, one ``device.added``, one verdict.
* **room B** (``e2e-b``, the SSH host's ``room``): a Linux room PC reached over SSH (real
  sshd) whose USB — its sysfs served over SFTP — holds a Rally system (Rally Camera, display
  hub, table hub); a Tap IP answering SNMP ENTITY-MIB (snmpsim), placed by the room map
  (host row, its sysName); a Tap Scheduler seen over mDNS, placed here by a serial row.
* **room C** (``e2e-c``): a MeetUp and a Rally Bar Mini announced over mDNS, placed by host
  rows. The Tap Scheduler is moved here by editing the room map (S9).
* **room D** (``e2e-d``): an appliance-mode room (issue [10/16]): no room PC, no USB, only a
  Rally Bar Mini with a Sight, a mic pod and a paired Tap IP, read over HTTPS through its
  Device Management API (``tests/collabos_standin.py``, on a loopback address of its own) and
  placed by its ``[sources.collabos] hosts`` entry's ``room``. The Tap IP is a unit of its own,
  in the bar's room; the address the bar reports for it is only reported, never contacted.
  The bar's certificate is pinned at the first read; it then rotates (a reset device), the
  agent refuses it before sending anything, and the operator accepts the new key
  (``roomsync trust collabos``).
* **room E** (``e2e-e``): a Rally system (Rally Camera, display hub, table hub) on the USB of
  another host of the site, read by a **second agent** of the site (its own ``agent_id``, state
  directory and ``[room]``; docs/portal-api.md, "One unit seen by several agents") whose
  ``/sys`` and ``/dev`` are an umockdev testbed (``tests/e2e/rally_room.py``): it reads the
  Rally system's firmware through real ioctls (issue [11/16]) — its display hub's audio
  device answers feature report 0x3E on a hidraw node, its table hub its version request on
  its vendor bulk interface (through libusb) — and pushes one snapshot to the same portal.
  Its units are that agent's, never the site agent's.

Expectations are written down from the rules, not taken from the agent: where each unit
stands (inventory placement order: an SSH host's room, this host's USB in ``[room]``, then
the room map), which system each room forms and its primary unit and ticket serial (P1, P2,
catalog ``[[system]]``), and each unit's coverage from the entitlement rows (domain.md W*, S*,
H1) — dates computed here with this module's own date arithmetic.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from agent.entitlements import COLUMNS as ENTITLEMENT_COLUMNS
from tests.collabos_standin import CollabosDevice, rally_bar_mini
from tests.peers_mdns import RUN_TOKEN, Service
from tests.peers_snmp import SimDevice, entity_rows

LOGITECH = 0x046D
TOKEN = f"{RUN_TOKEN}E"  # this session's token; other tests on loopback use other suffixes

ROOM_A, ROOM_B, ROOM_C, ROOM_D = "e2e-a", "e2e-b", "e2e-c", "e2e-d"
ROOM_NAMES = {ROOM_A: "Fjord", ROOM_B: "Skagerrak", ROOM_C: "Nordkapp", ROOM_D: "Lofoten"}
LOCATION = "Oslo HQ / 4th floor"
#: Room E is named by its own agent's ``[room]`` (that agent has no room map), so it is not a
#: row of the site agent's room map: that agent lists rooms A to D only.
ROOM_E, ROOM_E_NAME = "e2e-e", "Hardanger"
#: The two agents of the site, as the portal tells their snapshots apart (``agent.id``): the
#: site agent (rooms A to D) and room E's.
SITE_AGENT, ROOM_E_AGENT = "e2e-site", "e2e-room-e"

# --------------------------------------------------------------------------- units

#: The recorded Rally Bar and its Sight (read over the Sync interface: label-grade).
RALLY_BAR, SIGHT = "2313FD1N08Z2", "2325LZ51XY58"
TAP_USB, BRIO = "2407TP0011A3", "2A1B3C4D"
ROOM_PC, RALLY_CAMERA, DISPLAY_HUB, TABLE_HUB = "NUC7B2K4M1", "2211RC0042B7", "2002DH0003C1", "2103TH0004D2"
TAP_IP, TAP_IP_REPLACED = "2308TI0005E3", "2201TI0001Z9"
#: mDNS is shared by every test run on this machine: these serials carry the session token so
#: that two runs never announce the same unit.
MEETUP, BAR_MINI, SCHEDULER = f"2405MU{TOKEN}", f"2209RM{TOKEN}", f"2311TS{TOKEN}"

#: Room D's appliance-mode Rally Bar Mini and the Tap IP paired with it, as its Device
#: Management API reports them (only this agent reads that stand-in: no session token needed).
APPLIANCE_BAR, APPLIANCE_TAP = "2306LZ0007F5", "2306TI0008G6"
#: The bar's loopback address (no other peer of this test uses it; the port is the stand-in's),
#: and the Tap IP's address as the bar reports it: only reported, nothing listens there.
APPLIANCE_HOST, APPLIANCE_TAP_ADDRESS = "127.0.0.45", "127.0.0.46"
#: The bar's collabOSVersion (1.13 and later answer the insights): its firmware at the portal.
APPLIANCE_FIRMWARE = "1.15.2"

#: Room A's recorded Scribe (``logi-scribe-setup.json``): its video4linux node answers UVC
#: extension unit 8, selector 1 with ``01 01 02 00`` = 1.1.2 (issue [11/16]). The recording
#: has no iSerialNumber: the Scribe has no serial, so it is keyed by (product, room).
SCRIBE_FIRMWARE = "1.1.2"
#: The bcdDevice of every USB unit whose firmware is checked here (0x0100: tests/sysfs.add_device's
#: default on the fake sysfs trees, and the Scribe's recorded ``PRODUCT=46d/8e2/100``), as the
#: descriptor collector writes it: always the ``usb_release`` attribute, the firmware only of
#: products whose catalog entry says ``usb_release_is_firmware``.
USB_RELEASE = "1.00"

#: Host names the LAN units announce (mDNS SRV target, SNMP sysName).
BAR_HOST = f"RallyBar-{TOKEN}"  # the recorded bar on the LAN: catalog host_names 'RallyBar-[0-9A-Z]+$'
MEETUP_HOST = f"conf-cam-{TOKEN.lower()}"
BAR_MINI_HOST = f"RallyBarMini-{TOKEN}"
SCHEDULER_HOST = f"TapScheduler-{TOKEN}"
TAP_IP_HOST = f"TapIP-{TOKEN}"

#: The recorded bar's firmware as its Sync interface reports it, and as its SNMP agent writes the
#: same version (ENTITY-MIB entPhysicalFirmwareRev). The three channels agree on purpose: a
#: unit whose channels agree must stay "NoIssues" at the portal (every unit here must, but the
#: serial-less Scribe: :attr:`Unit.issues`), and
#: shows the most trusted channel's value as that channel wrote it (sync-interface, over
#: snmp-entity, over mdns-txt). SNMP writes it differently (``V1.09.556``): versions are
#: compared without case, separators or leading zeros, so this is no ``firmware-disagreement``,
#: and the shown spelling says which channel won. (A disagreement's warning is covered by
#: tests/test_cli_merge.py and tests/test_identity.py, where no other expectation depends on the
#: unit's health.)
BAR_FIRMWARE, BAR_SNMP_FIRMWARE = "1.9.556", "V1.09.556"

#: USB ports on the agent host's fake sysfs tree (room A) and on the room PC's (room B). The
#: replayed units stand on this host's USB too, at their recorded ports: the Rally Bar at 2-1.1,
#: the Scribe at 1-2 (its PhysicalId), so the Tap is elsewhere: one port, one unit.
TAP_PORT, BRIO_PORT = "1-4", "1-3"


#: One channel of a unit as the snapshot's ``seen_by`` lists it: (source, transport, serial_source).
Channel = tuple[str, str, str | None]
#: A unit's firmware as ``/v1/inventory`` gives it: (firmware, firmware_source); the portal's
#: snapshot carries the firmware only.
Firmware = tuple[str | None, str | None]
#: No firmware: bcdDevice is not the firmware of a product a collector reads (catalog
#: ``usb_release_is_firmware = false``), and no collector could read it.
NO_FIRMWARE: Firmware = (None, None)
#: A unit by (product, serial): the units others are read through.
RECORDED_BAR = ("Rally Bar", RALLY_BAR)
APPLIANCE = ("Rally Bar Mini", APPLIANCE_BAR)
#: The one channel of room D's units: the Device Management API (the collabos source, HTTPS).
API_CHANNEL: Channel = ("collabos", "https", "collabos-api")


@dataclass(frozen=True)
class Unit:
    """One unit the final view must show: where it stands and what the agent can know of it."""

    product: str
    serial: str | None
    room: str
    transport: str
    #: The serial is the label's (Sync interface, DMI, ENTITY-MIB, a TXT serial of an
    #: identified product); USB descriptor serials of these products are not (catalog).
    label_grade: bool
    #: The (product, serial) of the unit it was read through (a bar's Sight), if any.
    parent: tuple[str, str] | None = None
    #: Sync's status at the portal: Online for a unit the latest run of its source saw,
    #: unless the unit reports another state itself.
    status: str = "Online"
    #: The channels that see it, most trusted first (docs/identity.md, "the most trustworthy
    #: channel wins"); empty: not checked (one channel, the unit's own transport).
    channels: tuple[Channel, ...] = ()
    #: Its firmware and how it was read (at the portal and in ``/v1/inventory``); None: not
    #: checked here (the bars' are, by check_one_bar and check_appliance_room).
    firmware: Firmware | None = None
    #: The warning and error codes of its health (none: Sync's "NoIssues", else "Warning").
    issues: tuple[str, ...] = ()


#: The recorded bar's channels by the trust order: the replay's Sync interface
#: (sync-interface, rank 1), its SNMP agent (snmp-entity, rank 2), its mDNS TXT (mdns-txt, rank
#: 3). Rule 1 joins them: all three give the label serial of a collabos-bar (the Sync serial;
#: an ENTITY-MIB serial is label-grade; a TXT serial of a host the catalog names).
BAR_CHANNELS: tuple[Channel, ...] = (
    ("replay", "usb", "sync-interface"),
    ("snmp", "snmp", "snmp-entity"),
    ("mdns", "mdns", "mdns-txt"),
)


def final_units(scheduler_room: str = ROOM_C) -> list[Unit]:
    """Every unit of the site after the Brio was unplugged and the Tap Scheduler moved."""
    return [
        # One unit on three channels; its transport and address are its most trusted channel's.
        Unit("Rally Bar", RALLY_BAR, ROOM_A, "usb", True, channels=BAR_CHANNELS),
        Unit("Sight", SIGHT, ROOM_A, "usb", True, parent=RECORDED_BAR),
        Unit("Rally Mic Pod", None, ROOM_A, "usb", False, parent=RECORDED_BAR),
        # The recorded bar reports its remote with status 0: Offline (its own word).
        Unit("Remote Controller", None, ROOM_A, "usb", False, parent=RECORDED_BAR, status="Offline"),
        # Issue [11/16]: a Tap's firmware is read over its HDMI capture's UVC extension unit or
        # its presence sensor's hidraw node, never taken from bcdDevice. The fake sysfs tree is
        # not live USB: product collectors open no device of it (agent/discovery/usb.py), so no
        # firmware, and the bcdDevice is only usb_release.
        Unit("Tap", TAP_USB, ROOM_A, "usb", False, firmware=NO_FIRMWARE),
        # The recorded Scribe, on this host's USB (the replay: room A): a key device with no
        # serial (a warning), its firmware read over UVC extension unit 8.
        Unit(
            "Scribe",
            None,
            ROOM_A,
            "usb",
            False,
            firmware=(SCRIBE_FIRMWARE, "uvc-xu"),
            issues=("serial-missing",),
        ),
        Unit("Room PC", ROOM_PC, ROOM_B, "ssh", True),
        # The room PC's USB as SSH reads it: sysfs only, no device node. No firmware: the
        # Rally system's version is read from its display hub (hidraw feature report), the
        # table hub's over its bulk interface, which a sysfs tree cannot answer; the camera's
        # bcdDevice is not its firmware (issue [11/16]).
        Unit("Rally Camera", RALLY_CAMERA, ROOM_B, "ssh", False, firmware=NO_FIRMWARE),
        Unit("Rally Display Hub", DISPLAY_HUB, ROOM_B, "ssh", False, firmware=NO_FIRMWARE),
        Unit("Rally Table Hub", TABLE_HUB, ROOM_B, "ssh", False, firmware=NO_FIRMWARE),
        Unit("Tap IP", TAP_IP, ROOM_B, "snmp", True),
        Unit("MeetUp", MEETUP, ROOM_C, "mdns", True),
        Unit("Rally Bar Mini", BAR_MINI, ROOM_C, "mdns", True),
        Unit("Tap Scheduler", SCHEDULER, scheduler_room, "mdns", True),
        # Room D, all from the bar's API: the bar's serial and the Tap IP's are the labels'
        # (known products); the Sight and the mic pod, read through the bar, have none. Its
        # insights say IDLE: Online.
        Unit("Rally Bar Mini", APPLIANCE_BAR, ROOM_D, "https", True, channels=(API_CHANNEL,)),
        Unit("Sight", None, ROOM_D, "https", False, parent=APPLIANCE),
        Unit("Rally Mic Pod", None, ROOM_D, "https", False, parent=APPLIANCE),
        Unit("Tap IP", APPLIANCE_TAP, ROOM_D, "https", True, channels=(API_CHANNEL,)),
    ]


#: Room E's Rally system, each unit on a port of its own on bus 3 of the testbed (no other
#: room's unit stands on bus 3: room A's USB ports are 1-2, 1-3, 1-4 and 2-1.1).
RALLY_E_CAMERA, RALLY_E_DISPLAY_HUB, RALLY_E_TABLE_HUB = "2304RC0061H8", "2304DH0062J9", "2304TH0063K1"
RALLY_E_PORTS = {"Rally Camera": "3-1", "Rally Display Hub": "3-2", "Rally Table Hub": "3-3"}
#: The Rally system version its display hub's audio device (046d:0885) keeps in feature report
#: 0x3E (513 bytes with the report id), at offsets 0xB8..0xBA: major, minor, build
#: (docs/usb-firmware.md).
RALLY_SYSTEM_VERSION = bytes([1, 6, 42])
RALLY_SYSTEM_FIRMWARE = "1.6.42"
#: The table hub's answer to its version request: 16 ASCII characters (NUL-padded), then the
#: image state, a u32 LE (docs/usb-firmware.md).
TABLE_HUB_FIRMWARE, TABLE_HUB_IMAGE_STATE = "V2.1.35", 3


def rally_room_units() -> list[Unit]:
    """Room E as its own agent reads it on its USB: the Rally system's version from its display
    hub (hid-feature), the table hub's own over its bulk interface (usb-bulk), none for the
    camera (its bcdDevice is not its firmware: catalog ``usb_release_is_firmware = false``).
    USB descriptor serials of these products are not the labels'."""
    return [
        Unit("Rally Camera", RALLY_E_CAMERA, ROOM_E, "usb", False, firmware=NO_FIRMWARE),
        Unit(
            "Rally Display Hub",
            RALLY_E_DISPLAY_HUB,
            ROOM_E,
            "usb",
            False,
            firmware=(RALLY_SYSTEM_FIRMWARE, "hid-feature"),
        ),
        Unit(
            "Rally Table Hub",
            RALLY_E_TABLE_HUB,
            ROOM_E,
            "usb",
            False,
            firmware=(TABLE_HUB_FIRMWARE, "usb-bulk"),
        ),
    ]


def initial_units() -> list[Unit]:
    """Before the unplug and the move: the Brio in room A, the Tap Scheduler in room B."""
    return [*final_units(ROOM_B), Unit("Brio", BRIO, ROOM_A, "usb", False)]


@dataclass(frozen=True)
class RoomView:
    """What a place at the portal says of its room (P1, P2 and the room flags)."""

    primary_unit: str | None
    primary_product: str | None
    ticket_serial: str | None
    ticket_product: str | None
    flags: tuple[str, ...]


#: Derived from catalog.toml's [[system]] list and agent/systems.py's rules:
#: * A: the Rally Bar, its Sight and mic pod and the Tap form one "CollabOS bar": the bar is
#:   the primary unit and the serial tickets quote (P1); the Tap's USB serial is not the
#:   label's, so a key device is unregistered (S-list). The Scribe (a whiteboard camera: in no
#:   [[system]]) stands alone beside it: the room's one system still names the primary unit,
#:   and the Scribe, a key device with no serial, is one more unregistered key device (the same
#:   flag). It has no serial, so no coverage verdict and no entitlement row.
#: * B: Tap IP + Rally Camera (+ hubs, room PC) form a "Tap bundle (Rally)": the Rally Camera
#:   is the primary unit (P1) but its USB serial is not label-grade, so no primary serial is
#:   given and the room says so; tickets quote the Tap's serial (P2), never the camera's or
#:   the PC's.
#: * C: the Rally Bar Mini forms a "CollabOS bar" and the MeetUp a "MeetUp" system: two
#:   systems, so the first (catalog order: the bar) names the primary unit and the room is
#:   flagged ambiguous (P1). The Tap Scheduler is in no system and changes nothing.
#: * D: the Rally Bar Mini, its Sight and mic pod and its Tap IP form one "CollabOS bar": the
#:   bar is the primary unit and the serial tickets quote (P1); both key devices (the bar, the
#:   Tap IP) have their label serials from the API, so nothing is flagged.
ROOM_VIEWS = {
    ROOM_A: RoomView(RALLY_BAR, "Rally Bar", RALLY_BAR, "Rally Bar", ("key-device-unregistered",)),
    ROOM_B: RoomView(
        None, "Rally Camera", TAP_IP, "Tap IP", ("key-device-unregistered", "primary-unit-serial-unknown")
    ),
    ROOM_C: RoomView(BAR_MINI, "Rally Bar Mini", BAR_MINI, "Rally Bar Mini", ("primary-unit-ambiguous",)),
    ROOM_D: RoomView(APPLIANCE_BAR, "Rally Bar Mini", APPLIANCE_BAR, "Rally Bar Mini", ()),
}
#: Room E, in its own agent's snapshot: the camera and hubs form a "Rally system" (no Tap: not
#: a Tap bundle), whose primary unit and ticket unit are both the Rally Camera (P1). Its USB
#: serial is not label-grade, so neither serial is given and the room says so twice; the
#: camera is a key device without a label serial (unregistered). The hubs are no key devices.
ROOM_E_VIEW = RoomView(
    None,
    "Rally Camera",
    None,
    "Rally Camera",
    ("key-device-unregistered", "primary-unit-serial-unknown", "ticket-serial-unknown"),
)

# --------------------------------------------------------------------------- coverage

EXPIRING_DAYS = 90  # [coverage] expiring_days default
STANDARD_YEARS = 2  # W1: every product here has the 2-year standard warranty (domain.md, catalog)
#: The rule ids each kind of layer rests on.
LAYER_RULES = {
    "standard": ["W1"],
    "extended": ["W2", "W3", "W4", "W5", "W6"],
    "select": ["S4", "S5", "S7", "S8"],
    "reseller": ["H1"],
    "replacement": ["W8", "S11"],
}


def add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return date(day.year + years, 2, 28)


def period_end(start: date, years: int) -> date:
    """The last day of a period of ``years`` years from ``start`` (both days covered)."""
    return add_years(start, years) - timedelta(days=1)


@dataclass(frozen=True)
class Expected:
    """One unit's verdict, worked out by hand from its row."""

    covered_until: date | None
    layers: tuple[tuple[str, date, date], ...] = ()
    flags: tuple[str, ...] = ()
    has_purchase_date: bool = True

    def status(self, today: date) -> str:
        if self.covered_until is None:
            return "out_of_warranty" if self.has_purchase_date else "unknown"
        if today > self.covered_until:
            return "out_of_warranty"
        if (self.covered_until - today).days < EXPIRING_DAYS:
            return "expiring_soon"
        return "in_warranty"

    def layer_dicts(self) -> list[dict[str, object]]:
        return [
            {"kind": kind, "from": start.isoformat(), "until": until.isoformat(), "rules": LAYER_RULES[kind]}
            for kind, start, until in self.layers
        ]


@dataclass
class Entitlements:
    rows: list[dict[str, str]] = field(default_factory=list)
    expected: dict[str, Expected] = field(default_factory=dict)
    #: Which rule (or status) each row is there to show, for messages.
    shows: dict[str, str] = field(default_factory=dict)

    def add(self, serial: str, shows: str, expected: Expected | None, **cells: date | str | int) -> None:
        self.rows.append(
            {
                "serial": serial,
                **{k: v.isoformat() if isinstance(v, date) else str(v) for k, v in cells.items()},
            }
        )
        if expected is not None:
            self.expected[serial] = expected
        self.shows[serial] = shows

    def csv_text(self) -> str:
        columns = list(ENTITLEMENT_COLUMNS)
        out = io.StringIO()
        out.write("# roomsync end-to-end site: one row per coverage rule (tests/e2e/site_spec.py)\n")
        writer = csv.DictWriter(out, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()


def entitlements(today: date) -> Entitlements:
    """Rows relative to ``today``, so every verdict holds whatever day the test runs."""

    def ago(days: int) -> date:
        return today - timedelta(days=days)

    e = Entitlements()

    # S4 (service starts at activation, before order + 60 days), S5 (the term as bought),
    # S8 (registered while the standard warranty runs), S7 not binding (under 5 years).
    bought, activated = ago(400), ago(390)
    select_end = period_end(activated, 3)
    assert select_end < period_end(bought, 5)
    e.add(
        RALLY_BAR,
        "SELECT from activation (S4, S5, S8)",
        Expected(
            select_end,
            (("standard", bought, period_end(bought, STANDARD_YEARS)), ("select", activated, select_end)),
        ),
        purchase_date=bought,
        country="NO",
        customer="business",
        select_contract="SEL-E2E-1",
        select_order_date=bought,
        select_activation_date=activated,
        select_term_years=3,
        select_registered=activated,
    )

    # S4 (no activation: 60 days after the order), S7 (the 5-year age limit ends the term
    # early: select-age-cap), S8 (registered on the service start, under the standard).
    bought = ago(1300)
    start = bought + timedelta(days=60)
    age_limit, term_end = period_end(bought, 5), period_end(start, 5)
    assert age_limit < term_end and start <= period_end(bought, STANDARD_YEARS)
    e.add(
        SIGHT,
        "SELECT from order + 60 days, capped at 5 years of age (S4, S7)",
        Expected(
            age_limit,
            (("standard", bought, period_end(bought, STANDARD_YEARS)), ("select", start, age_limit)),
            ("select-age-cap",),
        ),
        purchase_date=bought,
        country="SE",
        select_contract="SEL-E2E-2",
        select_order_date=bought,
        select_term_years=5,
    )

    # W1 + W3: the extension was bought on day 31, flagged and not honoured.
    bought = ago(200)
    e.add(
        TAP_USB,
        "extension bought late (W3)",
        Expected(
            period_end(bought, STANDARD_YEARS),
            (("standard", bought, period_end(bought, 2)),),
            ("extension-bought-late",),
        ),
        purchase_date=bought,
        country="GB",
        customer="business",
        extension_years=1,
        extension_purchased=bought + timedelta(days=31),
    )

    # W2: +1 year bought on day 30 (in time, W3), business (W4), Germany (W5), after 2020 (W6).
    bought = ago(800)
    e.add(
        RALLY_CAMERA,
        "extended warranty (W2-W6)",
        Expected(
            period_end(bought, 3),
            (
                ("standard", bought, period_end(bought, STANDARD_YEARS)),
                ("extended", add_years(bought, 2), period_end(bought, 3)),
            ),
        ),
        purchase_date=bought,
        country="DE",
        customer="business",
        extension_years=1,
        extension_purchased=bought + timedelta(days=30),
    )

    # W6 (bought before 7 March 2020) and a product outside schedule A: out of warranty.
    bought = date(2020, 1, 15)
    e.add(
        DISPLAY_HUB,
        "extension refused: purchase date (W6) and product; out of warranty",
        Expected(
            period_end(bought, STANDARD_YEARS),
            (("standard", bought, period_end(bought, 2)),),
            ("extension-ineligible-date", "extension-ineligible-product"),
        ),
        purchase_date=bought,
        country="US",
        extension_years=1,
        extension_purchased=bought,
    )

    # H1: a reseller (HEZO+) contract ending in 40 days decides coverage: expiring soon.
    bought = ago(900)
    until = today + timedelta(days=40)
    assert period_end(bought, STANDARD_YEARS) < until
    e.add(
        TABLE_HUB,
        "reseller contract (H1), expiring soon",
        Expected(
            until, (("standard", bought, period_end(bought, STANDARD_YEARS)), ("reseller", bought, until))
        ),
        purchase_date=bought,
        country="GB",
        reseller_contract="HEZO-E2E-1",
        reseller_until=until,
    )

    # W8, S11: a replacement (no purchase date of its own) inherits the rest of the replaced
    # unit's warranty when that is longer than 30 days from the replacement.
    old_bought, replaced_on = ago(600), ago(10)
    inherited = period_end(old_bought, STANDARD_YEARS)
    assert inherited > replaced_on + timedelta(days=29)
    e.add(TAP_IP_REPLACED, "the unit the Tap IP replaced", None, purchase_date=old_bought, country="NL")
    e.add(
        TAP_IP,
        "replacement inherits the replaced unit's warranty (W8, S11)",
        Expected(inherited, (("replacement", replaced_on, inherited),), has_purchase_date=False),
        replaced_serial=TAP_IP_REPLACED,
        replacement_date=replaced_on,
    )

    # W4 (a consumer) and W5 (China): the extension is refused twice over.
    bought = ago(100)
    e.add(
        MEETUP,
        "extension refused: consumer (W4), country (W5)",
        Expected(
            period_end(bought, STANDARD_YEARS),
            (("standard", bought, period_end(bought, 2)),),
            ("extension-ineligible-country", "extension-ineligible-customer"),
        ),
        purchase_date=bought,
        country="CN",
        customer="consumer",
        extension_years=1,
        extension_purchased=bought,
    )

    # S8: registered to SELECT after the standard warranty ended: SELECT cannot cure the gap.
    bought, registered = ago(1000), ago(200)
    assert period_end(bought, STANDARD_YEARS) < registered
    e.add(
        BAR_MINI,
        "SELECT gap (S8); out of warranty",
        Expected(
            period_end(bought, STANDARD_YEARS),
            (("standard", bought, period_end(bought, 2)),),
            ("select-gap",),
        ),
        purchase_date=bought,
        country="FR",
        select_contract="SEL-E2E-3",
        select_order_date=registered,
        select_activation_date=registered,
        select_term_years=3,
        select_registered=registered,
    )

    # S2 (seed 003 scope): a Tap Scheduler is not SELECT-supported: the contract is not a layer.
    bought = ago(300)
    e.add(
        SCHEDULER,
        "SELECT for an unsupported product (S2)",
        Expected(
            period_end(bought, STANDARD_YEARS),
            (("standard", bought, period_end(bought, 2)),),
            ("select-unsupported-product",),
        ),
        purchase_date=bought,
        country="US",
        select_contract="SEL-E2E-4",
        select_activation_date=bought,
        select_term_years=1,
    )

    # W1 alone: room D's bar and its Tap IP, bought together, in their standard warranty.
    bought = ago(150)
    for serial, product in ((APPLIANCE_BAR, "bar"), (APPLIANCE_TAP, "Tap IP")):
        e.add(
            serial,
            f"the appliance room's {product}: the standard warranty alone (W1)",
            Expected(period_end(bought, STANDARD_YEARS), (("standard", bought, period_end(bought, 2)),)),
            purchase_date=bought,
            country="NO",
            customer="business",
        )

    # No row for the room PC: coverage unknown.
    e.expected[ROOM_PC] = Expected(
        None, (), ("no-entitlement-record", "unknown-purchase-date"), has_purchase_date=False
    )
    e.shows[ROOM_PC] = "no entitlement record: unknown"
    return e


# --------------------------------------------------------------------------- LAN peers


def mdns_services() -> list[Service]:
    """Room C's MeetUp (identified by its TXT model number) and Rally Bar Mini (by its host
    name), the Tap Scheduler, and room A's recorded Rally Bar (by its host name), all with TXT
    serials.

    Unlike the others, the bar's TXT serial cannot carry the session token: it is the
    recorded one. Another test session on this machine announcing that serial on loopback at
    the same time (this test, tests/test_cli_merge.py) is another mDNS host claiming it, which
    the view expected here does not allow for."""
    return [
        Service(
            "_https._tcp.local.",
            f"Rally Bar {TOKEN}",
            f"{BAR_HOST}.local.",
            443,
            {"serial": RALLY_BAR, "fw": BAR_FIRMWARE},
        ),
        Service(
            "_https._tcp.local.",
            f"Room camera {TOKEN}",
            f"{MEETUP_HOST}.local.",
            443,
            {"model": "V-R0007", "sn": MEETUP, "fw": "1.0.244"},
        ),
        Service(
            "_https._tcp.local.",
            f"Room bar {TOKEN}",
            f"{BAR_MINI_HOST}.local.",
            443,
            {"sn": BAR_MINI, "fw": "1.10.221"},
        ),
        Service(
            "_https._tcp.local.",
            f"Door panel {TOKEN}",
            f"{SCHEDULER_HOST}.local.",
            443,
            {"sn": SCHEDULER, "fw": "1.4.12"},
        ),
    ]


def snmp_agents() -> list[SimDevice]:
    """The SNMP agents, each answering ENTITY-MIB on 127.0.0.1 (so each on its own port, one
    snmpsim each): room B's Tap IP, and room A's recorded Rally Bar, which the catalog
    identifies by its ENTITY-MIB model, the CollabOS model code ``VR0019`` (collabos_models; its
    sysName ``RallyBar-<token>`` would too: host_names)."""
    return [
        SimDevice.make(
            "127.0.0.1",
            sys_descr="Logitech Tap IP",
            sys_name=TAP_IP_HOST,
            entity=entity_rows(TAP_IP, "Tap IP", firmware="1.4.12"),
        ),
        SimDevice.make(
            "127.0.0.1",
            sys_descr="Logitech CollabOS",
            sys_name=BAR_HOST,
            entity=entity_rows(RALLY_BAR, "VR0019", firmware=BAR_SNMP_FIRMWARE),
        ),
    ]


def appliance_bar(directory: Path, password: str) -> CollabosDevice:
    """Room D's Rally Bar Mini as the CollabOS stand-in serves it: its own self-signed
    certificate (in ``directory``), the admin password ``password``, a Sight, a Rally Mic Pod
    and a Tap IP at :data:`APPLIANCE_TAP_ADDRESS`; the documented rate limits (5 sign-ins and
    10 calls a minute)."""
    return rally_bar_mini(
        APPLIANCE_HOST,
        directory,
        serial=APPLIANCE_BAR,
        password=password,
        collabos_version=APPLIANCE_FIRMWARE,
        tap_ip=APPLIANCE_TAP_ADDRESS,
        tap_serial=APPLIANCE_TAP,
        sight=True,
        mic_pod=True,
    )


# --------------------------------------------------------------------------- files


def room_map_text(scheduler_room: str) -> str:
    rows = [["match", "value", "room", "room_name", "group", "location", "seat_count"]]
    rows += [["", "", room, ROOM_NAMES[room], LOCATION, "Oslo, Norway", "8"] for room in ROOM_NAMES]
    rows += [
        # The bar's LAN channels (mDNS host, SNMP sysName) stand where its USB does: every
        # channel places it in room A, whichever reports it first (an unplaced first report
        # would be a device.moved when the USB one came).
        ["host", BAR_HOST, ROOM_A, "", "", "", ""],
        ["host", TAP_IP_HOST, ROOM_B, "", "", "", ""],
        ["host", MEETUP_HOST, ROOM_C, "", "", "", ""],
        ["host", BAR_MINI_HOST, ROOM_C, "", "", "", ""],
        ["serial", SCHEDULER, scheduler_room, "", "", "", ""],
    ]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def write_atomically(path: Path, text: str) -> None:
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text, encoding="utf-8")
    fresh.replace(path)


def toml_str(value: object) -> str:
    return json.dumps(str(value))


def agent_toml(
    paths: Mapping[str, Path],
    *,
    listen: str,
    portal_url: str,
    snmp_ports: Sequence[int],
    snmp_community: str,
    ssh_port: int,
    collabos_address: str,
) -> str:
    """agent.toml of the site agent: short intervals, every peer on loopback.

    CollabOS keeps its default interval (300 s): the devices allow 10 calls a minute, and a
    read without a token is 5 of them (the credential-less ``GET /api/v1/device``, then the four
    reads). So during the test the bar is read at the start and at each reload only (SIGHUP
    rebuilds the source: no token kept): twice fully, and once refused before any request."""
    p = {k: toml_str(v) for k, v in paths.items()}
    snmp_targets = ", ".join(toml_str(f"127.0.0.1:{port}") for port in snmp_ports)
    return f"""\
agent_id = "{SITE_AGENT}"
state_dir = {p["state"]}
room_map = {p["room_map"]}

[room]
id = "{ROOM_A}"

[sources.usb]
sysfs_root = {p["sysfs"]}
libusb_strings = false
sync_interface = false
sync_deadline = 5.0
interval = 2
hotplug_poll = 0.5

[sources.mdns]
interfaces = ["127.0.0.1"]
timeout = 1.5
interval = 3

[sources.snmp]
enabled = true
targets = [{snmp_targets}]
community = {toml_str(snmp_community)}
timeout = 1.0
retries = 1
interval = 3

[sources.ssh]
enabled = true
known_hosts = {p["known_hosts"]}
connect_timeout = 5
interval = 3

[[sources.ssh.hosts]]
host = "127.0.0.1"
port = {ssh_port}
user = "root"
key_file = {p["ssh_key"]}
sysfs_root = {p["pc_sysfs"]}
room = "{ROOM_B}"

[sources.collabos]
enabled = true
hosts = [{{ host = {toml_str(collabos_address)}, room = "{ROOM_D}" }}]
password_file = {p["collabos_password"]}
timeout = 5.0
host_deadline = 15.0
interval = 300

[portal]
url = {toml_str(portal_url)}
token_file = {p["portal_token"]}

[api]
listen = {toml_str(listen)}

[store]
remove_after_missed_scans = 2

[coverage]
entitlements = {p["entitlements"]}
"""


def rally_room_toml(paths: Mapping[str, Path], *, portal_url: str) -> str:
    """agent.toml of room E's agent: its USB only, read where the process sees ``/sys`` (the
    testbed's, under its ``LD_PRELOAD``): live USB to the agent, so its firmware collectors
    run (agent/discovery/usb.py). No libusb string reads (every string is in sysfs), no LAN
    source; the same portal as the site agent, as another agent (its own ``agent_id``)."""
    p = {k: toml_str(v) for k, v in paths.items()}
    return f"""\
agent_id = "{ROOM_E_AGENT}"
state_dir = {p["state"]}

[room]
id = "{ROOM_E}"
name = "{ROOM_E_NAME}"
group = {toml_str(LOCATION)}
location = "Oslo, Norway"
seat_count = 6

[sources.usb]
sysfs_root = "/sys"
libusb_strings = false
sync_interface = false
sync_deadline = 5.0

[sources.mdns]
enabled = false

[portal]
url = {toml_str(portal_url)}
token_file = {p["portal_token"]}
"""
