"""GLPI native inventory documents (agent.uploader.glpi, issue [14/16] part 2): every
document built from an inventory validates against GLPI's own JSON Schema, read in place from
``../shared/fixtures/glpi/`` (a missing fixture fails under CI=true, tests/shared.py), and
carries every serial and firmware of the units it describes.

The site inventory is made the way a scan makes it: the recorded Rally Bar's GetDeviceInfo
(``../shared/fixtures/usb-captures``) through the Sync-interface parser, a CollabOS bar and its
Tap IP through the Device Management API's parser, an SNMP Rally Bar and switch through the
ENTITY-MIB collector, a Tap IP through the mDNS collector, a room PC through the SSH facts
collector, USB units as the USB source describes them; then merged by the identity rules.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.catalog import load_catalog
from agent.collectors.collabos_api import observe as collabos_observe
from agent.collectors.mdns_service import ResolvedService, observe_host
from agent.collectors.room_pc import PcFacts, PcPlace, observe_pc
from agent.collectors.snmp.entity import EntityRow, SystemInfo
from agent.collectors.snmp.entity import observe as snmp_observe
from agent.collectors.sync.device_info import parse_device_info
from agent.coverage import Layer, LayerKind, Status, Verdict
from agent.entitlements import EntitlementRecord
from agent.inventory import devices_from_observations, units_from_readings
from agent.model import (
    OTHER,
    Device,
    HealthIssue,
    Observation,
    Room,
    SeenBy,
    SerialSource,
    Severity,
    Transport,
)
from agent.sanitize import clean_text, normalize_serial
from agent.uploader.glpi import (
    COMPUTER,
    NETWORK_EQUIPMENT,
    GlpiDocument,
    GlpiHost,
    _text,
    coverage_text,
    glpi_documents,
    host_deviceid,
    unit_document,
)
from agent.uploader.snapshot import SnapshotContext, verdicts_for
from tests.shared import shared_file
from tests.sync_captures import BAR_SERIAL, SIGHT_SERIAL, Capture

CATALOG = load_catalog()
NOW = datetime(2025, 6, 2, 8, 0, tzinfo=UTC)
TODAY = date(2025, 6, 2)
AGENT_ID = "7d0c3f52-3c1e-4a57-9a1f-5b0f1d2e3c4b"
HOST = GlpiHost(
    name="fjord-pi", os_name="Debian GNU/Linux", os_version="12", kernel_name="linux", arch="aarch64"
)
VERSION = "0.1.0"
ROOMS = (Room("oslo-4-12", name="Fjord"), Room("oslo-4-14", name="Skog"))
FIXTURE_DIR = ("fixtures", "glpi")


# --------------------------------------------------------------------------- the validator


@functools.cache
def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(shared_file(*FIXTURE_DIR, "inventory.schema.json").read_text())
    return schema


def validator() -> Any:
    """GLPI's schema (draft-07) with its string formats checked (``ipv4``, ``ipv6``): GLPI's
    server checks them too."""
    from jsonschema import Draft7Validator

    schema = _schema()
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


def _closed(node: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its
    properties: the schema leaves most objects open, so this catches a field name it does not
    define (a typo GLPI would drop without a word)."""
    if isinstance(node, dict):
        out = {key: _closed(value) for key, value in node.items()}
        if isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_closed(item) for item in node]
    return node


def closed_validator() -> Any:
    from jsonschema import Draft7Validator

    return Draft7Validator(_closed(copy.deepcopy(_schema())), format_checker=Draft7Validator.FORMAT_CHECKER)


def problems(data: Any, check: Any = None) -> list[str]:
    check = check or validator()
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in check.iter_errors(data)]


def assert_valid(doc: GlpiDocument) -> None:
    """Valid against GLPI's schema and against the closed one; ``data`` is what ``body`` says."""
    assert json.loads(doc.body) == doc.data
    assert problems(doc.data) == [], doc.deviceid
    assert problems(doc.data, closed_validator()) == [], doc.deviceid


# --------------------------------------------------------------------------- a site


