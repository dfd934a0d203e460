"""Fuzz: what a room PC says about itself over SSH (agent/collectors/room_pc.py,
agent/collectors/windows_pc.py).

Linux: DMI attribute files, host name, os-release, /proc/uptime and the PC's USB sysfs tree,
read through a fake SFTP reader whose files hold any bytes, are missing, or fail to read.
Windows: the inventory command's output — random bytes, random JSON, the expected document
with nodes of the wrong type, nesting bombs — and its standard error (CLIXML).

Documented behaviour: reading a Linux PC records an unreadable file against that file and
goes on; ``parse_windows_inventory`` "Raises :class:`WindowsOutputError`" (nothing else);
``observe_pc`` turns any facts into observations ("never a crash"); the one-line summaries
are capped and clean.
"""

from __future__ import annotations

import json
import posixpath
from datetime import UTC, datetime, timedelta

from hypothesis import example, given
from hypothesis import strategies as st

from agent.catalog import load_catalog
from agent.collectors.room_pc import (
    DMI_DIR,
    DMI_FIELDS,
    PcFacts,
    PcPlace,
    observe_pc,
    os_release_name,
    parse_uptime,
    read_linux_pc,
)
from agent.collectors.windows_pc import (
    MAX_OUTPUT_BYTES,
    MAX_USB_DEVICES,
    WindowsOutputError,
    parse_windows_inventory,
    summarize_stderr,
)
from agent.usbtree import MAX_ATTRIBUTE_BYTES
from tests.fuzz import (
    HOSTILE_JSON_TEXT,
    JSON_TREES,
    check_observation,
    fuzz,
    has_control_chars,
    mutated,
    mutated_tree,
)
from tests.sysfs import device_descriptor

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CATALOG = load_catalog()
PLACE = PcPlace("room-pc-12", room="oslo-4-12")
USB_IDS = sorted({(u.vid, u.pid) for p in CATALOG.products.values() for u in p.usb})

_TEXT_BYTES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: (t + "\n").encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"To be filled by O.E.M.\n",
            b"Default string\n",
            b"0\n",
            b"\n",
            b"G6JY00A1\n",
            b"System Product Name\n",
            b"\x00\x00\x00\x00",
            b"\xff\xfe\n",
            b"x" * 5000,
        ]
    ),
)


def _os_release() -> st.SearchStrategy[bytes]:
    line = st.one_of(
        st.builds(
            lambda k, v: f"{k}={v}",
            st.sampled_from(["PRETTY_NAME", "NAME", "VERSION", "ID", "x", ""]),
            st.text(max_size=60)
            | st.sampled_from(['"Ubuntu 24.04 LTS"', "'Debian'", '"unterminated', '"a\\"b\\\\"', "\\", '""']),
        ),
        st.text(max_size=40),
    )
    return st.lists(line, max_size=8).map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
    ) | st.binary(max_size=200)


_UPTIME = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"350735.47 234388.90\n",
            b"nan 1",
            b"inf",
            b"-1 0",
            b"1e10",
            b"9" * 400,
            b"",
            b" ",
            b"\xff 1",
            b"1_000 2",
            "١٢٣ 4".encode(),
        ]
    ),
)


class _Failing:
    """Marks a file that exists but cannot be read (EACCES, EIO)."""

    def __init__(self, message: str) -> None:
        self.message = message


class FakeFiles:
    """A PC's files as the SSH source's SFTP reader serves them (RemoteFiles)."""

    def __init__(self, files: dict[str, bytes | _Failing], dirs: dict[str, list[str] | _Failing]) -> None:
        self.files = files
        self.dirs = dirs
        self.reads = 0

    def read(self, path: str, limit: int) -> bytes | None:
        self.reads += 1
        found = self.files.get(path)
        if isinstance(found, _Failing):
            raise PermissionError(13, found.message)
        return None if found is None else found[:limit]

    def listdir(self, path: str) -> list[str]:
        found = self.dirs.get(path)
        if found is None:
            raise FileNotFoundError(2, "No such file")
        if isinstance(found, _Failing):
            raise OSError(5, found.message)
        return list(found)


_FAIL = st.sampled_from(["Permission denied", "Input/output error", ""]).map(_Failing)


