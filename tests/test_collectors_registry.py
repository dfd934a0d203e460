"""The collector registry: every collector declares what it sends and its read-only gate, the
registry refuses one that does not, the catalog names product collectors the registry knows,
and the USB source runs exactly what the catalog names. Each gate is fed the forbidden
requests of its transport."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pysnmp.proto.api import v2c

from agent.catalog import CatalogError, load_catalog, parse_catalog
from agent.collectors import COLLECTORS, CollectorRegistryError, collector_class
from agent.collectors.registry import CollectorEntry, check_collector
from agent.collectors.sync.frames import Command, encode_frame
from agent.collectors.usbfw.requests import HidRequest, UvcRequest
from agent.collectors.windows_pc import WINDOWS_COMMAND
from agent.discovery import ScanContext
from agent.discovery.usb import UsbSource
from agent.readonly import ReadOnlyViolation
from tests.sysfs import add_device

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]


def setup_packet(request_type: int, request: int, value: int, index: int, length: int) -> bytes:
    return struct.pack("<BBHHH", request_type, request, value, index, length)


SYS_NAME = (1, 3, 6, 1, 2, 1, 1, 5, 0)


def snmp_pdu(kind: Any, value: Any = None, oids: tuple[tuple[int, ...], ...] = (SYS_NAME,)) -> Any:
    pdu = kind()
    if isinstance(pdu, v2c.GetBulkRequestPDU):
        v2c.apiBulkPDU.set_defaults(pdu)
    else:
        v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_varbinds(pdu, [(v2c.ObjectIdentifier(o), value or v2c.null) for o in oids])
    return pdu


def snmp_message(pdu: Any, community: bytes = b"public") -> bytes:
    """``pdu`` encoded as an SNMPv2c message, as the sweep's own probe sends it."""
    from pyasn1.codec.ber import encoder

    message = v2c.Message()
    v2c.apiMessage.set_defaults(message)
    v2c.apiMessage.set_community(message, community)
    v2c.apiMessage.set_pdu(message, pdu)
    return bytes(encoder.encode(message))


SYSTEM = ((1, 3, 6, 1, 2, 1, 1, 1, 0), (1, 3, 6, 1, 2, 1, 1, 2, 0), SYS_NAME)
ENTITY_SERIAL = (1, 3, 6, 1, 2, 1, 47, 1, 1, 1, 1, 11)