def _usb(
    address: str,
    product: str | None,
    *,
    pid: int | None,
    serial: str | None = None,
    label_grade: bool = True,
    firmware: str | None = None,
) -> Observation:
    """A unit as the USB source describes it (descriptor strings, bcdDevice)."""
    obs = Observation(
        source="usb",
        transport=Transport.USB,
        address=address,
        observed_at=NOW,
        product=product,
        vendor="Logitech",
        vendor_id=0x046D,
        product_id=pid,
        serial=serial,
        serial_source=SerialSource.USB_DESCRIPTOR if serial else None,
        serial_label_grade=label_grade and serial is not None,
        firmware=firmware,
        firmware_source="usb-bcdDevice" if firmware else None,
    )
    obs.attributes.update({"usb_release": firmware or "0.00", "busnum": 1})
    return obs


def _recorded_bar() -> Observation:
    """The recorded Rally Bar on this host's USB, with the Sight, mic pod and remote it reports."""
    bar = parse_device_info(json.dumps(Capture().device_info()), address="2-1.1", now=NOW, catalog=CATALOG)
    bar.source = "usb"
    return bar


def _collabos_bar() -> list[Observation]:
    device = {
        "collabOSVersion": "1.13.210",
        "hwVersion": "3",
        "serialNumber": "2230FDN0ABC1",
        "modelName": "VR0020",
        "systemName": "RallyBarMini-4K2L7Q",
        "deviceName": "Skog bar",
        "ethernetMAC": "6C:C3:B2:00:11:22",
    }
    peripherals = {
        "sights": [
            {"id": "1", "cameraConnected": True, "microphoneConnected": False, "firmwareVersion": "0.5.0"}
        ],
        "ipControllers": [
            {
                "name": "Tap IP",
                "manufacturer": "Logitech",
                "firmwareVersion": "1.6.20",
                "serialNumber": "2229LZ0TAP01",
                "ipAddress": "10.20.5.31",
            },
            # A Tap IP that tells neither its serial nor its address.
            {"name": "Tap IP", "firmwareVersion": "1.6.18"},
        ],
        "usbControllers": [{"firmwareVersion": "2.3.1", "swMcuVersion": "1.2", "hdmiVersion": "0.9"}],
        "usbDevices": [
            {
                "id": 7,
                "name": "Rally Mic Pod",
                "vid": "0x046d",
                "pid": "0x0891",
                "audioFirmwareVersion": "2.1.3",
            }
        ],
    }
    found = collabos_observe("10.20.5.30", device, peripherals, CATALOG, NOW)
    for unit in found:
        unit.room = "oslo-4-14"
    return found


def _snmp() -> list[Observation]:
    bar = snmp_observe(
        "10.20.4.11",
        SystemInfo(
            clean_text("Logitech Rally Bar CollabOS 1.12.245"),
            "1.3.6.1.4.1.8072.3.2.10",
            clean_text("RallyBar-7Q2K9X"),
        ),
        [
            EntityRow(
                (1,),
                {
                    "serial": "2151FDR0X1Y2",
                    "model": "Rally Bar",
                    "firmware_rev": "1.12.245",
                    "hardware_rev": "2",
                    "manufacturer": "Logitech",
                },
                entity_class=3,
            )
        ],
        CATALOG,
        NOW,
    )
    switch = snmp_observe(
        "10.20.4.1",
        SystemInfo(clean_text("Cisco IOS Software, C2960X"), "1.3.6.1.4.1.9.1.1208", clean_text("sw-4-core")),
        [
            EntityRow(
                (1001,),
                {"serial": "FOC1932X0AB", "model": "WS-C2960X-48FPD-L", "software_rev": "15.2(7)E4"},
                entity_class=3,
            )
        ],
        CATALOG,
        NOW,
    )
    bar.room = "oslo-4-12"  # as a room map places it
    return [bar, switch]


