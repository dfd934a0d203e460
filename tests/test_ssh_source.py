"""The SSH source against a real OpenSSH sshd on 127.0.0.1 (tests/peers_ssh.py).

One sshd serves the whole module. Linux PCs are fake sysfs trees (DMI files + USB device
entries, tests/sysfs.py) that the source reads over SFTP with ``sysfs_root`` pointing at
them; the host name, os-release and uptime are this machine's own. The Windows port runs a
stand-in for powershell.exe that records the command line it was sent and answers with an
example composed from Microsoft's documentation (tests/data/windows).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

import pytest
import structlog

from agent.catalog import load_catalog
from agent.collectors.room_pc import os_release_name
from agent.collectors.windows_pc import WINDOWS_COMMAND
from agent.discovery import ScanContext, SourceResult
from agent.discovery.ssh import SshHost, SshSource, describe_failure
from agent.model import SerialSource, Transport
from tests.peers_ssh import (
    LOOPBACK,
    UNPRIVILEGED_USER,
    Sshd,
    fingerprint_of,
    free_port,
    keygen,
    keyscan,
    known_hosts_line,
    require_sshd,
    start_sshd,
    world_dir,
    write_known_hosts,
)
from tests.sysfs import add_device

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LOGI = 0x046D
ROOM = "oslo-4-12"
WINDOWS_DATA = Path(__file__).parent / "data" / "windows"
_names = count()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    """A directory every user may read: sshd's files and the fake PCs' trees."""
    path = Path(tempfile.mkdtemp(prefix="roomsync-ssh-"))
    world_dir(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def sshd(world: Path) -> Iterator[Sshd]:
    require_sshd()
    daemon = start_sshd(world / "sshd")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def known_hosts(sshd: Sshd, world: Path) -> Path:
    """Made as an operator makes it: ssh-keyscan -H (hashed names), fingerprint checked."""
    path = write_known_hosts(world / "known_hosts", keyscan(sshd.port), keyscan(sshd.windows_port))
    assert "|1|" in path.read_text() and LOOPBACK not in path.read_text()
    assert fingerprint_of(path) == fingerprint_of(sshd.host_key.with_suffix(".pub"))
    return path


def ctx() -> ScanContext:
    return ScanContext(load_catalog(), NOW)


def run(source: SshSource) -> SourceResult:
    return asyncio.run(source.run(ctx()))


def linux_host(
    sshd: Sshd, root: Path, *, user: str = "root", key: Path | None = None, port: int | None = None
) -> SshHost:
    return SshHost(LOOPBACK, user, port or sshd.port, key or sshd.client_key, "linux", str(root), ROOM)


def windows_host(sshd: Sshd, room: str = ROOM) -> SshHost:
    return SshHost(LOOPBACK, "root", sshd.windows_port, sshd.client_key, "windows", room=room)


def new_pc(
    world: Path, *, name: str | None = None, dmi: dict[str, bytes] | None = None, rally_bar: bool = True
) -> Path:
    """A fake room PC's sysfs: DMI files and a Rally Bar with its functions, plus a device
    that is not Logitech's."""
    root = world_dir(world / (name or f"pc{next(_names)}") / "sys")
    if dmi is not None:
        dmi_dir = world_dir(root / "class" / "dmi" / "id")
        for attr, value in dmi.items():
            (dmi_dir / attr).write_bytes(value)
    if rally_bar:
        add_device(root, "2-1", LOGI, 0x08A5, symlink=True)
        add_device(
            root,
            "2-1.1",
            LOGI,
            0x089B,
            bcd=0x0020,
            serial="2313FD1N08Z2",
            product="Logi Rally Bar",
            manufacturer="Logitech",
            symlink=True,
        )
        add_device(root, "1-1", LOGI, 0x08A4, symlink=True)
        add_device(root, "1-1.2", LOGI, 0x089A, product="Logi Rally Bar", symlink=True)
        add_device(root, "1-1.3", LOGI, 0x0898, symlink=True)
        add_device(root, "1-4", 0x1234, 0x5678, product="Some Other Gadget", symlink=True)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