@st.composite
def linux_pcs(draw: st.DrawFn) -> FakeFiles:
    sysfs = draw(st.sampled_from(["/sys", "/host/sys"]))
    files: dict[str, bytes | _Failing] = {}
    for name in DMI_FIELDS:
        kind = draw(st.sampled_from(["text", "text", "absent", "fail"]))
        if kind != "absent":
            files[posixpath.join(sysfs, DMI_DIR, name)] = draw(_TEXT_BYTES) if kind == "text" else draw(_FAIL)
    for path, values in (
        ("/proc/sys/kernel/hostname", _TEXT_BYTES),
        ("/etc/hostname", _TEXT_BYTES),
        ("/etc/os-release", _os_release()),
        ("/usr/lib/os-release", _os_release()),
        ("/proc/uptime", _UPTIME),
    ):
        kind = draw(st.sampled_from(["text", "text", "absent", "fail"]))
        if kind != "absent":
            files[path] = draw(values) if kind == "text" else draw(_FAIL)
    devices = posixpath.join(sysfs, "bus", "usb", "devices")
    dirs: dict[str, list[str] | _Failing] = {}
    kind = draw(st.sampled_from(["tree", "tree", "absent", "fail", "huge"]))
    if kind == "fail":
        dirs[devices] = draw(_FAIL)
    elif kind == "huge":
        dirs[devices] = [f"1-1.{i}" for i in range(draw(st.integers(1000, 1100)))]
    elif kind == "tree":
        entry_names = st.sampled_from(
            ["usb1", "1-1", "1-1.1", "1-1.2", "1-1.4", "1-1:1.0", "2-1", "x", "1-1.2.3"]
        )
        names = draw(st.lists(entry_names | st.text(max_size=8), max_size=6, unique=True))
        dirs[devices] = names
        for name in names:
            vid, pid = draw(
                st.sampled_from(USB_IDS) | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
            )
            attrs = {
                "idVendor": f"{vid:04x}\n".encode(),
                "idProduct": f"{pid:04x}\n".encode(),
                "bcdDevice": draw(st.binary(max_size=6) | st.just(b"0100\n")),
                "descriptors": device_descriptor(vid, pid),
                "serial": draw(_TEXT_BYTES),
                "product": draw(_TEXT_BYTES),
                "busnum": b"1\n",
                "devnum": draw(st.binary(max_size=4)),
            }
            for attr, value in attrs.items():
                fate = draw(st.integers(0, 11))
                path = posixpath.join(devices, name, attr)
                files[path] = _Failing("Permission denied") if fate == 0 else value
    return FakeFiles(files, dirs)


def _check_report(facts: PcFacts) -> None:
    report = observe_pc(facts, PLACE, CATALOG, NOW)
    assert report.observations, "the PC itself is always reported"
    pc = report.observations[0]
    assert pc.product == "Room PC" and pc.room == PLACE.room
    for obs in report.observations:
        check_observation(obs)
        assert obs.serial is None or len(obs.serial) <= 64
    assert all(isinstance(p, str) and p for p in report.problems)


@fuzz(70, deadline=timedelta(seconds=5))
@given(linux_pcs())
def test_a_linux_pc_is_read_whatever_its_files_hold(files: FakeFiles) -> None:
    facts = read_linux_pc(files, "/sys")
    for value in (facts.hostname, facts.os_name, facts.vendor, facts.model, facts.bios_version):
        assert value is None or (len(value) <= 128 and not has_control_chars(value))
    assert facts.uptime_s is None or 0 <= facts.uptime_s < 10**10
    _check_report(facts)


@fuzz(140)
@given(_os_release())
@example(b'PRETTY_NAME="\\')
@example(b"PRETTY_NAME=" + b"\\" * 5000)
def test_os_release_name_is_clean_text_or_none(raw: bytes) -> None:
    name = os_release_name(raw)
    assert name is None or (0 < len(name) <= 128 and not has_control_chars(name))


@fuzz(140)
@given(_UPTIME)
def test_uptime_is_whole_seconds_in_range_or_none(raw: bytes) -> None:
    seconds = parse_uptime(raw)
    assert seconds is None or 0 <= seconds < 10**10


# --------------------------------------------------------------------------- Windows