def _mdns() -> list[Observation]:
    tap = observe_host(
        [
            ResolvedService(
                service_type="_https._tcp.local.",
                name="Tap IP Fjord._https._tcp.local.",
                server="TapIP-2Q9L.local.",
                addresses=("10.20.4.31", "fe80::6ec3:b2ff:fe00:1133", "2001:db8:4::31"),
                port=443,
                txt={b"serial": b"2229LZ0TAP02", b"fw": b"1.6.20", b"model": b"Tap IP"},
            )
        ],
        CATALOG,
        NOW,
    )
    # The SNMP Rally Bar announces itself too, at the same address: one unit, two channels.
    bar = observe_host(
        [
            ResolvedService(
                service_type="_https._tcp.local.",
                name="Rally Bar 4.11._https._tcp.local.",
                server="RallyBar-7Q2K9X.local.",
                addresses=("10.20.4.11",),
                port=443,
                txt={b"serial": b"2151FDR0X1Y2", b"fw": b"1.12.245"},
            )
        ],
        CATALOG,
        NOW,
    )
    # A Logitech unit the catalog does not know, telling nothing but where it is.
    unknown = Observation(
        source="mdns", transport=Transport.MDNS, address="10.20.4.50", observed_at=NOW, vendor="Logitech"
    )
    unknown.note("unknown-product", "a Logitech device the catalog does not know", Severity.INFO)
    for unit in (tap, bar, unknown):
        unit.room = "oslo-4-12"
    return [tap, bar, unknown]


def _room_pc() -> list[Observation]:
    facts = PcFacts(
        "linux",
        system_serial=b"G6JY00A1\n",
        board_serial=b"BTTN2140012A\n",
        hostname="fjord-pc",
        os_name="Debian GNU/Linux 12 (bookworm)",
        vendor="Intel(R) Client Systems",
        model="NUC11TNHi5",
        bios_version="TNTGL357.0064.2022.0906.1405",
        uptime_s=350735,
        unreadable={"uptime": "Permission denied"},
    )
    pc, *_ = observe_pc(facts, PcPlace("10.20.4.40", room="oslo-4-12"), CATALOG, NOW).observations
    pc.attributes["hostname"] = "fjord-pc"
    # A unit on the room PC's USB, as the SSH source reports it (addressed under the PC).
    meetup = _usb("10.20.4.40/usb/1-2", "MeetUp", pid=0x0866, serial="2206MU0042C9", firmware="1.4.2")
    meetup.source, meetup.transport, meetup.room = "ssh", Transport.SSH, "oslo-4-12"
    meetup.attributes["attached_to"] = "10.20.4.40"
    return [pc, meetup]


def site_readings() -> list[Device]:
    """What one scan of every source of a site reads (before units are grouped: what the
    store records)."""
    scribe = _usb("1-4", "Scribe", pid=0x08E2, serial="2231SCR0A7B9", firmware="1.08")
    scribe.note("peripheral-missing", "1 of 1 expected Scribe button missing", Severity.WARNING)
    # A webcam's chip serial is not the label's, and a unit may tell no serial or firmware at all.
    brio = _usb("1-6", "Brio", pid=0x085E, serial="9C7A2B10", label_grade=False, firmware="3.17")
    ptz = _usb("1-7", "PTZ Pro 2", pid=0x085F)
    observations = [_recorded_bar(), scribe, brio, ptz, *_collabos_bar(), *_snmp(), *_mdns(), *_room_pc()]
    return devices_from_observations(observations, Room("oslo-4-12"), CATALOG)


def site() -> list[Device]:
    """A site's inventory as the store would hold it after one scan of every source."""
    return units_from_readings(site_readings(), CATALOG)


def entitlements(devices: list[Device]) -> dict[str, EntitlementRecord]:
    """Records for most serials of the site: a 2-year warranty (W1), some extended (W2), one
    long expired; the Scribe and the room PC have none (no-entitlement-record)."""
    records: dict[str, EntitlementRecord] = {}
    for i, serial in enumerate(sorted(all_serials(devices))):
        if serial in ("2231SCR0A7B9", "G6JY00A1"):
            continue
        bought = date(2024 - (i % 3) * 2, 3, 1 + i)
        extension = 1 if i % 2 else None
        records[normalize_serial(serial)] = EntitlementRecord(
            serial=serial,
            purchase_date=bought,
            country="NO",
            extension_years=extension,
            extension_purchased=bought if extension else None,
        )
    return records


def walk(device: Device) -> Iterator[Device]:
    yield device
    for child in device.children:
        yield from walk(child)


def all_serials(devices: list[Device]) -> set[str]:
    return {d.serial for unit in devices for d in walk(unit) if d.serial}


def firmware_versions(device: Device) -> list[str]:
    """Every firmware version a unit tells: its firmware and its components'."""
    return [v for v in (device.firmware, *device.components.values()) if v]


def cleaned(value: str | None) -> str | None:
    """What a document carries of a device's text (the sanitiser's output, at most 255)."""
    return clean_text(value, max_len=255).value if isinstance(value, str) else None