NUC_DMI = {
    "product_serial": b"G6JY00A1\n",
    "board_serial": b"BTTN2140012A\n",
    "sys_vendor": b"Intel(R) Client Systems\n",
    "product_name": b"NUC11TNHi5\n",
    "bios_version": b"TNTGL357.0064.2022.0906.1405\n",
    "bios_date": b"09/06/2022\n",
}


def by_product(result: SourceResult) -> dict:
    return {o.product: o for o in result.observations}


def sessions_since(sshd: Sshd, offset: int) -> list[str]:
    return [line for line in sshd.log_text()[offset:].splitlines() if "Starting session:" in line]


# --------------------------------------------------------------------------- Linux PCs


def test_linux_pc_and_its_rally_bar_are_read_over_sftp(sshd: Sshd, known_hosts: Path, world: Path) -> None:
    root = new_pc(world, dmi=NUC_DMI)
    log_offset = len(sshd.log_text())
    result = run(SshSource([linux_host(sshd, root)], known_hosts, connect_timeout=5))

    assert result.errors == []
    units = by_product(result)
    assert set(units) == {"Room PC", "Rally Bar"}  # the other vendor's gadget is not listed
    address = f"{LOOPBACK}:{sshd.port}"

    pc = units["Room PC"]
    assert (pc.source, pc.transport, pc.address, pc.room) == ("ssh", Transport.SSH, address, ROOM)
    assert (pc.serial, pc.serial_source, pc.serial_label_grade) == ("G6JY00A1", SerialSource.SSH_DMI, True)
    assert (pc.firmware, pc.firmware_source) == ("TNTGL357.0064.2022.0906.1405", "bios")
    assert (pc.vendor, pc.model) == ("Intel(R) Client Systems", "NUC11TNHi5")
    assert pc.attributes["hostname"] == socket.gethostname()
    assert pc.attributes["os"] == os_release_name(Path("/etc/os-release").read_bytes())
    assert 0 < pc.attributes["uptime_s"] <= float(Path("/proc/uptime").read_text().split()[0]) + 5
    assert pc.attributes["board_serial"] == "BTTN2140012A"
    assert pc.attributes["bios_date"] == "09/06/2022"
    assert pc.health == []

    bar = units["Rally Bar"]
    assert (bar.transport, bar.address, bar.room) == (Transport.SSH, f"{address}/usb/2-1.1", ROOM)
    assert (bar.serial, bar.serial_label_grade, bar.model) == ("2313FD1N08Z2", True, "VR0019")
    assert bar.attributes["attached_to"] == address
    assert bar.attributes["usb_port"] == "2-1.1"
    assert sorted(f["address"] for f in bar.attributes["functions"]) == [
        f"{address}/usb/1-1",
        f"{address}/usb/1-1.2",
        f"{address}/usb/1-1.3",
        f"{address}/usb/2-1",
    ]
    assert [i.code for i in bar.health] == ["firmware-not-read"]

    # The Linux path runs no remote command at all: one SFTP session, nothing else.
    sessions = sessions_since(sshd, log_offset)
    assert len(sessions) == 1 and "subsystem 'sftp'" in sessions[0], sessions


def test_placeholder_system_serial_falls_back_to_the_board_serial(
    sshd: Sshd, known_hosts: Path, world: Path
) -> None:
    root = new_pc(world, dmi={**NUC_DMI, "product_serial": b"To be filled by O.E.M.\n"}, rally_bar=False)
    result = run(SshSource([linux_host(sshd, root)], known_hosts, connect_timeout=5))
    assert result.errors == []
    [pc] = result.observations
    # The case label carries the system serial: a board serial is shown but not label-grade.
    assert (pc.serial, pc.serial_label_grade) == ("BTTN2140012A", False)
    assert pc.attributes["serial_from"] == "board_serial"
    assert [i.code for i in pc.health] == ["serial-from-board"]
    assert result.messages == [
        f"root@{LOOPBACK}:{sshd.port}: no USB bus is visible ({root}/bus/usb/devices is absent)"
    ]