def _windows_document() -> dict[str, object]:
    """The inventory document the fixed PowerShell command prints (windows_pc's docstring)."""
    vid, pid = next(i for i in USB_IDS if i[0] == 0x046D)
    return {
        "roomsync_inventory": 1,
        "bios": {"SerialNumber": "G6JY00A1", "SMBIOSBIOSVersion": "1.2.3", "Manufacturer": "Dell Inc."},
        "computer_system": {"Name": "ROOM-PC-12", "Manufacturer": "Dell Inc.", "Model": "OptiPlex 7090"},
        "operating_system": {
            "Caption": "Microsoft Windows 11 IoT Enterprise",
            "Version": "10.0.22631",
            "LastBootUpTime": "2026-11-20T08:00:00.0000000Z",
            "UptimeSeconds": 100000,
        },
        "baseboard": {"SerialNumber": "/G6JY00A1/CN1/", "Manufacturer": "Dell Inc.", "Product": "0X1Y2Z"},
        "usb": [
            {
                "DeviceID": f"USB\\VID_{vid:04X}&PID_{pid:04X}\\2313FD1N08Z2",
                "Name": "Logi Rally Bar",
                "Status": "OK",
                "PNPClass": "USB",
                "ConfigManagerErrorCode": 0,
            },
            {
                "DeviceID": f"USB\\VID_{vid:04X}&PID_{pid:04X}&MI_00\\7&1A2B&0&0000",
                "Name": "Interface",
                "Status": "OK",
                "PNPClass": "Camera",
                "ConfigManagerErrorCode": 0,
            },
            {
                "DeviceID": "USB\\VID_046D&PID_FFFF\\5&2C3D&0&4",
                "Name": "Something",
                "Status": "Error",
                "PNPClass": None,
                "ConfigManagerErrorCode": 28,
            },
        ],
    }


WINDOWS = _windows_document()
_DEVICE_IDS = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda v, p, rest, inst: f"USB\\VID_{v:04X}&PID_{p:04X}{rest}\\{inst}",
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.sampled_from(["", "&MI_00", "&REV_0100", "&"]),
        st.text(max_size=30),
    ),
)
WINDOWS_OUTPUTS = st.one_of(
    st.just(json.dumps(WINDOWS).encode()),
    mutated_tree(WINDOWS, max_steps=4).map(lambda t: json.dumps(t).encode()),
    st.lists(
        st.fixed_dictionaries(
            {
                "DeviceID": _DEVICE_IDS,
                "Status": st.text(max_size=10),
                "ConfigManagerErrorCode": st.integers() | st.booleans() | st.none(),
            }
        ),
        max_size=8,
    ).map(lambda usb: json.dumps({**WINDOWS, "usb": usb}).encode()),
    st.integers(MAX_USB_DEVICES - 2, MAX_USB_DEVICES + 20).map(
        lambda n: json.dumps(
            {**WINDOWS, "usb": [{"DeviceID": f"USB\\VID_046D&PID_{i:04X}\\SN{i}"} for i in range(n)]}
        ).encode()
    ),
    JSON_TREES.map(lambda t: json.dumps(t).encode()),
    HOSTILE_JSON_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=300),
    st.just(json.dumps(WINDOWS).encode()).flatmap(lambda b: mutated(b, max_steps=3)),
    st.sampled_from(
        [
            b"\xef\xbb\xbf" + json.dumps(WINDOWS).encode(),
            json.dumps(WINDOWS).encode("utf-16"),
            b" " * (MAX_OUTPUT_BYTES + 1),
        ]
    ),
)


@fuzz(80, deadline=timedelta(seconds=5))
@given(WINDOWS_OUTPUTS)
@example(b"[" * 3000)  # was a RecursionError out of json
@example(b"9" * 5000)  # was a ValueError (integer string conversion limit)
@example(b'{"roomsync_inventory": 1, "usb": {"DeviceID": "USB\\\\VID_046D&PID_0881\\\\\\u0000"}}')
def test_windows_output_parses_or_raises_windows_output_error(raw: bytes) -> None:
    try:
        facts = parse_windows_inventory(raw)
    except WindowsOutputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert len(facts.usb_records) <= MAX_USB_DEVICES
    _check_report(facts)


@fuzz(140)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(st.text(max_size=40), max_size=5).map(
            lambda parts: (
                "#< CLIXML\r\n<Objs>"
                + "".join(f'<S S="Error">{p}_x000D__x000A_</S>' for p in parts)
                + "</Objs>"
            ).encode()
        ),
    )
)
@example(b'#< CLIXML\n<S S="Error">&#0;&#x1b;[31m&bogus;</S>')
def test_stderr_summary_is_one_clean_line(raw: bytes) -> None:
    line = summarize_stderr(raw)
    assert 0 < len(line) <= 200 and not has_control_chars(line)


def test_attribute_cap_is_what_the_reader_asks_for() -> None:
    """The fake reader honours ``limit`` as SFTP does (guards the fake)."""
    files = FakeFiles({"/a": b"x" * (MAX_ATTRIBUTE_BYTES * 2)}, {})
    assert len(files.read("/a", MAX_ATTRIBUTE_BYTES) or b"") == MAX_ATTRIBUTE_BYTES