def assert_carried(devices: list[Device], docs: list[GlpiDocument]) -> None:
    """Unit by unit, child by child: every serial and every firmware (the unit's and its
    components') is in the document that describes the unit, where GLPI looks for it."""
    computer, *units = docs
    by_identity = {d.identity: d for d in units}
    sent = [d for d in devices if d.category != OTHER or "logitech" in (d.vendor or "").casefold()]
    host_units = [d for d in sent if d.transport is Transport.USB and "attached_to" not in d.attributes]
    content = computer.data["content"]
    trees = [d for unit in sorted(host_units, key=lambda d: d.identity) for d in walk(unit)]
    usb = content.get("usbdevices", [])
    assert len(usb) == len(trees)
    host_versions = [f["version"] for f in content.get("firmwares", [])]
    for device, entry in zip(trees, usb, strict=True):
        assert entry.get("serial") == cleaned(device.serial)
        for version in map(cleaned, firmware_versions(device)):
            assert version is None or version in host_versions
    assert {d.identity for d in sent if d not in host_units} == set(by_identity)
    for unit in sent:
        if unit in host_units:
            continue
        content = by_identity[unit.identity].data["content"]
        assert content["network_device"].get("serial") == cleaned(unit.serial)
        assert content["network_device"].get("firmware") == cleaned(unit.firmware)
        children = list(walk(unit))[1:]
        components = content.get("network_components", [])
        assert len(components) == len(children)
        for child, component in zip(children, components, strict=True):
            assert component.get("serial") == cleaned(child.serial)
            assert component.get("firmware") == cleaned(child.firmware)
        versions = [f["version"] for f in content.get("firmwares", [])]
        for device in walk(unit):
            for version in map(cleaned, firmware_versions(device)):
                assert version is None or version in versions, (unit.product, device.product, version)


def build(devices: list[Device], *, coverage: bool = True) -> tuple[list[GlpiDocument], dict[str, Verdict]]:
    verdicts: dict[str, Verdict] = {}
    if coverage:
        context = SnapshotContext(CATALOG, ROOMS, entitlements(devices), today=TODAY)
        verdicts = verdicts_for(devices, context, TODAY)
    docs = glpi_documents(
        devices, ROOMS, verdicts if coverage else None, agent_id=AGENT_ID, host=HOST, version=VERSION
    )
    return docs, verdicts


# --------------------------------------------------------------------------- (1) a site


