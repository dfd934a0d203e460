"""SSH source: room PCs reached over SSH, with the Logitech units plugged into them.

For every configured host the source logs in with the host's key file (never a password,
never an agent or ``~/.ssh``), verifies the host key against the configured ``known_hosts``
(paramiko's :class:`~paramiko.RejectPolicy`: an unknown or changed key ends the connection
with an error, never a silent accept) and reads, read-only:

* **Linux**: files only, over SFTP (:class:`SftpFiles`); no remote command is run at all.
  What is read and how it becomes observations: :mod:`agent.collectors.room_pc`.
* **Windows** (OpenSSH): one constant PowerShell command, :data:`WINDOWS_COMMAND`
  (:mod:`agent.collectors.windows_pc`).

No string from the configuration or from a device is ever interpolated into a command line.
paramiko is synchronous: each host's work runs in a thread (:func:`asyncio.to_thread`), at
most ``concurrency`` at once, each bounded by socket timeouts and an overall deadline. A host
that fails gives one :class:`~agent.model.ScanError` (source ``ssh``, target
``user@host:port``) and the scan goes on with the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paramiko
from paramiko.hostkeys import InvalidHostKey
from paramiko.ssh_exception import NoValidConnectionsError

from agent.collectors.room_pc import PcFacts, PcPlace, observe_pc, read_linux_pc
from agent.collectors.ssh_host import check_ssh_request
from agent.collectors.windows_pc import (
    MAX_OUTPUT_BYTES,
    WINDOWS_COMMAND,
    WindowsOutputError,
    parse_windows_inventory,
    summarize_stderr,
)
from agent.discovery import ScanContext, SourceResult
from agent.log import get_logger
from agent.model import ScanError

log = get_logger("agent.discovery.ssh")

SOURCE_NAME = "ssh"
DEFAULT_PORT = 22
DEFAULT_CONCURRENCY = 8
#: Whole-host budget (connect, log in, read everything), on top of per-operation timeouts.
DEFAULT_HOST_DEADLINE = 120.0
MAX_STDERR_BYTES = 64 * 1024
_CHUNK = 32 * 1024
_TARGET = re.compile(
    r"^(?P<user>[^@\s]+)@(?:\[(?P<v6>[0-9A-Fa-f:.%a-z]+)\]|(?P<host>[^:@\s\[\]/]+))(?::(?P<port>\d{1,5}))?$"
)
_NAME = re.compile(r"^[^\s\x00-\x1f\x7f]{1,255}$")


class SshHostError(Exception):
    """A failure of one host, already worded for the operator (one line)."""


class UnknownHostKeyError(paramiko.SSHException):
    """The host's key is not in known_hosts (raised by :class:`RejectUnknownHostKey`)."""

    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"host key for {hostname} is not in known_hosts")
        self.hostname = hostname
        self.key = key