#: For every collector with a gate: requests it must let through, and requests it must refuse.
#: A new gated collector without an entry here fails test_every_gate_is_fed_forbidden_requests.
GATE_CASES: dict[str, tuple[list[Any], list[Any]]] = {
    "usb-descriptor": (
        [
            setup_packet(0x80, 0x06, 0x0300, 0, 254),  # the LANGID list
            setup_packet(0x80, 0x06, 0x0303, 0x0409, 254),  # string 3 in en-US
        ],
        [
            setup_packet(0x00, 0x05, 7, 0, 0),  # SET_ADDRESS
            setup_packet(0x00, 0x09, 1, 0, 0),  # SET_CONFIGURATION
            setup_packet(0x01, 0x0B, 1, 3, 0),  # SET_INTERFACE
            setup_packet(0x00, 0x03, 1, 0, 0),  # SET_FEATURE (remote wake-up)
            setup_packet(0x00, 0x07, 0x0303, 0x0409, 4),  # SET_DESCRIPTOR
            setup_packet(0x40, 0x06, 0x0303, 0x0409, 254),  # a vendor request that looks like one
            setup_packet(0x21, 0x09, 0x0200, 0, 64),  # HID SET_REPORT
            setup_packet(0xA1, 0x81, 0x0100, 0x0800, 2),  # UVC GET_CUR: not this collector's
            setup_packet(0x80, 0x06, 0x0100, 0, 18),  # GET_DESCRIPTOR of the device descriptor
            setup_packet(0x80, 0x06, 0x0200, 0, 255),  # … of a configuration
            setup_packet(0x80, 0x06, 0x0303, 0x0409, 4096),  # a string cannot be that long
            setup_packet(0x80, 0x06, 0x0303, 0x0409, 254)[:7],  # not a setup packet
            setup_packet(0x80, 0x06, 0x0303, 0x0409, 254) + b"\x00",
        ],
    ),
    "sync-interface": (
        [],  # the client's own frames: tests/test_sync_readonly.py
        [
            encode_frame(Command.BUFFER_READ, 0, b"{}"),
            encode_frame(Command.ACK, 1, b""),
            struct.pack("<III", 0xCC03, 0, 1),  # firmware download
            b"",
        ],
    ),
    "snmp-entity": (
        [
            snmp_pdu(v2c.GetRequestPDU),
            snmp_pdu(v2c.GetNextRequestPDU),
            snmp_pdu(v2c.GetBulkRequestPDU),
            snmp_pdu(v2c.GetBulkRequestPDU, oids=(ENTITY_SERIAL, (*ENTITY_SERIAL[:-1], 13, 1))),
            # The sweep's own probe passes its encoded datagram.
            snmp_message(snmp_pdu(v2c.GetRequestPDU, oids=SYSTEM)),
            snmp_message(snmp_pdu(v2c.GetBulkRequestPDU, oids=(ENTITY_SERIAL,))),
        ],
        [
            snmp_pdu(v2c.SetRequestPDU, v2c.OctetString(b"pwned")),
            snmp_pdu(v2c.SetRequestPDU),
            snmp_pdu(v2c.GetRequestPDU, v2c.OctetString(b"a value in a read")),
            snmp_pdu(v2c.SNMPv2TrapPDU),
            snmp_pdu(v2c.InformRequestPDU),
            snmp_pdu(v2c.ResponsePDU),
            snmp_pdu(v2c.ReportPDU),
            b"\x30\x00",
            # Objects the agent does not document reading.
            snmp_pdu(v2c.GetRequestPDU, oids=(SYS_NAME, (1, 3, 6, 1, 2, 1, 1, 3, 0))),  # sysUpTime
            snmp_pdu(v2c.GetNextRequestPDU, oids=((1, 3, 6),)),  # a walk of everything
            snmp_pdu(v2c.GetBulkRequestPDU, oids=((1, 3, 6, 1, 2, 1, 47, 1, 1, 1, 1, 14),)),  # alias column
            snmp_pdu(v2c.GetRequestPDU, oids=((1, 3, 6, 1, 2, 1, 1, 5),)),  # sysName without .0
            # Encoded messages, as the sweep's probe would send them.
            snmp_message(snmp_pdu(v2c.SetRequestPDU, v2c.OctetString(b"pwned"))),
            snmp_message(snmp_pdu(v2c.SetRequestPDU)),
            snmp_message(snmp_pdu(v2c.GetRequestPDU, v2c.OctetString(b"a value in a read"))),
            snmp_message(snmp_pdu(v2c.SNMPv2TrapPDU)),
            snmp_message(snmp_pdu(v2c.InformRequestPDU)),
            snmp_message(snmp_pdu(v2c.ResponsePDU)),
            snmp_message(snmp_pdu(v2c.GetRequestPDU, oids=((1, 3, 6, 1, 4, 1, 9, 9, 96, 1, 1, 1, 1, 2, 1),))),
            snmp_message(snmp_pdu(v2c.GetNextRequestPDU, oids=((1, 3, 6),))),
            snmp_message(snmp_pdu(v2c.GetRequestPDU, oids=SYSTEM)) + b"\x00",  # trailing bytes
            snmp_message(snmp_pdu(v2c.GetRequestPDU, oids=SYSTEM))[:-3],  # cut short
            b"not snmp at all",
        ],
    ),
    "ssh-dmi": (
        [
            ("read", "/sys/class/dmi/id/product_serial"),
            ("list", "/sys/bus/usb/devices"),
            ("exec", WINDOWS_COMMAND),
        ],
        [
            ("exec", "reboot"),
            ("exec", WINDOWS_COMMAND + "; Restart-Computer"),
            ("exec", WINDOWS_COMMAND + "\n"),
            ("exec", ""),
            ("write", "/etc/hostname"),
            ("remove", "/tmp/x"),
            ("rename", "/a"),
            ("read", "/etc/passwd\x00"),
            ("read",),
            "exec reboot",
            ("exec", b"reboot"),
        ],
    ),
    "collabos-api": (
        [
            ("POST", "/api/v1/signin", {"username": "admin", "password": "pw"}),
            ("GET", "/api/v1/device", None),
            ("GET", "/api/v1/peripherals", None),
            ("GET", "/api/v1/insights/device", None),
            ("GET", "/api/v1/insights/room", None),
        ],
        [
            ("PUT", "/api/v1/device", None),
            ("DELETE", "/api/v1/device", None),
            ("POST", "/api/v1/device", None),
            ("POST", "/api/v1/reboot", None),
            ("GET", "/api/v1/signin", None),
            ("GET", "/api/v1/device?reboot=1", None),
            ("GET", "/api/v1/device/../reboot", None),
            ("GET", "/api/v1/device", {"x": 1}),
            ("POST", "/api/v1/signin", {"username": "admin", "password": "pw", "mode": "HOST"}),
            ("POST", "/api/v1/signin", None),
            ("GET", "/api/v1/device"),
            "GET /api/v1/device",
        ],
    ),
    "uvc-xu": (
        [
            UvcRequest("scribe", 8, 1, 0x85, 2),
            UvcRequest("scribe", 8, 1, 0x81, 4),
            UvcRequest("scribe", 8, 1, 0x81, 1024),
            UvcRequest("meetup", 5, 1, 0x85, 2),
            UvcRequest("meetup", 8, 1, 0x81, 4),
            UvcRequest("meetup", 8, 3, 0x81, 2),
            UvcRequest("tap-hdmi", 6, 1, 0x01, 8, bytes([0x0B, 0, 0, 0, 0, 0, 0, 0])),
            UvcRequest("tap-hdmi", 6, 2, 0x85, 2),
            UvcRequest("tap-hdmi", 6, 2, 0x81, 8),
        ],
        [
            UvcRequest("scribe", 8, 1, 0x01, 4, b"\x00\x00\x00\x00"),  # SET_CUR
            UvcRequest("scribe", 8, 2, 0x81, 4),  # another selector
            UvcRequest("scribe", 7, 1, 0x81, 4),  # another unit
            UvcRequest("scribe", 8, 1, 0x81, 2048),  # longer than a version
            UvcRequest("scribe", 8, 1, 0x85, 2, b"\x01\x00"),  # data on a GET
            UvcRequest("meetup", 8, 2, 0x81, 4),
            UvcRequest("meetup", 8, 1, 0x01, 4, b"\x00" * 4),
            UvcRequest("tap-hdmi", 6, 3, 0x81, 8),  # selector 3: firmware
            UvcRequest("tap-hdmi", 6, 4, 0x01, 8, bytes(8)),  # selector 4: firmware
            UvcRequest("tap-hdmi", 6, 1, 0x01, 8, bytes([0x0C, 0, 0, 0, 0, 0, 0, 0])),  # another select
            UvcRequest("tap-hdmi", 6, 1, 0x01, 9, bytes([0x0B, 0, 0, 0, 0, 0, 0, 0, 0])),
            UvcRequest("tap-hdmi", 6, 2, 0x01, 8, bytes(8)),  # SET_CUR of the read selector
            UvcRequest("tap-hdmi", 6, 2, 0x81, 9),
            ("scribe", 8, 1, 0x81, 4),  # not a request object
        ],
    ),
    "hid-feature": (
        [
            HidRequest("rally-audio", "get", 0x3E, 513),
            HidRequest("tap-presence", "set", 0x1B, 5, bytes([0x1B, 0x04, 0, 0, 0])),
            HidRequest("tap-presence", "get", 0x19, 5),
        ],
        [
            HidRequest("rally-audio", "set", 0x3E, 513, bytes([0x3E]) + bytes(512)),  # no SET before it
            HidRequest("rally-audio", "get", 0x3E, 512),
            HidRequest("rally-audio", "get", 0x28, 49),  # the serial request of another client
            HidRequest("tap-presence", "set", 0x1A, 5, bytes([0x1A, 1, 0, 0, 0])),  # test mode
            HidRequest("tap-presence", "get", 0x1A, 5),
            HidRequest("tap-presence", "set", 0x1B, 5, bytes([0x1B, 0x05, 0, 0, 0])),
            HidRequest("tap-presence", "get", 0x19, 64),
            HidRequest("rally-audio", "get", 0x1A, 513),
            b"\x3e" + bytes(512),
        ],
    ),
    "usb-bulk": (
        [bytes([0x01, 0xCC, 0xEF, 0xBE, 0, 0, 0, 0]), bytes([0x07, 0xCC, 0xFF, 0xFF, 0, 0, 0, 0])],
        [
            struct.pack("<II", 0xCC03, 0),  # firmware download
            bytes([0x03, 0xCC, 0, 0, 0, 0, 0, 0]),
            bytes([0x01, 0xCC, 0xEF, 0xBE, 0, 0, 0, 0, 0]),  # one byte more
            bytes([0x07, 0xCC, 0xFF, 0xFF, 0, 0, 0, 1]),
            b"",
            "01 CC EF BE 00 00 00 00",
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(COLLECTORS))
def test_every_registered_collector_loads_and_declares_what_it_sends(name: str) -> None:
    cls = collector_class(name)
    assert cls.name == name
    assert cls.writes is None or (isinstance(cls.writes, str) and callable(cls.gate))


def test_every_gate_is_fed_forbidden_requests() -> None:
    gated = {name for name in COLLECTORS if collector_class(name).gate is not None}
    assert gated == set(GATE_CASES)


@pytest.mark.parametrize(
    ("name", "request_"),
    [(name, r) for name, (_ok, bad) in GATE_CASES.items() for r in bad],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_gates_refuse_what_is_not_a_documented_read(name: str, request_: Any) -> None:
    gate = collector_class(name).gate
    with pytest.raises(ReadOnlyViolation):
        gate(request_)


@pytest.mark.parametrize(
    ("name", "request_"), [(name, r) for name, (ok, _bad) in GATE_CASES.items() for r in ok]
)
def test_gates_let_the_documented_reads_through(name: str, request_: Any) -> None:
    collector_class(name).gate(request_)


def test_the_sync_gates_violation_is_the_common_one() -> None:
    from agent.collectors.sync.errors import ReadOnlyViolation as SyncViolation
    from agent.collectors.sync.errors import SyncError

    assert issubclass(SyncViolation, ReadOnlyViolation) and issubclass(SyncViolation, SyncError)


class _NoGate:
    name: ClassVar[str] = "no-gate"
    writes: ClassVar[str | None] = "vendor requests"
    gate = None


class _Undeclared:
    name: ClassVar[str] = "undeclared"


class _GateButNoWrites:
    name: ClassVar[str] = "confused"
    writes = None
    gate = staticmethod(lambda request: None)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_NoGate, "declares no read-only gate"),
        (_Undeclared, "must declare `writes`"),
        (_GateButNoWrites, "says it sends nothing"),
    ],
)
def test_the_registry_refuses_a_collector_without_a_gate(cls: Any, message: str) -> None:
    with pytest.raises(CollectorRegistryError, match=message):
        check_collector(cls.name, cls)
    table = {cls.name: CollectorEntry(cls.name, f"{__name__}:{cls.__name__}", "usb", "product")}
    with pytest.raises(CollectorRegistryError, match=message):
        collector_class(cls.name, table)