@pytest.mark.parametrize("coverage", [True, False], ids=["with-coverage", "without-coverage"])
def test_every_document_of_a_site_validates_and_carries_every_serial_and_firmware(coverage: bool) -> None:
    devices = site()
    docs, verdicts = build(devices, coverage=coverage)
    for doc in docs:
        assert_valid(doc)
    computer, *units = docs
    assert (computer.itemtype, computer.action, computer.deviceid) == (
        COMPUTER,
        "inventory",
        host_deviceid(AGENT_ID),
    )
    assert {(d.itemtype, d.action) for d in units} == {(NETWORK_EQUIPMENT, "netinventory")}
    # One agent: every document carries its deviceid (GLPI's agent record); one per unit.
    assert {d.deviceid for d in docs} == {host_deviceid(AGENT_ID)}
    assert len({d.identity for d in docs}) == len(docs)

    # This host: its USB units, and the units read through them, are its USB devices.
    content = computer.data["content"]
    assert content["hardware"]["name"] == "fjord-pi"
    assert content["operatingsystem"] == {
        "name": "Debian GNU/Linux",
        "version": "12",
        "kernel_name": "linux",
        "arch": "aarch64",
    }
    on_host = [d for d in devices if d.transport is Transport.USB]
    assert {d.product for d in on_host} == {"Rally Bar", "Scribe", "Brio", "PTZ Pro 2"}
    assert_carried(devices, docs)
    usb = content["usbdevices"]
    assert len(usb) == sum(1 for unit in on_host for _ in walk(unit))
    firmwares = [(f["name"], f["version"]) for f in content["firmwares"]]
    for unit in on_host:
        for d in walk(unit):
            [entry] = [u for u in usb if u.get("serial") == d.serial and u["name"] == d.product]
            if d.vendor_id is not None:
                assert (entry["vendorid"], entry["productid"]) == (
                    f"{d.vendor_id:04x}",
                    f"{d.product_id:04x}",
                )
            for version in firmware_versions(d):
                assert any(name.startswith(d.product) and v == version for name, v in firmwares), (
                    d.product,
                    version,
                )
    serials_on_host = {u["serial"] for u in usb if "serial" in u}
    assert {BAR_SERIAL, SIGHT_SERIAL, "2231SCR0A7B9", "9C7A2B10"} <= serials_on_host
    ptz = next(u for u in usb if u["name"] == "PTZ Pro 2")
    assert "serial" not in ptz  # not known: left out, never sent empty

    # Every other unit of Logitech's (or of the catalog's) is a document of its own.
    by_identity = {d.identity: d for d in units}
    lan = [d for d in devices if d.transport is not Transport.USB]
    sent = [d for d in lan if d.category != OTHER or d.vendor == "Logitech"]
    assert {d.identity for d in sent} == set(by_identity)
    assert [d for d in lan if d not in sent] == [
        next(d for d in lan if d.serial == "FOC1932X0AB")
    ]  # the switch
    for unit in sent:
        doc = by_identity[unit.identity]
        content = doc.data["content"]
        network_device = content["network_device"]
        assert network_device.get("serial") == unit.serial
        assert network_device.get("firmware") == unit.firmware
        versions = [f["version"] for f in content.get("firmwares", [])]
        components = content.get("network_components", [])
        assert len(components) == sum(1 for _ in walk(unit)) - 1
        for d in walk(unit):
            for version in firmware_versions(d):
                assert version in versions, (unit.product, d.product, version)
        for child, component in zip(list(walk(unit))[1:], components, strict=True):
            assert component.get("serial") == child.serial
            assert component.get("firmware") == child.firmware
            assert component["name"] == child.product
            assert component.get("type") not in ("chassis", "stack")
            assert not ("ip" in component and "mac" in component)

    bar = by_identity[next(d.identity for d in sent if d.serial == "2151FDR0X1Y2")].data["content"][
        "network_device"
    ]
    # One unit seen over SNMP and mDNS: its host name, its MAC-less identity, both channels' address once.
    assert (bar["type"], bar["name"], bar["model"], bar["manufacturer"]) == (
        "Video",
        "RallyBar-7Q2K9X",
        "Rally Bar",
        "Logitech",
    )
    assert bar["ips"] == ["10.20.4.11"] and bar["location"] == "Fjord"
    mini = next(d for d in units if d.data["content"]["network_device"].get("serial") == "2230FDN0ABC1")
    mini_device = mini.data["content"]["network_device"]
    assert (mini_device["mac"], mini_device["ips"], mini_device["location"]) == (
        "6c:c3:b2:00:11:22",
        ["10.20.5.30"],
        "Skog",
    )
    assert "sight-microphone-disconnected" in mini.data["content"]["network_components"][0]["description"]
    tap = next(d for d in units if d.data["content"]["network_device"].get("serial") == "2229LZ0TAP02")
    # The link-local address it announced says nothing of where it stands: left out.
    assert tap.data["content"]["network_device"]["ips"] == ["10.20.4.31", "2001:db8:4::31"]
    pc = next(d for d in units if d.data["content"]["network_device"].get("serial") == "G6JY00A1")
    pc_device = pc.data["content"]["network_device"]
    assert (pc_device["type"], pc_device["name"], pc_device["model"]) == (
        "Computer",
        "fjord-pc",
        "NUC11TNHi5",
    )
    assert {"name": "Room PC", "type": "BIOS", "version": "TNTGL357.0064.2022.0906.1405"}.items() <= pc.data[
        "content"
    ]["firmwares"][0].items()
    assert "pc-fact-unreadable" in pc_device["description"]
    unknown = next(d for d in units if d.identity == "mdns:10.20.4.50")
    assert unknown.data["content"]["network_device"] == {
        "type": "Unmanaged",
        "name": "Unknown device",
        "manufacturer": "Logitech",
        "location": "Fjord",
        "ips": ["10.20.4.50"],
        "description": "health ok: unknown-product (a Logitech device the catalog does not know)",
    }
    meetup = next(d for d in units if d.data["content"]["network_device"].get("serial") == "2206MU0042C9")
    assert "ips" not in meetup.data["content"]["network_device"]  # on the PC's USB: an address is a port

    # Coverage: status, last covered day and rule ids, where GLPI keeps the item's free text.
    descriptions = [d.data["content"]["network_device"]["description"] for d in units]
    host_text = computer.data["content"]["hardware"]["description"]
    if coverage:
        assert verdicts
        # Unit by unit, child by child: the verdict of its serial, in its own free text.
        told = 0
        for unit in on_host:
            for d in walk(unit):
                if d.serial and normalize_serial(d.serial) in verdicts:
                    assert coverage_text(verdicts[normalize_serial(d.serial)]) in host_text, d.serial
                    told += 1
        for unit in sent:
            content = by_identity[unit.identity].data["content"]
            texts = [content["network_device"]["description"]]
            texts += [c["description"] for c in content.get("network_components", [])]
            for d, text in zip(walk(unit), texts, strict=True):
                if d.serial and normalize_serial(d.serial) in verdicts:
                    assert text.startswith(coverage_text(verdicts[normalize_serial(d.serial)])), d.serial
                    told += 1
                else:
                    assert "coverage" not in text
        assert told == len(verdicts) - 1  # all but the switch's
        assert "coverage in_warranty until" in host_text and " W1 " in host_text
        assert "no-entitlement-record" in host_text  # the Scribe has no record
    else:
        assert not any("coverage" in text for text in [*descriptions, host_text])
    assert "peripheral-missing (1 of 1 expected Scribe button missing)" in host_text