class RejectUnknownHostKey(paramiko.RejectPolicy):
    """paramiko's RejectPolicy (never AutoAddPolicy): an unknown host key ends the
    connection. The error carries the offered key so that the operator can compare its
    fingerprint with the one the PC's administrator reads on the PC."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKeyError(hostname, key)


class RemoteTimeout(Exception):
    """The PC stopped answering while it was being read (deliberately not an OSError, so that
    it ends the reading of the PC instead of being taken for one unreadable file)."""


# --------------------------------------------------------------------------- hosts


@dataclass(frozen=True, slots=True)
class SshHost:
    """One room PC to read. Accepts what ``[[sources.ssh.hosts]]`` holds, and is what the
    CLI's ``--ssh USER@HOST[:PORT]`` becomes (:meth:`from_target`)."""

    host: str
    user: str
    port: int = DEFAULT_PORT
    key_file: Path | None = None
    os: Literal["linux", "windows"] = "linux"
    sysfs_root: str = "/sys"
    room: str | None = None

    def __post_init__(self) -> None:
        for what, value in (("host", self.host), ("user", self.user)):
            if not _NAME.match(value or ""):
                raise ValueError(f"SSH {what} {value!r} is empty or holds spaces or control characters")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"SSH port {self.port} is not between 1 and 65535")
        if self.os not in ("linux", "windows"):
            raise ValueError(f"SSH host os {self.os!r} is not linux or windows")
        if not self.sysfs_root.startswith("/") or "\x00" in self.sysfs_root:
            raise ValueError(f"sysfs_root {self.sysfs_root!r} is not an absolute path")

    @classmethod
    def from_target(
        cls,
        target: str,
        *,
        key_file: str | Path | None = None,
        os: Literal["linux", "windows"] = "linux",
        sysfs_root: str = "/sys",
        room: str | None = None,
    ) -> SshHost:
        """``USER@HOST``, ``USER@HOST:PORT`` or ``USER@[IPv6]:PORT``. Raises :class:`ValueError`."""
        m = _TARGET.match(target.strip())
        if not m:
            raise ValueError(f"{target!r}: expected USER@HOST[:PORT] (IPv6 as USER@[ADDRESS]:PORT)")
        return cls(
            host=m.group("v6") or m.group("host"),
            user=m.group("user"),
            port=int(m.group("port") or DEFAULT_PORT),
            key_file=Path(key_file) if key_file is not None else None,
            os=os,
            sysfs_root=sysfs_root,
            room=room,
        )

    @classmethod
    def of(cls, value: Any) -> SshHost:
        """An :class:`SshHost` from itself or from anything with the same attributes
        (``agent.config.SshHostConfig``)."""
        if isinstance(value, SshHost):
            return value
        key_file = getattr(value, "key_file", None)
        return cls(
            host=value.host,
            user=value.user,
            port=getattr(value, "port", DEFAULT_PORT),
            key_file=Path(key_file) if key_file is not None else None,
            os=getattr(value, "os", "linux"),
            sysfs_root=str(getattr(value, "sysfs_root", "/sys")),
            room=getattr(value, "room", None),
        )

    @property
    def _shown_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def target(self) -> str:
        """``user@host:port``: how errors name this host."""
        return f"{self.user}@{self._shown_host}:{self.port}"

    @property
    def address(self) -> str:
        """The PC's address in the inventory: the host, with the port when it is not 22."""
        return self._shown_host if self.port == DEFAULT_PORT else f"{self._shown_host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts (and ``ssh-keyscan``) name this host."""
        return self.host if self.port == DEFAULT_PORT else f"[{self.host}]:{self.port}"


# --------------------------------------------------------------------------- reading


class SftpFiles:
    """:class:`agent.collectors.room_pc.RemoteFiles` over one SFTP session, within a deadline."""

    def __init__(self, sftp: paramiko.SFTPClient, deadline: float) -> None:
        self._sftp = sftp
        self._deadline = deadline

    def read(self, path: str, limit: int) -> bytes | None:
        self._check(path)
        check_ssh_request(("read", path))
        try:
            with self._sftp.open(path, "rb") as fh:
                return bytes(fh.read(limit))
        except FileNotFoundError:
            return None
        except TimeoutError as exc:
            raise RemoteTimeout(f"the PC stopped answering while {path} was read") from exc

    def listdir(self, path: str) -> list[str]:
        self._check(path)
        check_ssh_request(("list", path))
        try:
            return [str(name) for name in self._sftp.listdir(path)]
        except TimeoutError as exc:
            raise RemoteTimeout(f"the PC stopped answering while {path} was listed") from exc

    def _check(self, path: str) -> None:
        if time.monotonic() > self._deadline:
            raise RemoteTimeout(f"reading the PC took longer than its deadline (at {path})")


def run_command(
    client: paramiko.SSHClient,
    command: str,
    *,
    timeout: float,
    deadline: float,
    limit: int = MAX_OUTPUT_BYTES,
) -> bytes:
    """Run one fixed command and return its standard output (at most ``limit`` bytes).

    Raises :class:`SshHostError` when it exits non-zero or prints too much, and
    :class:`RemoteTimeout` when it does not finish in time.
    """
    check_ssh_request(("exec", command))
    stdin, stdout, _stderr = client.exec_command(command, timeout=timeout)
    stdin.close()
    channel = stdout.channel
    out = _read_stream(channel.recv, limit, deadline, strict=True)
    err = _read_stream(channel.recv_stderr, MAX_STDERR_BYTES, deadline, strict=False)
    if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
        raise RemoteTimeout("the inventory command did not finish before the deadline")
    if channel.exit_status != 0:
        raise SshHostError(
            f"the inventory command failed (exit status {channel.exit_status}): {summarize_stderr(err)}"
        )
    return out


