"""Room-PC facts → observations, and the Windows inventory command and its parser.

The Windows outputs in ``tests/data/windows`` are composed from Microsoft's documentation
of the CIM classes the command reads (Win32_BIOS, Win32_ComputerSystem,
Win32_OperatingSystem, Win32_BaseBoard, Win32_PnPEntity), not captured from a real PC.
Reading Linux PCs over SFTP is tested against a real sshd in ``test_ssh_source.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.catalog import UNKNOWN_LOGITECH, load_catalog
from agent.collectors.room_pc import (
    PcFacts,
    PcPlace,
    choose_serial,
    observe_pc,
    os_release_name,
    parse_uptime,
)
from agent.collectors.windows_pc import (
    MAX_OUTPUT_BYTES,
    WINDOWS_COMMAND,
    WINDOWS_INVENTORY_SCRIPT,
    WindowsOutputError,
    parse_windows_inventory,
    summarize_stderr,
)
from agent.model import SerialSource, Severity, Transport
from agent.usbtree import UsbRecord, parse_device, read_entries

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
WINDOWS_DATA = Path(__file__).parent / "data" / "windows"
PLACE = PcPlace("oslo-pc", room="oslo-4-12")


def windows_example(name: str) -> bytes:
    return (WINDOWS_DATA / name).read_bytes()


def by_product(observations: list) -> dict:
    return {o.product: o for o in observations}


# --------------------------------------------------------------------------- serial rule


@pytest.mark.parametrize(
    ("system", "board", "serial", "source_field"),
    [
        (b"G6JY00A1\n", b"BTTN2140012A\n", "G6JY00A1", "product_serial"),
        (b"To be filled by O.E.M.\n", b"BTTN2140012A\n", "BTTN2140012A", "board_serial"),
        (b"Default string\n", b"BTTN2140012A\n", "BTTN2140012A", "board_serial"),
        (b"System Serial Number\n", b"BTTN2140012A\n", "BTTN2140012A", "board_serial"),
        (b"0\n", b"BTTN2140012A\n", "BTTN2140012A", "board_serial"),
        (b"00000000\n", b"BTTN2140012A\n", "BTTN2140012A", "board_serial"),
        (b"\n", b"BTTN2140012A\n", "BTTN2140012A", "board_serial"),
        (None, b"BTTN2140012A\n", "BTTN2140012A", "board_serial"),
    ],
)
def test_system_serial_else_board_serial(
    system: bytes | None, board: bytes, serial: str, source_field: str
) -> None:
    choice = choose_serial(PcFacts("linux", system_serial=system, board_serial=board))
    fell_back = source_field == "board_serial"
    # A board serial stands in for the system serial, but the case label carries the latter.
    assert (choice.value, choice.source_field, choice.label_grade) == (serial, source_field, not fell_back)
    assert choice.problem is None
    assert [n.code for n in choice.notes] == (["serial-from-board"] if fell_back else [])


def test_both_placeholders_leave_no_serial_and_say_why() -> None:
    choice = choose_serial(
        PcFacts("linux", system_serial=b"To be filled by O.E.M.\n", board_serial=b"Default string\n")
    )
    assert choice.value is None
    assert choice.problem == (
        "no usable serial: product_serial is a placeholder "
        "('To be filled by O.E.M.'); board_serial is a placeholder ('Default string')"
    )
    [note] = choice.notes
    assert (note.code, note.severity) == ("serial-missing", Severity.WARNING)


def test_unreadable_serials_name_the_reason_and_the_remedy() -> None:
    facts = PcFacts(
        "linux", unreadable={"product_serial": "Permission denied", "board_serial": "Permission denied"}
    )
    choice = choose_serial(facts)
    assert choice.value is None
    assert choice.problem is not None
    assert "product_serial is unreadable (Permission denied)" in choice.problem
    assert "give the SSH user read access" in choice.problem


def test_a_repaired_serial_is_kept_but_not_label_grade() -> None:
    choice = choose_serial(PcFacts("linux", system_serial=b"G6JY\xff00A1\n"))
    assert choice.value == "G6JY\ufffd00A1"
    assert choice.label_grade is False


# --------------------------------------------------------------------------- Linux facts


def test_pc_observation_carries_identity_firmware_room_and_attributes() -> None:
    facts = PcFacts(
        "linux",
        system_serial=b"G6JY00A1\n",
        board_serial=b"BTTN2140012A\n",
        hostname="oslo-pc",
        os_name="Debian GNU/Linux 12 (bookworm)",
        vendor="Intel(R) Client Systems",
        model="NUC11TNHi5",
        bios_version="TNTGL357.0064.2022.0906.1405",
        uptime_s=350735,
        attributes={"bios_date": "09/06/2022"},
    )
    report = observe_pc(facts, PLACE, load_catalog(), NOW)
    [pc] = report.observations
    assert report.problems == []
    assert (pc.product, pc.transport, pc.address) == ("Room PC", Transport.SSH, "oslo-pc")
    assert pc.room == "oslo-4-12"
    assert (pc.serial, pc.serial_source, pc.serial_label_grade) == ("G6JY00A1", SerialSource.SSH_DMI, True)
    assert (pc.firmware, pc.firmware_source) == ("TNTGL357.0064.2022.0906.1405", "bios")
    assert (pc.vendor, pc.model) == ("Intel(R) Client Systems", "NUC11TNHi5")
    assert pc.attributes == {
        "serial_from": "product_serial",
        "os_family": "linux",
        "hostname": "oslo-pc",
        "os": "Debian GNU/Linux 12 (bookworm)",
        "product_name": "NUC11TNHi5",
        "sys_vendor": "Intel(R) Client Systems",
        "board_serial": "BTTN2140012A",
        "uptime_s": 350735,
        "bios_date": "09/06/2022",
    }
    assert pc.health == []


def test_a_repaired_or_unreadable_fact_is_told_not_hidden() -> None:
    facts = PcFacts(
        "linux",
        system_serial=b"G6JY\xff00A1\n",
        unreadable={"bios_version": "Permission denied", "board_serial": "Permission denied"},
    )
    [pc] = observe_pc(facts, PLACE, load_catalog(), NOW).observations
    assert (pc.serial, pc.serial_label_grade) == ("G6JY\ufffd00A1", False)
    # The serial fact is covered by the serial rule; the others get a note each.
    assert [(i.code, i.message) for i in pc.health] == [
        ("pc-fact-unreadable", "bios_version: cannot read (Permission denied)")
    ]


def test_placeholder_vendor_and_model_are_not_shown_as_such() -> None:
    facts = PcFacts(
        "linux", system_serial=b"G6JY00A1", vendor="To be filled by O.E.M.", model="System Product Name"
    )
    [pc] = observe_pc(facts, PLACE, load_catalog(), NOW).observations
    assert (pc.vendor, pc.model) == (None, None)
    assert (pc.attributes["sys_vendor"], pc.attributes["product_name"]) == (
        "To be filled by O.E.M.",
        "System Product Name",
    )


def test_a_pc_without_dmi_is_listed_with_a_note_and_one_problem() -> None:
    report = observe_pc(PcFacts("linux"), PLACE, load_catalog(), NOW)
    [pc] = report.observations
    assert pc.serial is None and pc.serial_source is None and not pc.serial_label_grade
    assert [i.code for i in pc.health] == ["serial-missing"]
    assert report.problems == ["no usable serial: product_serial is absent; board_serial is absent"]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (
            b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n',
            "Debian GNU/Linux 12 (bookworm)",
        ),
        (
            b"NAME='Ubuntu'\nVERSION=\"22.04.4 LTS (Jammy Jellyfish)\"\n",
            "Ubuntu 22.04.4 LTS (Jammy Jellyfish)",
        ),
        (b'# comment\nPRETTY_NAME="Say \\"hi\\""\n', 'Say "hi"'),
        (b"garbage without equals\n", None),
        (None, None),
    ],
)
def test_os_release(text: bytes | None, name: str | None) -> None:
    assert os_release_name(text) == name


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (b"350735.47 234388.90\n", 350735),
        (b"12\n", 12),
        (b"", None),
        (b"-5 1", None),
        (b"nan 1", None),
        (b"abc", None),
        (None, None),
    ],
)
def test_uptime(text: bytes | None, seconds: int | None) -> None:
    assert parse_uptime(text) == seconds


# --------------------------------------------------------------------------- shared USB parser


def test_entries_listed_by_any_reader_are_read_in_topology_order() -> None:
    """read_entries/parse_device are the local USB source's parser; a room PC's listing
    arrives in whatever order its SFTP server gives."""
    attrs = {
        "1-1.10": {"idVendor": b"046d\n", "idProduct": b"085e\n", "serial": b"476C95B3\n"},
        "1-1.2": {"idVendor": b"046d\n", "idProduct": b"089b\n", "busnum": b"1\n"},
        "usb1": {"idVendor": b"1d6b\n", "idProduct": b"0002\n"},
        "2-1": {"idVendor": b"zzzz\n", "idProduct": b"0002\n"},
    }

    def read_entry(name: str) -> UsbRecord:
        if name == "1-3":
            raise PermissionError(13, "Permission denied")
        issues: list = []
        return parse_device(name, Path(name), lambda attr: attrs[name].get(attr), issues)

    names = ["2-1", "1-1.10", "1-1.2:1.0", "odd-name", "1-3", "usb1", "1-1.2"]
    found = read_entries(Path("/remote/sys/bus/usb/devices"), names, read_entry)
    assert [r.name for r in found.records] == ["usb1", "1-1.2", "1-1.10"]
    assert found.records[2].serial == "476C95B3" and found.records[1].busnum == 1
    assert found.errors == [
        ("1-3", "cannot read: Permission denied"),
        ("2-1", "idVendor/idProduct missing or not 4 hex digits"),
        ("odd-name", "not a USB device entry name; skipped"),
    ]


# --------------------------------------------------------------------------- Windows command


def test_windows_command_is_one_constant_with_nothing_a_shell_could_reinterpret() -> None:
    program, *options, encoded = WINDOWS_COMMAND.split(" ")
    assert program == "powershell.exe"
    assert options == ["-NoLogo", "-NoProfile", "-NonInteractive", "-EncodedCommand"]
    # Only base64 characters after the options: cmd.exe and PowerShell have nothing to parse.
    assert re.fullmatch(r"[A-Za-z0-9+/]+=*", encoded)
    assert base64.b64decode(encoded).decode("utf-16-le") == WINDOWS_INVENTORY_SCRIPT


def test_windows_script_reads_the_documented_classes_and_logitech_usb_only() -> None:
    for cim_class in (
        "Win32_BIOS",
        "Win32_ComputerSystem",
        "Win32_OperatingSystem",
        "Win32_BaseBoard",
        "Win32_PnPEntity",
    ):
        assert f"-ClassName {cim_class}" in WINDOWS_INVENTORY_SCRIPT
    assert "'USB\\VID_046D*'" in WINDOWS_INVENTORY_SCRIPT
    # Read-only: no cmdlet that changes anything (Set-, Remove-, Invoke-, New-Item, Start-…).
    verbs = set(re.findall(r"\b([A-Z][a-z]+)-[A-Z][A-Za-z]+", WINDOWS_INVENTORY_SCRIPT))
    assert verbs <= {"Get", "Select", "Where", "ForEach", "ConvertTo", "New"}
    assert "New-Object System.Text.UTF8Encoding" in WINDOWS_INVENTORY_SCRIPT


# --------------------------------------------------------------------------- Windows parser


def test_windows_nuc_with_rally_bar_brio_and_a_failed_receiver() -> None:
    facts = parse_windows_inventory(windows_example("nuc-rally-bar.json"))
    report = observe_pc(facts, PLACE, load_catalog(), NOW)
    assert report.problems == []
    units = by_product(report.observations)
    assert set(units) == {"Room PC", "Rally Bar", "Brio", UNKNOWN_LOGITECH}

    pc = units["Room PC"]
    assert (pc.serial, pc.serial_source, pc.serial_label_grade) == ("G6JY00A1", SerialSource.SSH_DMI, True)
    assert pc.attributes["serial_from"] == "Win32_BIOS.SerialNumber"
    assert (pc.firmware, pc.firmware_source) == ("TNTGL357.0064.2022.0906.1405", "bios")
    assert (pc.vendor, pc.model) == ("Intel(R) Client Systems", "NUC11TNHi5")
    assert pc.attributes["hostname"] == "OSLO-4-12-PC"
    assert pc.attributes["os"] == "Microsoft Windows 11 Enterprise 10.0.22631"
    assert pc.attributes["os_family"] == "windows"
    assert pc.attributes["uptime_s"] == 100308
    assert pc.attributes["board_serial"] == "BTTN2140012A"
    assert pc.attributes["last_boot"] == "2026-11-20T07:58:12.5000000Z"

    bar = units["Rally Bar"]
    assert bar.address == "oslo-pc/usb/USB\\VID_046D&PID_089B\\2313FD1N08Z2"
    assert (bar.transport, bar.room) == (Transport.SSH, "oslo-4-12")
    assert (bar.serial, bar.serial_label_grade) == ("2313FD1N08Z2", True)
    assert bar.attributes["attached_to"] == "oslo-pc"
    assert bar.attributes["pnp_device_id"] == "USB\\VID_046D&PID_089B\\2313FD1N08Z2"
    assert bar.attributes["serial_read_from"] == "pnp-instance-id"
    # Hubs, HID and audio of the bar fold into it; interface entries (&MI_) are not units.
    assert sorted(f["role"] for f in bar.attributes["functions"]) == ["audio", "hid", "hub", "hub"]
    assert [i.code for i in bar.health] == ["firmware-not-read"]

    brio = units["Brio"]
    assert brio.serial == "476C95B3"
    assert brio.serial_label_grade is False  # a Brio's USB serial is not its label's (catalog)

    receiver = units[UNKNOWN_LOGITECH]
    assert receiver.serial is None  # "5&2B8D1C3&0&4" is generated by Windows, not a serial
    assert receiver.product_id == 0xC52B
    status = [i for i in receiver.health if i.code == "pnp-status"]
    assert status and "'Error'" in status[0].message and "error code 28" in status[0].message


def test_windows_placeholder_bios_serial_falls_back_to_the_board() -> None:
    facts = parse_windows_inventory(windows_example("placeholder-bios-serial.json"))
    report = observe_pc(facts, PLACE, load_catalog(), NOW)
    units = by_product(report.observations)
    pc = units["Room PC"]
    assert pc.serial == "M80-C4002301234"
    assert pc.attributes["serial_from"] == "Win32_BaseBoard.SerialNumber"
    assert [i.code for i in pc.health] == ["serial-from-board"]
    assert "Win32_BIOS.SerialNumber is a placeholder ('To be filled by O.E.M.')" in pc.health[0].message
    # "usb" written as one object instead of a list of one is read all the same.
    assert units["MeetUp"].serial is None


def test_windows_without_any_serial_is_one_problem() -> None:
    report = observe_pc(
        parse_windows_inventory(windows_example("no-serial.json")), PLACE, load_catalog(), NOW
    )
    assert [o.product for o in report.observations] == ["Room PC"]
    assert report.problems == [
        "no usable serial: Win32_BIOS.SerialNumber is a placeholder ('Default string'); "
        "Win32_BaseBoard.SerialNumber is a placeholder ('Default string')"
    ]
    assert report.messages == ["no Logitech USB devices found"]


def test_windows_output_with_bom_and_crlf_is_accepted() -> None:
    raw = b"\xef\xbb\xbf" + windows_example("no-serial.json").replace(b"\n", b"\r\n")
    assert parse_windows_inventory(raw).hostname == "MADRID-1-03"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "printed nothing"),
        (b"'powershell.exe' is not recognized as an internal or external command", "not valid JSON"),
        (b'{"roomsync_inventory": 1, "bios": ', "not valid JSON (Expecting value at line 1 column 34)"),
        (b"[1, 2]", "not the roomsync inventory"),
        (b'{"bios": {}}', "not the roomsync inventory"),
        (b'{"roomsync_inventory": 1, "bios": "G6JY00A1"}', '"bios" in the inventory output is not an object'),
        (b'{"roomsync_inventory": 1, "pad": "' + b"x" * MAX_OUTPUT_BYTES + b'"}', "larger than"),
    ],
)
def test_malformed_windows_output_is_one_clear_error(raw: bytes, message: str) -> None:
    with pytest.raises(WindowsOutputError, match=re.escape(message)):
        parse_windows_inventory(raw)


def test_odd_usb_entries_are_reported_not_fatal() -> None:
    data = json.loads(windows_example("no-serial.json"))
    data["usb"] = [
        "not an object",
        {"DeviceID": "HID\\VID_046D&PID_C52B\\x"},
        {"DeviceID": "USB\\VID_046D&PID_085E\\476C95B3", "ConfigManagerErrorCode": 22},
    ]
    facts = parse_windows_inventory(json.dumps(data).encode())
    [brio] = facts.usb_records
    assert brio.name == "USB\\VID_046D&PID_085E\\476C95B3"
    assert [i.message for i in brio.issues] == [
        "Windows reports the device's status as 'unknown' (device manager error code 22)"
    ]
    assert [e for e, _ in facts.usb_errors] == ["usb", "HID\\VID_046D&PID_C52B\\x"]
    report = observe_pc(facts, PLACE, load_catalog(), NOW)
    assert len(report.problems) == 3  # the missing serial, and the two entries


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_SECTION = st.dictionaries(
    st.sampled_from(
        [
            "SerialNumber",
            "SMBIOSBIOSVersion",
            "Manufacturer",
            "Name",
            "Model",
            "Caption",
            "Version",
            "UptimeSeconds",
            "Product",
        ]
    ),
    _JSON,
    max_size=6,
)


@settings(max_examples=80, deadline=None)
@given(
    bios=_SECTION,
    system=_SECTION,
    board=_SECTION,
    usb=st.lists(
        st.dictionaries(
            st.sampled_from(["DeviceID", "Name", "Status", "PNPClass", "ConfigManagerErrorCode"]),
            st.text() | st.integers() | st.none(),
            max_size=5,
        ),
        max_size=5,
    )
    | _JSON,
)
def test_any_shape_of_inventory_json_gives_facts_or_one_clear_error(bios, system, board, usb) -> None:
    raw = json.dumps(
        {"roomsync_inventory": 1, "bios": bios, "computer_system": system, "baseboard": board, "usb": usb}
    ).encode()
    try:
        facts = parse_windows_inventory(raw)
    except WindowsOutputError:
        return
    report = observe_pc(facts, PLACE, load_catalog(), NOW)
    assert report.observations[0].product == "Room PC"


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_facts_or_one_clear_error(raw: bytes) -> None:
    with contextlib.suppress(WindowsOutputError):
        parse_windows_inventory(raw)


def test_powershell_clixml_errors_become_one_readable_line() -> None:
    clixml = (
        b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        b'<S S="Error">Get-CimInstance : Access denied _x000D__x000A_</S>'
        b'<S S="Error">At line:4 char:9_x000D__x000A_</S></Objs>'
    )
    assert summarize_stderr(clixml) == "Get-CimInstance : Access denied At line:4 char:9"
    assert (
        summarize_stderr(b"\r\n'powershell.exe' is not recognized\r\nmore\r\n")
        == "'powershell.exe' is not recognized"
    )
    assert summarize_stderr(b"") == "nothing on standard error"