def test_a_unit_document_alone_is_the_one_in_the_list() -> None:
    devices = site()
    docs, verdicts = build(devices)
    by_identity = {d.identity: d for d in docs}
    for device in devices:
        if device.identity in by_identity and by_identity[device.identity].itemtype == NETWORK_EQUIPMENT:
            alone = unit_document(device, ROOMS, verdicts, agent_id=AGENT_ID, version=VERSION)
            assert alone == by_identity[device.identity]


def test_this_hosts_own_facts_build_a_valid_document() -> None:
    host = GlpiHost.local()
    assert host.name
    [doc] = glpi_documents([], agent_id=AGENT_ID, host=host, version=VERSION)
    assert_valid(doc)
    assert "usbdevices" not in doc.data["content"]


# --------------------------------------------------------------------------- (2) the validator


@pytest.mark.parametrize("name", ["computer_1.json", "networkequipment_1.json"])
def test_the_schemas_own_examples_validate(name: str) -> None:
    example = json.loads(shared_file(*FIXTURE_DIR, name).read_text())
    assert problems(example) == []


# --------------------------------------------------------------------------- (5) it can fail


def _a_document() -> dict[str, Any]:
    """The CollabOS Rally Bar Mini's document: every part the schema constrains is in it."""
    docs, _ = build(site())
    [mini] = [d for d in docs if d.identity == "serial:Rally Bar Mini:2230FDN0ABC1"]
    assert {"network_device", "network_components", "firmwares"} <= set(mini.data["content"])
    return copy.deepcopy(mini.data)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(comment="x"), "Additional properties are not allowed ('comment' was unexpected)"),
        (lambda d: d.update(itemtype="Switch"), "does not match"),
        (lambda d: d.pop("deviceid"), "'deviceid' is a required property"),
        (lambda d: d["content"].pop("versionclient"), "'versionclient' is a required property"),
        (lambda d: d["content"]["network_device"].update(type="Camera"), "does not match"),
        (lambda d: d["content"]["network_device"].pop("type"), "'type' is a required property"),
        (lambda d: d["content"]["network_device"].update(ips=["10.20.4.300"]), "is not valid under any"),
        (lambda d: d["content"]["network_device"].update(ips=["fe80::1%eth0"]), "is not valid under any"),
        (lambda d: d["content"]["network_device"].update(serial=None), "None is not of type 'string'"),
        (lambda d: d["content"]["firmwares"][0].update(date="2024-1-5"), "does not match"),
    ],
)
def test_the_validator_rejects_what_glpi_rejects(change: Any, expected: str) -> None:
    doc = _a_document()
    assert problems(doc) == []
    change(doc)
    found = problems(doc)
    assert found and any(expected in p for p in found), found