def test_a_pc_with_no_dmi_is_listed_without_serial_and_one_error(
    sshd: Sshd, known_hosts: Path, world: Path
) -> None:
    root = new_pc(world, dmi=None)
    result = run(SshSource([linux_host(sshd, root)], known_hosts, connect_timeout=5))
    units = by_product(result)
    assert set(units) == {"Room PC", "Rally Bar"}
    pc = units["Room PC"]
    assert pc.serial is None and pc.firmware is None
    assert [i.code for i in pc.health] == ["serial-missing"]
    [error] = result.errors
    assert (error.source, error.target) == ("ssh", f"root@{LOOPBACK}:{sshd.port}")
    assert error.message == "no usable serial: product_serial is absent; board_serial is absent"


def test_root_only_serials_read_by_an_unprivileged_user(sshd: Sshd, known_hosts: Path, world: Path) -> None:
    root = new_pc(world, dmi=NUC_DMI, rally_bar=False)
    for attr in ("product_serial", "board_serial"):
        (root / "class" / "dmi" / "id" / attr).chmod(0o400)  # as the kernel ships them
    result = run(SshSource([linux_host(sshd, root, user=UNPRIVILEGED_USER)], known_hosts, connect_timeout=5))
    [pc] = result.observations
    assert pc.serial is None
    assert pc.model == "NUC11TNHi5"  # world-readable DMI files are still read
    [error] = result.errors
    assert error.target == f"{UNPRIVILEGED_USER}@{LOOPBACK}:{sshd.port}"
    assert "product_serial is unreadable (Permission denied)" in error.message
    assert "board_serial is unreadable (Permission denied)" in error.message
    assert "give the SSH user read access" in error.message


def test_config_strings_never_reach_a_shell(sshd: Sshd, known_hosts: Path, world: Path) -> None:
    """A sysfs_root full of shell syntax is just a path to SFTP; nothing is executed."""
    witness = world / "pwned"
    root = new_pc(world, name=f"pc;touch {witness};$(touch {witness})`touch {witness}`", dmi=NUC_DMI)
    log_offset = len(sshd.log_text())
    result = run(SshSource([linux_host(sshd, root)], known_hosts, connect_timeout=5))
    assert result.errors == []
    assert {o.product for o in result.observations} == {"Room PC", "Rally Bar"}
    assert not witness.exists()
    assert all("subsystem 'sftp'" in s for s in sessions_since(sshd, log_offset))


# --------------------------------------------------------------------------- host keys


def test_wrong_host_key_is_a_mismatch_error_and_nothing_is_read(
    sshd: Sshd, world: Path, tmp_path: Path
) -> None:
    impostor = keygen(tmp_path / "impostor").with_suffix(".pub")
    bad = write_known_hosts(tmp_path / "known_hosts", known_hosts_line(sshd.port, impostor))
    result = run(SshSource([linux_host(sshd, new_pc(world, dmi=NUC_DMI))], bad, connect_timeout=5))
    assert result.observations == []
    [error] = result.errors
    assert error.target == f"root@{LOOPBACK}:{sshd.port}"
    assert result.unreached == [f"{LOOPBACK}:{sshd.port}"]  # what it had there is not gone
    expected, got = fingerprint_of(impostor), fingerprint_of(sshd.host_key.with_suffix(".pub"))
    assert error.message == (
        f"host key for [{LOOPBACK}]:{sshd.port} does not match {bad} (possible man-in-the-middle); "
        f"expected ssh-ed25519 {expected} got ssh-ed25519 {got}"
    )


def test_host_missing_from_known_hosts_is_refused(sshd: Sshd, world: Path, tmp_path: Path) -> None:
    other = write_known_hosts(
        tmp_path / "known_hosts", known_hosts_line(sshd.windows_port, sshd.host_key.with_suffix(".pub"))
    )
    result = run(SshSource([linux_host(sshd, new_pc(world, dmi=NUC_DMI))], other, connect_timeout=5))
    assert result.observations == []
    [error] = result.errors
    got = fingerprint_of(sshd.host_key.with_suffix(".pub"))
    assert error.message.startswith(
        f"host key for [{LOOPBACK}]:{sshd.port} not in {other}; verify the "
        f"fingerprint (ssh-ed25519 {got}) and add it with ssh-keyscan"
    )
    assert other.read_text().count("\n") == 1  # nothing was added to the file