def _read_stream(recv: Callable[[int], bytes], limit: int, deadline: float, *, strict: bool) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        if time.monotonic() > deadline:
            raise RemoteTimeout("the inventory command did not finish before the deadline")
        try:
            data = recv(_CHUNK)
        except TimeoutError as exc:
            raise RemoteTimeout("the inventory command printed nothing for too long") from exc
        if not data:
            return b"".join(chunks)
        total += len(data)
        if total > limit:
            if strict:
                raise SshHostError(f"the inventory command printed more than {limit} bytes; not read")
            return b"".join(chunks)
        chunks.append(data)


# --------------------------------------------------------------------------- source


class SshSource:
    """Room PCs over SSH. ``hosts`` are :class:`SshHost` or ``SshHostConfig`` items."""

    name = SOURCE_NAME

    def __init__(
        self,
        hosts: Iterable[Any],
        known_hosts: str | os.PathLike[str] | None,
        connect_timeout: float = 10.0,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        host_deadline: float = DEFAULT_HOST_DEADLINE,
    ) -> None:
        if connect_timeout <= 0 or concurrency < 1 or host_deadline <= 0:
            raise ValueError("connect_timeout and host_deadline must be > 0, concurrency >= 1")
        self.hosts: list[SshHost] = []
        #: Hosts that cannot be used as given, as ``(target, message)``: reported on every run.
        self.invalid: list[tuple[str, str]] = []
        for item in hosts:
            try:
                self.hosts.append(SshHost.of(item))
            except (ValueError, TypeError, AttributeError) as exc:
                self.invalid.append((_rough_target(item), str(exc)))
        self.known_hosts = Path(known_hosts) if known_hosts is not None else None
        self.connect_timeout = connect_timeout
        self.concurrency = concurrency
        self.host_deadline = host_deadline

    @classmethod
    def from_config(cls, settings: Any) -> SshSource:
        """From ``[sources.ssh]`` (``agent.config.SshSourceConfig``)."""
        return cls(settings.hosts, settings.known_hosts, settings.connect_timeout)

    async def run(self, ctx: ScanContext) -> SourceResult:
        result = SourceResult(errors=[ScanError(self.name, t, m) for t, m in self.invalid])
        if not self.hosts:
            if not self.invalid:
                result.messages.append("no SSH hosts are configured")
            return result
        limit = asyncio.Semaphore(self.concurrency)

        async def one(host: SshHost) -> SourceResult:
            async with limit:
                return await asyncio.to_thread(self.collect, host, ctx)

        for outcome in await asyncio.gather(*(one(h) for h in self.hosts)):
            result.observations.extend(outcome.observations)
            result.errors.extend(outcome.errors)
            result.messages.extend(outcome.messages)
            result.unreached.extend(outcome.unreached)
        return result

    def collect(self, host: SshHost, ctx: ScanContext) -> SourceResult:
        """Read one host (blocking). Every failure becomes one error naming the host."""
        started = time.monotonic()
        result = SourceResult()
        try:
            report = observe_pc(
                self.read_host(host, started + self.host_deadline),
                PcPlace(host.address, host.room),
                ctx.catalog,
                ctx.now,
                source=self.name,
            )
        except Exception as exc:  # one host's failure, whatever it is, must not end the scan
            message = self.describe(exc, host)
            if not isinstance(exc, _EXPECTED):
                log.exception("ssh.host.bug", target=host.target)
            log.warning("ssh.host.failed", target=host.target, error=message)
            result.errors.append(ScanError(self.name, host.target, message))
            result.unreached.append(host.address)  # its units are not taken to be gone
            return result
        result.observations = report.observations
        result.errors = [ScanError(self.name, host.target, p) for p in report.problems]
        result.messages = [f"{host.target}: {m}" for m in report.messages]
        log.info(
            "ssh.host.done",
            target=host.target,
            seconds=round(time.monotonic() - started, 3),
            observations=len(result.observations),
            errors=len(result.errors),
        )
        return result

    def read_host(self, host: SshHost, deadline: float) -> PcFacts:
        """Connect, verify, log in and read the PC's facts (blocking)."""
        if self.known_hosts is None:
            raise SshHostError(
                "no known_hosts file is configured (sources.ssh.known_hosts or "
                "--known-hosts); host keys are always verified"
            )
        key = load_private_key(host.key_file)
        with contextlib.closing(self._connect(host, key, self.known_hosts)) as client:
            if host.os == "windows":
                return parse_windows_inventory(
                    run_command(client, WINDOWS_COMMAND, timeout=self.connect_timeout, deadline=deadline)
                )
            try:
                sftp = client.open_sftp()
            except paramiko.SSHException as exc:
                raise SshHostError(
                    f"SFTP is not available on the PC ({exc}); the Linux inventory "
                    "reads files over SFTP (sshd's sftp subsystem)"
                ) from exc
            with contextlib.closing(sftp):
                sftp.get_channel().settimeout(self.connect_timeout)
                return read_linux_pc(SftpFiles(sftp, deadline), _normalized_root(host.sysfs_root))

    def _connect(self, host: SshHost, key: paramiko.PKey, known_hosts: Path) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        try:
            _load_known_hosts(client, known_hosts)
            client.set_missing_host_key_policy(RejectUnknownHostKey())
            t = self.connect_timeout
            client.connect(
                host.host,
                port=host.port,
                username=host.user,
                pkey=key,
                timeout=t,
                banner_timeout=t,
                auth_timeout=t,
                channel_timeout=t,
                look_for_keys=False,
                allow_agent=False,
            )
        except BaseException:
            client.close()
            raise
        return client

    def describe(self, exc: BaseException, host: SshHost) -> str:
        """One line for the operator: what failed on this host, and what to do."""
        return describe_failure(exc, host, self.known_hosts, self.connect_timeout)