def test_the_closed_schema_rejects_a_field_the_schema_does_not_define() -> None:
    doc = _a_document()
    doc["content"]["network_device"]["comment"] = "x"  # open in GLPI's schema: not an error there
    assert problems(doc) == []
    assert any("'comment' was unexpected" in p for p in problems(doc, closed_validator()))


# --------------------------------------------------------------------------- (4) deviceid, digest


def test_documents_are_stable_across_rebuilds_and_carry_the_agents_deviceid() -> None:
    first, _ = build(site())
    again, _ = build(list(reversed(site())))  # another store order, new objects
    assert [(d.deviceid, d.identity) for d in first] == [(d.deviceid, d.identity) for d in again]
    assert [d.digest for d in first] == [d.digest for d in again]
    assert [d.body for d in first] == [d.body for d in again]
    assert len({d.identity for d in first}) == len(first)
    # The deviceid follows the agent id, never the host name; every document carries it.
    other = glpi_documents(site(), agent_id="other-agent", host=GlpiHost("renamed"), version=VERSION)
    assert {d.deviceid for d in other} == {host_deviceid("other-agent")} != {host_deviceid(AGENT_ID)}
    assert [d.identity for d in other[1:]] == [d.identity for d in first[1:]]
    renamed = glpi_documents([], agent_id=AGENT_ID, host=GlpiHost("renamed"), version="9")
    assert renamed[0].deviceid == first[0].deviceid
    assert first[0].deviceid.startswith("agent-") and len(first[0].deviceid.rsplit("-", 1)[1]) == 12


def test_the_digest_changes_exactly_when_the_document_does() -> None:
    devices = site()
    before = {d.identity: d for d in build(devices)[0]}
    # What changes on every scan without anything changing is not in a document.
    for device in devices:
        for d in walk(device):
            d.last_seen = datetime(2025, 7, 1, tzinfo=UTC)
            d.seen_by = [s._replace(last_seen=d.last_seen) for s in d.seen_by]
    assert {k: d.digest for k, d in before.items()} == {d.identity: d.digest for d in build(devices)[0]}
    # A firmware upgrade of one mic pod changes its bar's document, and only that one.
    bar = next(d for d in devices if d.serial == "2230FDN0ABC1")
    pod = next(c for c in bar.children if c.product == "Rally Mic Pod")
    pod.firmware = "2.2.0"
    after = {d.identity: d for d in build(devices)[0]}
    changed = {k for k in before if before[k].digest != after[k].digest}
    assert changed == {bar.identity}
    assert before[bar.identity].body != after[bar.identity].body
    # A coverage verdict that turns (a new day) changes the documents that carry it.
    context = SnapshotContext(CATALOG, ROOMS, entitlements(devices), today=TODAY)
    later = date(2031, 1, 1)
    moved = glpi_documents(
        devices, ROOMS, verdicts_for(devices, context, later), agent_id=AGENT_ID, host=HOST, version=VERSION
    )
    assert {d.identity for d in moved if d.digest != after[d.identity].digest}
    for doc in moved:
        same = doc.data == after[doc.identity].data
        assert (doc.digest == after[doc.identity].digest) is same


# --------------------------------------------------------------------------- (3) any inventory

_NASTY = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\x00pad\x00\x00",
        "a\nb",
        "\t",
        "\x1b[31mred",
        "\u200d",
        "\ud800",
        "\ufffd",
        "é",
        "🙂",
        "  two  spaces ",
    ]
)
_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec=None, categories=None), max_size=20),
    st.text(min_size=250, max_size=2000),
    _NASTY,
    st.lists(_NASTY, max_size=4).map("".join),
)
_OPTIONAL = st.none() | _TEXT
_ADDRESS = st.one_of(
    _TEXT,
    st.ip_addresses().map(str),
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535)).map(lambda t: f"[{t[0]}]:{t[1]}"),
    st.sampled_from(
        ["fe80::1%eth0", "10.0.0.5", "127.0.0.1:1161", "2-1.1", "room-pc/usb/1-2", "::", "224.0.0.251"]
    ),
)
_ATTRIBUTE = st.one_of(
    _TEXT, st.integers(), st.none(), st.lists(st.one_of(_TEXT, _ADDRESS, st.integers()), max_size=3)
)
_ATTRIBUTES = st.dictionaries(
    st.sampled_from(
        [
            "host",
            "hostname",
            "sys_name",
            "mac",
            "mac_address",
            "mac_addresses",
            "addresses",
            "attached_to",
            "x",
        ]
    ),
    st.one_of(_ATTRIBUTE, st.sampled_from(["6C:C3:B2:00:11:22", "6cc3.b200.1122", "00:00:00:00:00:00"])),
    max_size=4,
)
_ISSUES = st.lists(st.builds(HealthIssue, _TEXT, _TEXT, st.sampled_from(Severity)), max_size=3)
_FAMILIES = st.sampled_from(
    [OTHER, "collabos-bar", "room-pc", "controller", "camera", "peripheral", "webcam"]
)