def test_no_known_hosts_configured_or_readable(sshd: Sshd, world: Path, tmp_path: Path) -> None:
    root = new_pc(world, dmi=NUC_DMI, rally_bar=False)
    [error] = run(SshSource([linux_host(sshd, root)], None)).errors
    assert "no known_hosts file is configured" in error.message
    [error] = run(SshSource([linux_host(sshd, root)], tmp_path / "absent")).errors
    assert error.message == f"known_hosts file {tmp_path / 'absent'}: cannot read (No such file or directory)"


# --------------------------------------------------------------------------- connections


def test_refused_port(sshd: Sshd, known_hosts: Path, world: Path) -> None:
    port = free_port()
    host = linux_host(sshd, new_pc(world, rally_bar=False), port=port)
    [error] = run(SshSource([host], known_hosts, connect_timeout=5)).errors
    assert error.target == f"root@{LOOPBACK}:{port}"
    assert error.message == f"connection refused on port {port} (is sshd running and listening there?)"


def test_a_server_that_never_speaks_times_out(sshd: Sshd, known_hosts: Path, world: Path) -> None:
    with socket.socket() as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen(1)  # the kernel completes the handshake; nobody ever writes a banner
        port = silent.getsockname()[1]
        host = linux_host(sshd, new_pc(world, rally_bar=False), port=port)
        started = time.monotonic()
        [error] = run(SshSource([host], known_hosts, connect_timeout=0.3)).errors
        assert time.monotonic() - started < 3
    assert error.message == (
        f"no SSH handshake within 0.3 s on port {port} (not an SSH server, or it is overloaded)"
    )


def test_wrong_key_is_an_authentication_failure_that_shows_no_key(
    sshd: Sshd, known_hosts: Path, world: Path, tmp_path: Path
) -> None:
    stranger = keygen(tmp_path / "stranger")
    host = linux_host(sshd, new_pc(world, rally_bar=False), key=stranger)
    with structlog.testing.capture_logs() as logs:
        result = run(SshSource([host], known_hosts, connect_timeout=5))
    assert result.observations == []
    [error] = result.errors
    assert error.message == (
        f"authentication as root with key file {stranger} failed (is its public key "
        "in root's authorized_keys on the PC?)"
    )
    secret = "".join(stranger.read_text().splitlines()[1:-1])
    assert secret[:40] not in repr(logs) and secret[:40] not in error.message
    assert any(e["event"] == "ssh.host.failed" and e["target"] == error.target for e in logs)


def test_one_failing_host_does_not_stop_the_others(
    sshd: Sshd, known_hosts: Path, world: Path, tmp_path: Path
) -> None:
    good = linux_host(sshd, new_pc(world, dmi=NUC_DMI))
    refused = linux_host(sshd, new_pc(world), port=free_port())
    stranger = linux_host(sshd, new_pc(world), key=keygen(tmp_path / "stranger"), user="root")
    result = run(SshSource([refused, good, stranger], known_hosts, connect_timeout=5, concurrency=2))
    assert [e.target for e in result.errors] == [refused.target, stranger.target]
    assert {o.product for o in result.observations} == {"Room PC", "Rally Bar"}
    assert all(o.address.startswith(good.address) for o in result.observations)


