"""Real SNMP agents on loopback for the tests and benchmarks: net-snmp ``snmpd`` and
``snmpsim`` (many simulated devices, one engine per address), started on ports chosen here
and stopped by PID (../shared/test-peers.md, "SNMP").

Everything listens on 127.0.0.0/8 only. Each helper is a context manager::

    with Snmpd(tmp_path, sys_descr="…", entity={11: {1: "SERIAL"}}) as agent:
        ... agent.port ...
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import stop_process
from tests.shared import BOOTSTRAP, require

SNMPD = "/usr/sbin/snmpd"
SNMPGET = shutil.which("snmpget") or "/usr/bin/snmpget"
ENTITY_COLUMN = "1.3.6.1.2.1.47.1.1.1.1"
SYS_DESCR, SYS_OBJECT_ID, SYS_NAME = "1.3.6.1.2.1.1.1.0", "1.3.6.1.2.1.1.2.0", "1.3.6.1.2.1.1.5.0"


def need(path: str, package: str) -> None:
    """tests.shared.missing (a failure under CI) unless ``path`` is installed."""
    require(
        os.path.exists(path) or shutil.which(path),
        f"{path} is not installed (Debian package {package}; {BOOTSTRAP})",
    )


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def oid_key(oid: str) -> tuple[int, ...]:
    return tuple(int(p) for p in oid.strip(".").split("."))


def answers(host: str, port: int, *, community: str = "public", timeout: float = 0.3) -> bool:
    """True when an SNMPv2c GET of sysName gets any answer (net-snmp's own client)."""
    proc = subprocess.run(
        [
            SNMPGET,
            "-v2c",
            "-c",
            community,
            "-t",
            str(timeout),
            "-r",
            "0",
            "-On",
            f"udp:{host}:{port}",
            SYS_NAME,
        ],
        capture_output=True,
        text=True,
        env=_mibless_env(),
        check=False,
    )
    return proc.returncode == 0


def _mibless_env() -> dict[str, str]:
    # Debian ships no IETF MIBs; numeric OIDs only, and no warnings about missing ones.
    env = dict(os.environ)
    env["MIBS"] = ""
    env["MIBDIRS"] = "/nonexistent"
    return env


def _wait_until(
    check: object, what: str, proc: subprocess.Popen[bytes], log: Path, deadline: float = 15.0
) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer within {deadline:.0f} s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


@dataclass
class Snmpd:
    """net-snmp ``snmpd`` on 127.0.0.1 with a v2c community, optionally a v3 authPriv user,
    a system group and ENTITY-MIB rows (``entity[column][index] = value``)."""

    workdir: Path
    community: str = "public"
    sys_descr: str = "roomsync test agent"
    sys_object_id: str = ".1.3.6.1.4.1.8072.3.2.10"
    sys_name: str = "snmpd-test"
    entity: Mapping[int, Mapping[int, str]] = field(default_factory=dict)
    v3_user: str | None = None
    v3_auth: str = "authpass-123"
    v3_priv: str = "privpass-456"
    v3_auth_proto: str = "SHA"
    extra_config: Iterable[str] = ()
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Snmpd:
        need(SNMPD, "snmpd")
        need(SNMPGET, "snmp")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_udp_port(self.host)
        conf = self.workdir / "snmpd.conf"
        lines = [
            f"agentAddress udp:{self.host}:{self.port}",
            f"rocommunity {self.community} 127.0.0.1",
            f"sysDescr {self.sys_descr}",
            f"sysObjectID {self.sys_object_id}",
            f"sysName {self.sys_name}",
        ]
        if self.v3_user:
            lines += [
                f'createUser {self.v3_user} {self.v3_auth_proto} "{self.v3_auth}" AES "{self.v3_priv}"',
                f"rouser {self.v3_user} priv",
            ]
        for column in sorted(self.entity):
            for index, value in sorted(self.entity[column].items()):
                if column == 5:  # entPhysicalClass is an INTEGER
                    lines.append(f"override .{ENTITY_COLUMN}.{column}.{index} integer {int(value)}")
                    continue
                escaped = value.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'override .{ENTITY_COLUMN}.{column}.{index} octet_str "{escaped}"')
        lines += list(self.extra_config)
        conf.write_text("\n".join(lines) + "\n")
        persist = self.workdir / "persist"
        persist.mkdir(exist_ok=True)
        mibdir = self.workdir / "mibs"
        mibdir.mkdir(exist_ok=True)
        env = dict(os.environ, MIBS="", MIBDIRS=str(mibdir))
        self.log = self.workdir / "snmpd.log"
        self.proc = subprocess.Popen(
            [
                SNMPD,
                "-f",
                "-Lf",
                str(self.log),
                "-C",
                "-c",
                str(conf),
                "-p",
                str(self.workdir / "snmpd.pid"),
                f"--persistentDir={persist}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_until(
                lambda: answers(self.host, self.port, community=self.community), "snmpd", self.proc, self.log
            )
        except BaseException:
            stop_process(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)


@dataclass
class SimDevice:
    """One simulated SNMP agent: its address and its ``OID|tag|value`` records."""

    address: str
    records: dict[str, tuple[str, str]]

    @classmethod
    def make(
        cls,
        address: str,
        *,
        sys_descr: str,
        sys_object_id: str = "1.3.6.1.4.1.8072.3.2.10",
        sys_name: str = "",
        entity: Mapping[int, Mapping[int, str]] | None = None,
        raw: Mapping[str, tuple[str, str]] | None = None,
    ) -> SimDevice:
        records: dict[str, tuple[str, str]] = {
            SYS_DESCR: ("4", sys_descr),
            SYS_OBJECT_ID: ("6", sys_object_id),
            "1.3.6.1.2.1.1.3.0": ("67", "123456"),
            SYS_NAME: ("4", sys_name or address),
        }
        for column, rows in (entity or {}).items():
            for index, value in rows.items():
                records[f"{ENTITY_COLUMN}.{column}.{index}"] = ("2" if column == 5 else "4", value)
        records.update(raw or {})
        return cls(address, records)

    def snmprec(self) -> str:
        lines = []
        for oid in sorted(self.records, key=oid_key):
            tag, value = self.records[oid]
            lines.append(f"{oid}|{tag}|{value}")
        return "\n".join(lines) + "\n"


@dataclass
class SnmpSim:
    """``snmpsim`` serving several simulated devices, one SNMP engine per address
    (the layout test-peers.md found working with pysnmp 7), all on one UDP port."""

    workdir: Path
    devices: list[SimDevice]
    #: 0: a port free on the first device's address, so parallel runs do not collide.
    port: int = 0
    community: str = "public"
    v3_user: str | None = None
    v3_auth: str = "authpass-123"
    v3_priv: str = "privpass-456"
    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SnmpSim:
        exe = Path(sys.executable).parent / "snmpsim-command-responder"
        require(
            exe.exists(),
            f"snmpsim is not installed in {Path(sys.executable).parent.parent} "
            f"(it comes with the test extra: {BOOTSTRAP}, or pip install -e '.[test]')",
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_udp_port(self.devices[0].address)
        args: list[str] = []
        for n, dev in enumerate(self.devices):
            data = self.workdir / f"data{n}"
            data.mkdir(exist_ok=True)
            (data / f"{self.community}.snmprec").write_text(dev.snmprec())
            args += [
                "--v3-engine-id=auto",
                f"--data-dir={data}",
                f"--agent-udpv4-endpoint={dev.address}:{self.port}",
            ]
            if self.v3_user:
                args += [
                    f"--v3-user={self.v3_user}",
                    f"--v3-auth-key={self.v3_auth}",
                    "--v3-auth-proto=SHA",
                    f"--v3-priv-key={self.v3_priv}",
                    "--v3-priv-proto=AES",
                ]
        argfile = self.workdir / "args"
        argfile.write_text("\n".join(args) + "\n")
        self.log = self.workdir / "snmpsim.log"
        env = dict(os.environ, SNMPSIM_ALLOW_ROOT="true")
        self.proc = subprocess.Popen(
            [
                str(exe),
                f"--args-from-file={argfile}",
                f"--cache-dir={self.workdir / 'cache'}",
                f"--logging-method=file:{self.log}",
                "--log-level=error",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for dev in (self.devices[0], self.devices[-1]):
                _wait_until(
                    lambda d=dev: answers(d.address, self.port, community=self.community),  # type: ignore[misc]
                    "snmpsim",
                    self.proc,
                    self.log,
                    deadline=60.0,
                )
        except BaseException:
            stop_process(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)


def entity_rows(
    serial: str,
    model: str,
    manufacturer: str = "Logitech",
    *,
    name: str = "chassis",
    firmware: str = "",
    software: str = "",
    hardware: str = "",
    descr: str = "",
) -> dict[int, dict[int, str]]:
    """ENTITY-MIB columns for one chassis entity at index 1."""
    rows: dict[int, dict[int, str]] = {
        5: {1: "3"},
        7: {1: name},
        11: {1: serial},
        12: {1: manufacturer},
        13: {1: model},
    }
    for column, value in ((2, descr), (8, hardware), (9, firmware), (10, software)):
        if value:
            rows[column] = {1: value}
    return rows