def test_a_class_must_carry_its_registered_name() -> None:
    with pytest.raises(CollectorRegistryError, match="names itself"):
        check_collector("sync-interface", _NoGate)


# ----------------------------------------------------------------------------- catalog

BAR = {"name": "Bar", "family": "collabos-bar", "kind": "video bar", "usb": [{"pid": 0x089B}]}


@pytest.mark.parametrize(
    ("collectors", "message"),
    [
        (["hid-firmware"], r"product\[0\] \(Bar\): collectors names unknown collector 'hid-firmware'"),
        (["usb-descriptor"], "reads every usb endpoint already"),
        (["sync-interface", "sync-interface"], "lists a name twice"),
        ("sync-interface", "must be a list"),
    ],
)
def test_the_catalog_checks_collector_names_against_the_registry(collectors: Any, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog({"product": [{**BAR, "collectors": collectors}]})


def test_a_usb_collector_needs_a_product_seen_on_usb() -> None:
    lan_only = {"name": "Lan bar", "family": "collabos-bar", "host_names": ["LanBar-"]}
    with pytest.raises(CatalogError, match=r"Lan bar.*has no usb ids"):
        parse_catalog({"product": [{**lan_only, "collectors": ["sync-interface"]}]})


def test_the_shipped_catalog_names_the_sync_interface_for_every_collabos_bar_on_usb() -> None:
    catalog = load_catalog()
    bars = [p for p in catalog.products.values() if p.family == "collabos-bar" and p.usb]
    assert bars
    for product in catalog.products.values():
        assert ("sync-interface" in product.collectors) == (product in bars), product.name
        # A unit whose firmware a collector reads: its bcdDevice is not its firmware (the
        # CollabOS version is, or the version the firmware collector reads).
        # The Rally Camera's version is the Rally system's, read from its display hub.
        reads_none = product.name == "Rally Camera"
        assert product.usb_release_is_firmware == (not product.collectors and not reads_none), product.name


def test_the_shipped_catalog_names_a_firmware_collector_for_every_room_family_on_usb() -> None:
    from agent.collectors.usbfw.collectors import BULK_IDS, HID_RECIPES, UVC_RECIPES

    catalog = load_catalog()
    expected = {
        "Scribe": ("uvc-xu",),
        "MeetUp": ("uvc-xu",),
        "Tap": ("uvc-xu", "hid-feature"),
        "Rally Display Hub": ("hid-feature",),
        "Rally Table Hub": ("usb-bulk",),
    }
    for name, collectors in expected.items():
        assert catalog.product(name).collectors == collectors, name
    # Every recipe's USB id is a function of a product that names its collector.
    for table, collector in ((UVC_RECIPES, "uvc-xu"), (HID_RECIPES, "hid-feature"), (BULK_IDS, "usb-bulk")):
        for vid, pid in table:
            match = catalog.match_usb(vid, pid)
            assert match is not None and collector in match.product.collectors, (hex(pid), collector)


# ----------------------------------------------------------------------------- the USB source


class CountingReader:
    """A product collector registered by a test: the extension point as docs/adding-a-device.md
    describes it (one class, one registry line, one catalog line)."""

    name: ClassVar[str] = "test-reader"
    writes: ClassVar[str | None] = None
    gate = None
    seen: ClassVar[list[str]] = []

    def collect(self, observation: Any, unit: Any, ctx: Any) -> tuple[Any, str | None]:
        self.seen.append(unit.main.name)
        observation.firmware, observation.firmware_source = "9.9.9", self.name
        return observation, "the test reader's error" if unit.main.name == "1-2" else None


def test_the_usb_source_runs_what_the_catalog_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.collectors.registry as registry

    entry = CollectorEntry("test-reader", f"{__name__}:CountingReader", "usb", "product")
    monkeypatch.setitem(registry.COLLECTORS, "test-reader", entry)
    catalog = parse_catalog(
        {
            "product": [
                {"name": "Read", "family": "camera", "usb": [{"pid": 0x0001}], "collectors": ["test-reader"]},
                {"name": "Plain", "family": "camera", "usb": [{"pid": 0x0002}]},
            ]
        }
    )
    add_device(tmp_path, "1-1", 0x046D, 0x0001, serial="A1")
    add_device(tmp_path, "1-2", 0x046D, 0x0001, serial="A2")
    add_device(tmp_path, "1-3", 0x046D, 0x0002, serial="B1", bcd=0x0105)
    CountingReader.seen.clear()
    source = UsbSource(tmp_path, libusb_strings=False)
    source.devices_reachable = True  # as on live USB
    result = source.scan(ScanContext(catalog, NOW))
    assert CountingReader.seen == ["1-1", "1-2"]
    by_name = {o.address: o for o in result.observations}
    assert by_name["1-1"].firmware == "9.9.9" and by_name["1-3"].firmware == "1.05"
    assert [(e.target, e.message) for e in result.errors] == [("1-2", "the test reader's error")]
    # A captured tree's devices are never opened: no product collector runs on it.
    CountingReader.seen.clear()
    UsbSource(tmp_path, libusb_strings=False).scan(ScanContext(catalog, NOW))
    assert CountingReader.seen == []


_LAZY = textwrap.dedent(
    """
    import json, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from agent.catalog import load_catalog
    from agent.discovery import ScanContext
    from agent.discovery.usb import UsbSource
    source = UsbSource(Path(sys.argv[1]), libusb_strings=False)
    source.devices_reachable = sys.argv[2] == "reachable"
    source.sync_transport = lambda record: (_ for _ in ()).throw(AssertionError("opened"))
    observations = source.scan(ScanContext(load_catalog(), datetime.now(UTC))).observations
    print(json.dumps({"products": sorted(o.product for o in observations),
                      "sync_loaded": "agent.collectors.sync" in sys.modules,
                      "protobuf_loaded": "google.protobuf" in sys.modules}))
    """
)


def _lazy_scan(root: Path, reachable: bool) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _LAZY, str(root), "reachable" if reachable else "captured"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_the_sync_interface_code_loads_only_for_a_bar(tmp_path: Path) -> None:
    add_device(tmp_path, "1-1", 0x046D, 0x0866, serial="MEETUP1")  # MeetUp
    add_device(tmp_path, "1-2", 0x046D, 0x085E, serial="476C95B2")  # Brio
    found = _lazy_scan(tmp_path, reachable=True)
    assert found == {"products": ["Brio", "MeetUp"], "sync_loaded": False, "protobuf_loaded": False}
    # A bar on a captured tree: identified, but its device is not opened, so nothing loads.
    add_device(tmp_path, "2-1", 0x046D, 0x089B, serial="2313FD1N08Z2")
    assert _lazy_scan(tmp_path, reachable=False)["sync_loaded"] is False