def test_hosts_are_read_concurrently_within_the_bound(sshd: Sshd, known_hosts: Path, world: Path) -> None:
    """Four servers that never speak, 0.3 s each: in parallel ~0.3 s, two at a time >= 0.6 s."""
    sockets = [socket.socket() for _ in range(4)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
            sock.listen(1)
        root = new_pc(world, rally_bar=False)
        hosts = [linux_host(sshd, root, port=s.getsockname()[1]) for s in sockets]
        timings = {}
        for concurrency in (4, 2):
            started = time.monotonic()
            result = run(SshSource(hosts, known_hosts, connect_timeout=0.3, concurrency=concurrency))
            timings[concurrency] = time.monotonic() - started
            assert [e.target for e in result.errors] == [h.target for h in hosts]
    finally:
        for sock in sockets:
            sock.close()
    assert timings[4] < 4 * 0.3
    assert timings[2] >= 2 * 0.3


def test_a_pc_that_takes_too_long_is_cut_off_at_the_host_deadline(
    sshd: Sshd, known_hosts: Path, world: Path
) -> None:
    host = linux_host(sshd, new_pc(world, dmi=NUC_DMI))
    result = run(SshSource([host], known_hosts, connect_timeout=5, host_deadline=0.001))
    assert result.observations == []
    [error] = result.errors
    assert error.message.startswith("reading the PC took longer than its deadline (at ")


# --------------------------------------------------------------------------- key files


@pytest.mark.parametrize("case", ["missing", "encrypted", "garbage", "directory", "none"])
def test_key_file_problems_are_named_without_contents(
    case: str, sshd: Sshd, known_hosts: Path, world: Path, tmp_path: Path
) -> None:
    key: Path | None = tmp_path / "key"
    if case == "encrypted":
        keygen(tmp_path / "key", passphrase="correct horse battery staple")
    elif case == "garbage":
        key.write_text(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END OPENSSH PRIVATE KEY-----\n"
        )
    elif case == "directory":
        key.mkdir()
    elif case == "none":
        key = None
    host = SshHost(LOOPBACK, "root", sshd.port, key, "linux", str(new_pc(world, rally_bar=False)))
    [error] = run(SshSource([host], known_hosts, connect_timeout=5)).errors
    expected = {
        "missing": f"key file {key} does not exist",
        "encrypted": f"key file {key} is encrypted; roomsync needs a key without a passphrase",
        "garbage": f"key file {key} is not a private key roomsync can use",
        "directory": f"key file {key} is a directory",
        "none": "no key file is configured for this host",
    }[case]
    assert error.message.startswith(expected)
    assert "TOPSECRET" not in error.message and "horse" not in error.message


# --------------------------------------------------------------------------- Windows PCs


def test_windows_pc_runs_exactly_the_constant_command(sshd: Sshd, known_hosts: Path) -> None:
    sshd.windows_reply((WINDOWS_DATA / "nuc-rally-bar.json").read_bytes())
    before = len(sshd.windows_commands())
    host = windows_host(sshd, room="oslo; shutdown /s $(whoami)")
    result = run(SshSource([host], known_hosts, connect_timeout=5))
    assert result.errors == []
    units = by_product(result)
    assert {"Room PC", "Rally Bar", "Brio"} <= set(units)
    pc = units["Room PC"]
    assert (pc.serial, pc.address, pc.room) == ("G6JY00A1", f"{LOOPBACK}:{sshd.windows_port}", host.room)
    assert pc.attributes["os_family"] == "windows"
    assert units["Rally Bar"].attributes["attached_to"] == pc.address
    assert sshd.windows_commands()[before:] == [WINDOWS_COMMAND]


@pytest.mark.parametrize(
    ("stdout", "stderr", "status", "message"),
    [
        (
            b"",
            b'#< CLIXML\r\n<Objs><S S="Error">Get-CimInstance : Access denied_x000D__x000A_</S></Objs>',
            1,
            "the inventory command failed (exit status 1): Get-CimInstance : Access denied",
        ),
        (
            b"",
            b"'powershell.exe' is not recognized as an internal or external command,\r\n",
            1,
            "the inventory command failed (exit status 1): 'powershell.exe' is not recognized as an internal "
            "or external command,",
        ),
        (
            b'{"roomsync_inventory": 1, "bios": [',
            b"",
            0,
            "the inventory output is not valid JSON (Expecting value at line 1 column 36)",
        ),
        (b"x" * (1024 * 1024 + 1), b"", 0, "the inventory command printed more than 1048576 bytes; not read"),
    ],
)
def test_windows_failures_are_one_error(
    sshd: Sshd, known_hosts: Path, stdout: bytes, stderr: bytes, status: int, message: str
) -> None:
    sshd.windows_reply(stdout, stderr=stderr, status=status)
    result = run(SshSource([windows_host(sshd)], known_hosts, connect_timeout=5))
    assert result.observations == []
    assert [(e.target, e.message) for e in result.errors] == [
        (f"root@{LOOPBACK}:{sshd.windows_port}", message)
    ]


# --------------------------------------------------------------------------- hosts, errors


def test_targets_from_the_command_line() -> None:
    host = SshHost.from_target("admin@room-pc-12", key_file="/etc/roomsync/id_ed25519", room=ROOM)
    assert (host.user, host.host, host.port, host.address, host.target) == (
        "admin",
        "room-pc-12",
        22,
        "room-pc-12",
        "admin@room-pc-12:22",
    )
    assert host.key_file == Path("/etc/roomsync/id_ed25519")
    v6 = SshHost.from_target("root@[fe80::1]:2222")
    assert (v6.host, v6.port, v6.address, v6.known_hosts_name) == (
        "fe80::1",
        2222,
        "[fe80::1]:2222",
        "[fe80::1]:2222",
    )
    for bad in ("room-pc-12", "@pc", "root@", "root@pc:0", "root@pc:70000", "root@pc:x", "ro ot@pc"):
        with pytest.raises(ValueError):
            SshHost.from_target(bad)


def test_from_config_takes_the_configuration_section() -> None:
    from agent.config import SshSourceConfig

    settings = SshSourceConfig.model_validate(
        {
            "enabled": True,
            "known_hosts": "/etc/roomsync/known_hosts",
            "connect_timeout": 3,
            "hosts": [
                {"host": "10.0.0.5", "user": "inventory", "key_file": "/etc/roomsync/id", "room": ROOM},
                {"host": "pc-2", "port": 2222, "user": "admin", "os": "windows"},
            ],
        }
    )
    source = SshSource.from_config(settings)
    assert source.known_hosts == Path("/etc/roomsync/known_hosts") and source.connect_timeout == 3
    assert source.hosts == [
        SshHost("10.0.0.5", "inventory", 22, Path("/etc/roomsync/id"), "linux", "/sys", ROOM),
        SshHost("pc-2", "admin", 2222, None, "windows", "/sys", None),
    ]


def test_no_hosts_is_a_message_not_an_error() -> None:
    result = run(SshSource([], None))
    assert (result.errors, result.messages) == ([], ["no SSH hosts are configured"])


def test_an_unusable_host_entry_is_an_error_of_its_own_not_a_crash() -> None:
    from agent.config import SshHostConfig

    entries = [
        SshHostConfig(host="room pc 12", user="admin"),
        SshHostConfig(host="pc-2", user="admin", sysfs_root="relative/sys"),
    ]
    source = SshSource(entries, None)
    assert source.hosts == []
    result = run(source)
    assert [(e.target, e.message) for e in result.errors] == [
        ("admin@room pc 12:22", "SSH host 'room pc 12' is empty or holds spaces or control characters"),
        ("admin@pc-2:22", "sysfs_root 'relative/sys' is not an absolute path"),
    ]
    assert result.messages == []


def test_name_resolution_and_unreachable_hosts_are_worded() -> None:
    from paramiko.ssh_exception import NoValidConnectionsError

    host = SshHost("pc.invalid", "root", 22, None)
    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert (
        describe_failure(gai, host, None, 5)
        == "cannot resolve host name pc.invalid (Name or service not known)"
    )
    unreachable = NoValidConnectionsError({("10.0.0.9", 22): OSError(113, "No route to host")})
    assert describe_failure(unreachable, host, None, 5) == "cannot connect to port 22 (host unreachable)"
    assert describe_failure(TimeoutError(), host, None, 2.5) == "connection to port 22 timed out after 2.5 s"
    assert describe_failure(EOFError(), host, None, 5) == "the PC closed the connection"
    assert (
        describe_failure(ConnectionResetError(104, "Connection reset by peer"), host, None, 5)
        == "connection to port 22 failed: Connection reset by peer"
    )


def test_sshd_is_stopped_by_pid_at_the_end(sshd: Sshd) -> None:
    """The fixture's daemon is the process it started (unshare and sh exec into sshd)."""
    assert sshd.process.poll() is None
    assert int((sshd.workdir / "sshd.pid").read_text()) == sshd.process.pid
    assert os.readlink(f"/proc/{sshd.process.pid}/exe") == "/usr/sbin/sshd"