def _verdict(serial: str, kind: int) -> Verdict:
    layer = Layer(LayerKind.STANDARD, date(2024, 1, 1), date(2025, 12, 31), ("W1",))
    shapes = [
        (Status.IN_WARRANTY, date(2025, 12, 31), (layer,), ()),
        (Status.UNKNOWN, None, (), ("no-entitlement-record", "unknown-purchase-date")),
        (Status.OUT_OF_WARRANTY, date(2020, 1, 1), (), ("select-gap",)),
    ]
    status, until, layers, flags = shapes[kind % len(shapes)]
    return Verdict(serial, None, status, until, layers, flags, "")


@st.composite
def devices(draw: st.DrawFn, depth: int = 0) -> Device:
    children = draw(st.lists(devices(depth + 1), max_size=2)) if depth < 2 else []
    seen = datetime(2025, 6, 2, tzinfo=UTC)
    return Device(
        product=draw(_TEXT),
        category=draw(_FAMILIES),
        model=draw(_OPTIONAL),
        serial=draw(_OPTIONAL),
        serial_label_grade=draw(st.booleans()),
        firmware=draw(_OPTIONAL),
        firmware_source=draw(st.none() | st.sampled_from(["bios", "usb-bcdDevice", "collabos-api"]) | _TEXT),
        components=draw(st.dictionaries(_TEXT, _TEXT, max_size=3)),
        vendor_id=draw(st.none() | st.integers(0, 0xFFFF)),
        product_id=draw(st.none() | st.integers(0, 0xFFFF)),
        vendor=draw(st.none() | st.just("Logitech") | _TEXT),
        transport=draw(st.sampled_from(Transport)),
        address=draw(_ADDRESS),
        first_seen=seen,
        last_seen=seen,
        room=draw(st.none() | st.sampled_from(["oslo-4-12", "nowhere"]) | _TEXT),
        attributes=draw(_ATTRIBUTES),
        health_issues=draw(_ISSUES),
        children=children,
        seen_by=[
            SeenBy("mdns", draw(st.sampled_from(["mdns", "usb", "snmp"])), address, None, seen, "mdns-txt")
            for address in draw(st.lists(_ADDRESS, max_size=2))
        ],
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Units of distinct identities, as a stored inventory holds them.
@given(st.lists(devices(), max_size=6, unique_by=lambda d: d.identity), st.integers(0, 2), _TEXT, _TEXT)
def test_any_inventory_gives_documents_that_validate(
    units: list[Device], kind: int, agent_id: str, host_name: str
) -> None:
    verdicts = {normalize_serial(s): _verdict(s, kind) for s in all_serials(units)}
    docs = glpi_documents(
        units, ROOMS, verdicts, agent_id=agent_id, host=GlpiHost(host_name), version=VERSION
    )
    check = validator()
    closed = closed_validator()
    for doc in docs:
        doc.body.decode("utf-8")  # whole UTF-8: no lone surrogate got through
        assert json.loads(doc.body) == doc.data
        assert problems(doc.data, check) == []
        assert problems(doc.data, closed) == []
        assert doc.deviceid and doc.deviceid.isascii()
    assert_carried(units, docs)
    # Built again from the same units: the same bytes.
    again = glpi_documents(
        units, ROOMS, verdicts, agent_id=agent_id, host=GlpiHost(host_name), version=VERSION
    )
    assert [d.digest for d in again] == [d.digest for d in docs]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), _TEXT), st.sampled_from([1, 8, 64, 255]))
def test_the_fast_text_path_is_what_clean_text_gives(text: str, max_len: int) -> None:
    assert _text(text, max_len) == clean_text(text, max_len=max_len).value
