"""mDNS peers for the tests: publishers in another process, on loopback only.

:class:`Publisher` starts this file as a script with the venv's Python. The child process

* registers :class:`Service` entries with python-zeroconf, pinned to ``127.0.0.1`` and IPv4
  (``AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)``), with the TXT
  properties given (bytes, so binary and oversized values are possible);
* multicasts hand-built mDNS responses (:class:`RawAnnouncement`) every 0.2 s, for what
  zeroconf will not publish: a PTR record with no SRV/TXT behind it (a service that is gone
  by the time it is resolved) and names that are not valid UTF-8. These leave from an
  ephemeral port on ``127.0.0.1`` (``IP_MULTICAST_IF``), never from a socket bound to 5353,
  which could take unicast answers meant for the scanner; zeroconf accepts such responses;
* prints ``READY`` once everything is registered and stays up until it is killed
  (SIGTERM: zeroconf sends its goodbyes). A ``goodbye`` line on its stdin makes it send
  goodbyes (TTL 0) for its raw PTR records and stop announcing them.

:class:`AvahiPublisher` runs avahi-daemon (0.8, Debian package ``avahi-daemon``) as a publisher
nobody here wrote, the way test-peers.md describes: in a private mount namespace (``unshare -m``)
so that its ``/run`` and ``/etc/avahi/services`` are directories of the test, with
``allow-interfaces=lo``, ``use-ipv6=no``, ``enable-dbus=no`` and static ``.service`` files.
:func:`avahi_unavailable` says why it cannot run here (not installed, not root).

Names are unique per test session (:data:`RUN_TOKEN`), so two test runs on one machine do not
collide, and assertions filter on the token: other peers on loopback may answer too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

MDNS_GROUP = ("224.0.0.251", 5353)
LOOPBACK = "127.0.0.1"
ANNOUNCE_INTERVAL = 0.2
#: Upper-case letters and digits, like the tail of a CollabOS host name (``RallyBar-1L5V32``).
RUN_TOKEN = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(6))

_TYPE_A, _TYPE_PTR, _TYPE_TXT, _TYPE_SRV = 1, 12, 16, 33
_CLASS_IN, _CACHE_FLUSH = 1, 0x8000


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


@dataclass(frozen=True)
class Service:
    """One service a zeroconf publisher registers."""

    service_type: str  # "_https._tcp.local."
    instance: str  # the instance label, any script
    server: str  # "RallyBar-1L5V32.local."
    port: int
    properties: Mapping[bytes | str, bytes | str | None] = field(default_factory=dict)
    addresses: tuple[str, ...] = (LOOPBACK,)

    @property
    def name(self) -> str:
        return f"{self.instance}.{self.service_type}"

    def to_spec(self) -> dict[str, Any]:
        return {
            "type": self.service_type,
            "name": self.name,
            "server": self.server,
            "port": self.port,
            "addresses": list(self.addresses),
            "properties": [
                [_as_bytes(k).hex(), None if v is None else _as_bytes(v).hex()]
                for k, v in self.properties.items()
            ],
        }


# --------------------------------------------------------------------------- raw packets


def encode_name(labels: Iterable[bytes | str]) -> bytes:
    """DNS wire form of a name given as labels (bytes may be any octets, even bad UTF-8)."""
    out = bytearray()
    for label in labels:
        raw = _as_bytes(label)
        if not 0 < len(raw) < 64:
            raise ValueError(f"label {raw!r} must be 1..63 bytes")
        out += bytes([len(raw)]) + raw
    return bytes(out + b"\x00")


def split_name(name: str) -> list[bytes]:
    return [label.encode("utf-8") for label in name.rstrip(".").split(".")]


def record(owner: bytes, rtype: int, rdata: bytes, ttl: int = 120, *, unique: bool = False) -> bytes:
    rclass = _CLASS_IN | (_CACHE_FLUSH if unique else 0)
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def response(records: Sequence[bytes]) -> bytes:
    """An mDNS response (id 0, QR + AA) carrying ``records`` as answers."""
    return struct.pack("!HHHHHH", 0, 0x8400, 0, len(records), 0, 0) + b"".join(records)


@dataclass(frozen=True)
class RawAnnouncement:
    """A hand-built response multicast over and over; ``goodbye`` is sent once on request."""

    packet: bytes
    goodbye: bytes | None = None

    def to_spec(self) -> dict[str, Any]:
        return {"packet": self.packet.hex(), "goodbye": self.goodbye.hex() if self.goodbye else None}


def phantom(service_type: str, instance: str) -> RawAnnouncement:
    """A PTR record pointing at an instance that has no SRV, TXT or address behind it:
    what a browser sees of a service that left the network before it was resolved."""
    owner = encode_name(split_name(service_type))
    target = encode_name([instance.encode("utf-8"), *split_name(service_type)])
    return RawAnnouncement(
        response([record(owner, _TYPE_PTR, target)]), response([record(owner, _TYPE_PTR, target, ttl=0)])
    )


def full_service(
    service_type: str, instance: bytes, host: str, address: str, port: int, txt: Sequence[bytes]
) -> RawAnnouncement:
    """PTR + SRV + TXT + A in one response, with the instance label given as raw bytes."""
    type_labels = split_name(service_type)
    owner = encode_name(type_labels)
    instance_name = encode_name([instance, *type_labels])
    host_name = encode_name(split_name(host))
    txt_rdata = b"".join(bytes([len(entry)]) + entry for entry in txt) or b"\x00"
    records = [
        record(owner, _TYPE_PTR, instance_name),
        record(instance_name, _TYPE_SRV, struct.pack("!HHH", 0, 0, port) + host_name, unique=True),
        record(instance_name, _TYPE_TXT, txt_rdata, unique=True),
        record(host_name, _TYPE_A, socket.inet_aton(address), unique=True),
    ]
    return RawAnnouncement(response(records))


# --------------------------------------------------------------------------- parent side


class PublisherError(RuntimeError):
    pass


class Publisher:
    """A publisher process; use as a context manager (or :meth:`start` / :meth:`stop`)."""

    def __init__(
        self,
        services: Sequence[Service] = (),
        raw: Sequence[RawAnnouncement] = (),
        *,
        workdir: Path,
        ready_timeout: float = 20.0,
    ) -> None:
        self.spec = {"services": [s.to_spec() for s in services], "raw": [r.to_spec() for r in raw]}
        self.workdir = workdir
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[str] | None = None
        #: Seconds from starting the process to READY (zeroconf probes each name first).
        self.startup_seconds = 0.0

    def start(self) -> Publisher:
        spec_file = self.workdir / f"mdns-publisher-{os.getpid()}-{id(self)}.json"
        spec_file.write_text(json.dumps(self.spec))
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(spec_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = _read_line(self.proc, self.ready_timeout)
        if line.strip() != "READY":
            stderr = self._kill()
            raise PublisherError(f"mDNS publisher did not get ready (got {line!r}): {stderr}")
        self.startup_seconds = time.perf_counter() - started
        return self

    def goodbye(self) -> None:
        """Make the publisher send goodbyes for its raw PTR records (a service leaving)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("goodbye\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc is not None:
            self._kill()
            self.proc = None

    def _kill(self) -> str:
        from tests.processes import stop_process  # here: this file also runs as the publisher script

        assert self.proc is not None
        stop_process(self.proc)
        stderr = self.proc.stderr.read() if self.proc.stderr else ""
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return stderr

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's first stdout line, or ``""`` if it does not come within ``timeout``."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline()


# --------------------------------------------------------------------------- avahi


def avahi_unavailable() -> str | None:
    """Why avahi-daemon cannot be a publisher on this machine, or ``None`` when it can."""
    if _avahi_daemon() is None:
        return "avahi-daemon is not installed (Debian package avahi-daemon, installed by scripts/bootstrap)"
    if shutil.which("unshare") is None:
        return "unshare is not installed (Debian package util-linux)"
    if os.geteuid() != 0:
        return "avahi-daemon runs in a private mount namespace here, which needs root (CI runs as root)"
    return None


def _avahi_daemon() -> str | None:
    return shutil.which("avahi-daemon") or shutil.which("avahi-daemon", path="/usr/sbin:/sbin")


@dataclass(frozen=True)
class AvahiService:
    """One service of an avahi ``.service`` file; TXT values given as bytes go out as
    ``value-format="binary-hex"``."""

    instance: str
    service_type: str  # "_https._tcp" (avahi's form, without .local.)
    port: int
    txt: Mapping[str, str | bytes] = field(default_factory=dict)

    def to_xml(self) -> str:
        records = []
        for key, value in self.txt.items():
            if isinstance(value, bytes):
                records.append(
                    f'    <txt-record value-format="binary-hex">{escape(key)}={value.hex()}</txt-record>'
                )
            else:
                records.append(f"    <txt-record>{escape(key)}={escape(value)}</txt-record>")
        return "\n".join(
            [
                "<?xml version=\"1.0\" standalone='no'?>",
                '<!DOCTYPE service-group SYSTEM "avahi-service.dtd">',
                "<service-group>",
                f"  <name>{escape(self.instance)}</name>",
                '  <service protocol="ipv4">',
                f"    <type>{escape(self.service_type)}</type>",
                f"    <port>{self.port}</port>",
                *records,
                "  </service>",
                "</service-group>",
                "",
            ]
        )


class AvahiPublisher:
    """avahi-daemon publishing ``services`` for host ``host_name`` on ``lo`` only."""

    def __init__(
        self, host_name: str, services: Sequence[AvahiService], *, workdir: Path, ready_timeout: float = 20.0
    ) -> None:
        self.host_name = host_name
        self.services = list(services)
        self.workdir = workdir
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "avahi.log"
        self.startup_seconds = 0.0

    def start(self) -> AvahiPublisher:
        reason = avahi_unavailable()
        if reason:
            raise PublisherError(reason)
        conf, run_dir, services_dir = self._write_files()
        script = (
            f"mount --bind {shlex.quote(str(run_dir))} /run && "
            f"mount --bind {shlex.quote(str(services_dir))} /etc/avahi/services && "
            f"exec {shlex.quote(str(_avahi_daemon()))} -f {shlex.quote(str(conf))} "
            f"--no-drop-root --no-chroot --no-rlimits"
        )
        started = time.perf_counter()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_established()
        self.startup_seconds = time.perf_counter() - started
        return self

    def _write_files(self) -> tuple[Path, Path, Path]:
        run_dir, services_dir = self.workdir / "run", self.workdir / "services"
        run_dir.mkdir(exist_ok=True)
        services_dir.mkdir(exist_ok=True)
        for index, service in enumerate(self.services):
            (services_dir / f"service-{index}.service").write_text(service.to_xml(), encoding="utf-8")
        conf = self.workdir / "avahi-daemon.conf"
        conf.write_text(
            "\n".join(
                [
                    "[server]",
                    f"host-name={self.host_name}",
                    "domain-name=local",
                    "use-ipv4=yes",
                    "use-ipv6=no",
                    "allow-interfaces=lo",
                    "enable-dbus=no",
                    "disallow-other-stacks=no",
                    "[wide-area]",
                    "enable-wide-area=no",
                    "[publish]",
                    "publish-addresses=yes",
                    "publish-hinfo=no",
                    "publish-workstation=no",
                    "publish-domain=no",
                    "publish-aaaa-on-ipv4=no",
                    "",
                ]
            )
        )
        return conf, run_dir, services_dir

    def _wait_until_established(self) -> None:
        """Until the log says every service is established (avahi probes names first)."""
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if text.count("successfully established") >= len(self.services):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        log = self.log.read_text(errors="replace")
        raise PublisherError(f"avahi-daemon did not publish its services: {log}")

    def stop(self) -> None:
        from tests.processes import stop_process

        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> AvahiPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- child side


async def _serve(spec: dict[str, Any]) -> None:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    aiozc = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    infos = [
        AsyncServiceInfo(
            s["type"],
            s["name"],
            port=s["port"],
            server=s["server"],
            parsed_addresses=s["addresses"],
            properties={
                bytes.fromhex(k): None if v is None else bytes.fromhex(v) for k, v in s["properties"]
            },
        )
        for s in spec["services"]
    ]
    # Register concurrently: each name is probed for ~1.5 s before it is announced.
    announced = await asyncio.gather(*(aiozc.async_register_service(i) for i in infos))
    await asyncio.gather(*announced)
    raw = [
        (bytes.fromhex(r["packet"]), bytes.fromhex(r["goodbye"]) if r["goodbye"] else None)
        for r in spec["raw"]
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    sock = _multicast_sender()
    goodbye = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), _on_stdin, goodbye)
    print("READY", flush=True)
    try:
        await _announce(sock, raw, stop, goodbye)
    finally:
        sock.close()
        await aiozc.async_close()


def _on_stdin(goodbye: asyncio.Event) -> None:
    line = sys.stdin.readline()
    if line.strip() == "goodbye":
        goodbye.set()
    elif not line:
        asyncio.get_running_loop().remove_reader(sys.stdin.fileno())


async def _announce(
    sock: socket.socket, raw: list[tuple[bytes, bytes | None]], stop: asyncio.Event, goodbye: asyncio.Event
) -> None:
    said_goodbye = False
    while not stop.is_set():
        if goodbye.is_set() and not said_goodbye:
            for _, bye in raw:
                if bye is not None:
                    sock.sendto(bye, MDNS_GROUP)
            raw = [(packet, bye) for packet, bye in raw if bye is None]
            said_goodbye = True
        for packet, _ in raw:
            sock.sendto(packet, MDNS_GROUP)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ANNOUNCE_INTERVAL)


def _multicast_sender() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    sock.bind((LOOPBACK, 0))
    return sock


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    asyncio.run(_serve(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