def _rough_target(item: Any) -> str:
    """``user@host:port`` of a host entry that did not validate, as far as it can be told."""
    return f"{getattr(item, 'user', '?')}@{getattr(item, 'host', '?')}:{getattr(item, 'port', DEFAULT_PORT)}"


_EXPECTED = (SshHostError, paramiko.SSHException, OSError, EOFError, RemoteTimeout, WindowsOutputError)


def _normalized_root(root: str) -> str:
    return posixpath.normpath(root) if root != "/" else root


def _load_known_hosts(client: paramiko.SSHClient, path: Path) -> None:
    try:
        # "system" host keys are never written back: nothing is ever added to the file.
        client.load_system_host_keys(str(path))
    except OSError as exc:
        raise SshHostError(f"known_hosts file {path}: cannot read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, InvalidHostKey) as exc:
        raise SshHostError(f"known_hosts file {path} is not an OpenSSH known_hosts file") from exc


def load_private_key(path: Path | None) -> paramiko.PKey:
    """The host's private key (a relative name is looked up in ``$CREDENTIALS_DIRECTORY``
    first, as every secret file). Raises :class:`SshHostError`; never says what the file holds."""
    if path is None:
        raise SshHostError(
            "no key file is configured for this host (key_file or --ssh-key); "
            "roomsync logs in with a key only"
        )
    from agent.secretfile import resolve_secret_path

    path = resolve_secret_path(path)
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise SshHostError(f"key file {path} does not exist") from None
    except PermissionError:
        raise SshHostError(f"key file {path} is not readable by this user") from None
    except IsADirectoryError:
        raise SshHostError(f"key file {path} is a directory") from None
    except TypeError:
        # cryptography: "Password was not given but private key is encrypted".
        raise SshHostError(
            f"key file {path} is encrypted; roomsync needs a key without a "
            "passphrase, readable only by the agent's user"
        ) from None
    except OSError as exc:
        raise SshHostError(f"key file {path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, paramiko.SSHException, paramiko.UnknownKeyType):
        raise SshHostError(
            f"key file {path} is not a private key roomsync can use (OpenSSH or PEM; Ed25519, ECDSA or RSA)"
        ) from None


def fingerprint(key: paramiko.PKey) -> str:
    """``ssh-ed25519 SHA256:…``, as ``ssh-keygen -lf`` and ``ssh`` print it."""
    return f"{key.get_name()} {key.fingerprint}"


def describe_failure(exc: BaseException, host: SshHost, known_hosts: Path | None, timeout: float) -> str:
    """The one-line message for a host's failure (connection, host key, login, reading)."""
    for kinds, describe in _DESCRIBERS:
        if isinstance(exc, kinds):
            return describe(exc, host, known_hosts, timeout)
    return f"{type(exc).__name__}: {exc}"


def _host_key_unknown(exc: Any, host: SshHost, known_hosts: Path | None, _t: float) -> str:
    return (
        f"host key for {host.known_hosts_name} not in {known_hosts}; verify the fingerprint "
        f"({fingerprint(exc.key)}) and add it with ssh-keyscan (docs/ssh-room-pcs.md)"
    )


def _host_key_mismatch(exc: Any, host: SshHost, known_hosts: Path | None, _t: float) -> str:
    return (
        f"host key for {host.known_hosts_name} does not match {known_hosts} (possible "
        f"man-in-the-middle); expected {fingerprint(exc.expected_key)} got {fingerprint(exc.key)}"
    )


def _auth_failed(_exc: Any, host: SshHost, _k: Path | None, _t: float) -> str:
    return (
        f"authentication as {host.user} with key file {host.key_file} failed (is its public "
        f"key in {host.user}'s authorized_keys on the PC?)"
    )


def _no_connection(exc: Any, host: SshHost, _k: Path | None, _t: float) -> str:
    codes = {getattr(e, "errno", None) for e in exc.errors.values()}
    if codes == {errno.ECONNREFUSED}:
        return f"connection refused on port {host.port} (is sshd running and listening there?)"
    return f"cannot connect to port {host.port} (host unreachable)"


def _resolve_failed(exc: Any, host: SshHost, _k: Path | None, _t: float) -> str:
    return f"cannot resolve host name {host.host} ({exc.strerror or exc})"


def _timed_out(_exc: Any, host: SshHost, _k: Path | None, timeout: float) -> str:
    return f"connection to port {host.port} timed out after {timeout:g} s"


def _ssh_error(exc: Any, host: SshHost, _k: Path | None, timeout: float) -> str:
    text = str(exc)
    banner = text.startswith("Error reading SSH protocol banner")
    if banner and not isinstance(exc.__context__, TimeoutError):
        return f"the server on port {host.port} closed the connection before its SSH banner"
    # paramiko says "No existing session" when its handshake wait ends before the banner wait.
    if banner or text == "No existing session":
        return (
            f"no SSH handshake within {timeout:g} s on port {host.port} (not an SSH server, "
            "or it is overloaded)"
        )
    return f"SSH error: {text}"


def _os_error(exc: Any, host: SshHost, _k: Path | None, _t: float) -> str:
    return f"connection to port {host.port} failed: {exc.strerror or exc}"


def _closed(_exc: Any, _h: SshHost, _k: Path | None, _t: float) -> str:
    return "the PC closed the connection"


def _worded(exc: Any, _h: SshHost, _k: Path | None, _t: float) -> str:
    return str(exc)


_DESCRIBERS: tuple[
    tuple[
        type[BaseException] | tuple[type[BaseException], ...],
        Callable[[Any, SshHost, Path | None, float], str],
    ],
    ...,
] = (
    ((SshHostError, RemoteTimeout, WindowsOutputError), _worded),
    (UnknownHostKeyError, _host_key_unknown),
    (paramiko.BadHostKeyException, _host_key_mismatch),
    (paramiko.AuthenticationException, _auth_failed),
    (NoValidConnectionsError, _no_connection),
    (socket.gaierror, _resolve_failed),
    (TimeoutError, _timed_out),
    (paramiko.SSHException, _ssh_error),
    (OSError, _os_error),
    (EOFError, _closed),
)
