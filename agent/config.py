"""Typed configuration: one TOML file plus environment overrides.

* File: ``--config PATH``, else ``$ROOMSYNC_CONFIG``, else
  ``$CONFIGURATION_DIRECTORY/agent.toml`` (systemd's ``ConfigurationDirectory=``), else
  ``/etc/roomsync/agent.toml``. A missing *default* file means built-in defaults; a missing
  file that was asked for by name is an error.
* Environment: ``ROOMSYNC_<SECTION>__<KEY>`` overrides one key, ``__`` separating levels
  (``ROOMSYNC_ROOM__ID=oslo-4-12``, ``ROOMSYNC_SOURCES__USB__ENABLED=false``). Values are
  text, converted by the field's type; lists and tables are written as JSON.
* Paths: a relative path written in the file is relative to the file's directory, whatever
  the current directory (``/etc/roomsync/agent.toml`` saying ``room_map = "rooms.csv"`` means
  ``/etc/roomsync/rooms.csv``); :func:`load_config` returns it resolved, so ``roomsync
  check-config`` and SIGHUP reloads see the same absolute path. In a key naming a secret file
  (:data:`SecretFile`) a bare name (no ``/``) is a systemd credential first:
  ``$CREDENTIALS_DIRECTORY/<name>`` when that exists, else the file beside the configuration
  like any relative path (``./name`` is never a credential). A path from a ``ROOMSYNC_*``
  variable or a command-line flag is kept as given, relative to the current directory as a
  shell user means it (a bare secret name there is looked up as a credential when read,
  :func:`agent.secretfile.resolve_secret_path`). Absolute paths and defaults are unchanged;
  ``~`` is not expanded. Which keys are paths comes from the annotations (every
  :class:`~pathlib.Path`, :func:`path_keys`); a path on another host is typed ``str``
  (``[[sources.ssh.hosts]] sysfs_root``).

Every problem is reported as ``<file or variable>: <key.path>: <what is expected>``, all at
once, never as a traceback. ``config/agent.example.toml`` documents every key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.sanitize import MASK, is_secret_key
from agent.secretfile import credential_path

DEFAULT_CONFIG_PATH = Path("/etc/roomsync/agent.toml")
ENV_PREFIX = "ROOMSYNC_"
#: Variables with the prefix that are not key overrides.
_ENV_NOT_KEYS = frozenset({"ROOMSYNC_CONFIG"})

#: Text without control characters (the ``pattern`` of :data:`Text` and of free-form names).
PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=PRINTABLE.pattern)]


#: A room's meeting platform (whom to call when a Tap bundle fails: agent/support.py).
PlatformName = Literal["teams", "zoom", "google-meet"]


@dataclass(frozen=True, slots=True)
class _SecretName:
    """Marks a path (in ``Annotated``) that names a secret file: a bare name written in the
    configuration file is a systemd credential before it is a file (module docstring)."""


#: A file holding a secret, read by :mod:`agent.secretfile`: a bare name is a systemd
#: credential first. Every key whose file is read with ``read_secret`` or
#: ``resolve_secret_path`` is typed so; tests/test_config.py lists them.
SecretFile = Annotated[Path, _SecretName()]


class ConfigError(Exception):
    """Invalid configuration. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    # Every number of the configuration is finite (nan and inf are refused as such).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RoomConfig(_Section):
    """The room this host stands in: every unit on its USB belongs there."""

    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
    name: Text | None = None
    group: Text | None = None
    location: Text | None = None
    seat_count: Annotated[int, Field(ge=0, le=10_000)] | None = None
    #: The room's meeting platform: whom to call when a Tap bundle fails depends on it
    #: (Teams: Logitech JumpStart; Zoom, Google Meet: Logitech Support). Unset: unknown.
    platform: PlatformName | None = None


#: Seconds between runs of a source in the daemon (``roomsync run``).
Interval = Annotated[float, Field(ge=1, le=7 * 86400)]


class UsbSourceConfig(_Section):
    enabled: bool = True
    sysfs_root: Path = Path("/sys")
    all_usb: bool = False
    libusb_strings: bool = True
    sync_interface: bool = True
    #: Read the firmware of Scribes, MeetUps, Taps and Rally systems over their video4linux,
    #: hidraw and bulk interfaces (read-only ioctls and transfers: docs/usb-firmware.md).
    firmware: bool = True
    sync_deadline: Annotated[float, Field(gt=0, le=120)] = 10.0
    #: Daemon: a full USB pass this often, besides the passes hot-plugging triggers.
    interval: Interval = 300.0
    #: Daemon: how often the USB device list is looked at for hot-plugging (a cheap
    #: directory listing); a change triggers a pass at once.
    hotplug_poll: Annotated[float, Field(ge=0.1, le=60)] = 1.0


#: CollabOS devices serve their "Local Network Access" page over HTTPS (protocols.md, V); no
#: public source names their mDNS service types (U), so the defaults are the web types and the
#: catalog's host-name patterns (RallyBar-…) do the identifying. --mdns-type adds more.
DEFAULT_MDNS_TYPES = ("_https._tcp.local.", "_http._tcp.local.")


class MdnsSourceConfig(_Section):
    #: Unset: on for the daemon (``roomsync run``), off for one-shot scans unless ``--mdns``.
    enabled: bool | None = None
    #: Daemon: a browse of ``timeout`` seconds this often.
    interval: Interval = 60.0
    service_types: list[Annotated[str, Field(pattern=r"^_[A-Za-z0-9-]+\._(tcp|udp)\.local\.$")]] = Field(
        default_factory=lambda: list(DEFAULT_MDNS_TYPES)
    )
    interfaces: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(default_factory=list)
    timeout: Annotated[float, Field(gt=0, le=300)] = 3.0


class SnmpV3Config(_Section):
    user: Text
    auth_protocol: Literal["SHA", "SHA224", "SHA256", "SHA384", "SHA512"] = "SHA256"
    auth_key_file: SecretFile
    priv_protocol: Literal["AES", "AES192", "AES256"] = "AES"
    priv_key_file: SecretFile
    #: The SNMPv3 context; empty for the default context.
    context_name: Annotated[str, Field(max_length=200, pattern=PRINTABLE.pattern)] = ""


class SnmpSourceConfig(_Section):
    enabled: bool = False
    targets: list[Text] = Field(default_factory=list)
    port: Annotated[int, Field(ge=1, le=65535)] = 161
    version: Literal["2c", "3"] = "2c"
    community: SecretStr = SecretStr("public")
    community_file: SecretFile | None = None
    v3: SnmpV3Config | None = None
    timeout: Annotated[float, Field(gt=0, le=60)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 0
    concurrency: Annotated[int, Field(ge=1, le=4096)] = 256
    max_pps: Annotated[int, Field(ge=0)] = 4000
    #: Daemon: a sweep this often.
    interval: Interval = 900.0

    @model_validator(mode="after")
    def _v3_needs_credentials(self) -> SnmpSourceConfig:
        if self.version == "3" and self.v3 is None:
            raise ValueError('version = "3" needs a [sources.snmp.v3] table')
        return self

    @model_validator(mode="after")
    def _targets_are_usable(self) -> SnmpSourceConfig:
        from agent.discovery.targets import check_targets

        problems = check_targets(self.targets, self.port)
        if problems:
            raise ValueError("targets: " + "; ".join(problems))
        return self


class SshHostConfig(_Section):
    host: Text
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    user: Text
    key_file: SecretFile | None = None
    os: Literal["linux", "windows"] = "linux"
    sysfs_root: str = "/sys"
    room: Text | None = None


class SshSourceConfig(_Section):
    enabled: bool = False
    known_hosts: Path | None = None
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    hosts: list[SshHostConfig] = Field(default_factory=list)
    #: Daemon: the hosts are read this often.
    interval: Interval = 3600.0


class CollabosHostConfig(_Section):
    """One CollabOS device the operator listed. In ``hosts`` it is written ``"HOST[:PORT]"``
    or as a table with a ``room``."""

    #: The device's address or host name (``"HOST:PORT"`` and ``"[v6]:PORT"`` are accepted too).
    host: Text
    #: The API's port.
    port: Annotated[int, Field(ge=1, le=65535)] = 443
    #: The room the device stands in (its Tap IP goes there too); else the room map places it.
    room: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        from agent.discovery.targets import parse_host_port

        if isinstance(value, str):
            host, port = parse_host_port(value, 443)
            return {"host": host, "port": port}
        if isinstance(value, dict) and isinstance(value.get("host"), str):
            host, port = parse_host_port(value["host"], 0)
            return {**value, "host": host} if port == 0 else {**value, "host": host, "port": port}
        return value

    @property
    def address(self) -> str:
        """``host`` on port 443, ``host:port`` (``[v6]:port``) otherwise: how the inventory and
        the certificate pins name the device."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return shown if self.port == 443 else f"{shown}:{self.port}"


class CollabosSourceConfig(_Section):
    """CollabOS devices read through their Device Management API (docs/collabos.md). The
    password goes only to the hosts listed here, never to a device found on the network."""

    #: Read the listed devices (``roomsync run`` and ``roomsync scan``; ``--collabos`` too).
    enabled: bool = False
    #: The devices to read, ``"HOST[:PORT]"`` or tables with a ``room``; only these are sent
    #: the password.
    hosts: list[CollabosHostConfig] = Field(default_factory=list)
    #: The API user.
    user: Text = "admin"
    #: The API password: a systemd credential name (``$CREDENTIALS_DIRECTORY``), else a file
    #: (a relative path: beside this file).
    password_file: SecretFile | None = None
    #: A CA bundle (PEM) for devices with a certificate the company CA signed: the chain and
    #: the host name are verified, nothing is pinned. Unset: each device's certificate is
    #: pinned at first contact (before any password is sent). Never "verify off".
    ca_file: Path | None = None
    #: Seconds one request may take (connect to the last byte).
    timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    #: Seconds ``/insights/room`` may take (a device can take 15 s to count the people).
    insights_timeout: Annotated[float, Field(gt=0, le=120)] = 20.0
    #: Read ``/insights/device`` and ``/insights/room`` (CollabOS 1.13+).
    insights: bool = True
    #: Seconds one device may take in all; the other devices go on.
    host_deadline: Annotated[float, Field(gt=0, le=600)] = 60.0
    #: Devices read at once.
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 32
    #: Daemon: the devices are read this often. Each read is one sign-in per 15 minutes and
    #: four calls: the devices allow 5 sign-ins and 10 calls a minute.
    interval: Interval = 300.0

    @field_validator("hosts")
    @classmethod
    def _hosts_once(cls, hosts: list[CollabosHostConfig]) -> list[CollabosHostConfig]:
        seen: set[str] = set()
        for entry in hosts:
            if entry.address in seen:
                raise ValueError(f"{entry.address} is listed twice")
            seen.add(entry.address)
        return hosts


class SourcesConfig(_Section):
    usb: UsbSourceConfig = UsbSourceConfig()
    mdns: MdnsSourceConfig = MdnsSourceConfig()
    snmp: SnmpSourceConfig = SnmpSourceConfig()
    ssh: SshSourceConfig = SshSourceConfig()
    collabos: CollabosSourceConfig = CollabosSourceConfig()


def is_loopback_listen(listen: str) -> bool:
    """Whether ``listen`` (``HOST:PORT`` or ``unix:/path``) is reachable from this host only."""
    if listen.startswith("unix:"):
        return True
    return is_loopback_host(listen.rpartition(":")[0])


def api_exposure_problem(listen: str, token_file: object | None) -> str | None:
    """Why the local API may not listen there (beyond loopback without a token), or ``None``:
    the one check ``roomsync run``, the API and ``roomsync check-config`` make."""
    if token_file is None and not is_loopback_listen(listen):
        return (
            f"[api] listen = {listen!r} is reachable from the network: set [api] token_file "
            "(a bearer token) or listen on 127.0.0.1"
        )
    return None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name, an address, ``[v6]``) names this host only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class PortalConfig(_Section):
    """The licensing portal the inventory is pushed to (docs/portal-api.md)."""

    #: Base URL; ``https://`` (``http://`` only to a loopback address, for tests).
    url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+[^\s?#]*$")] | None = None
    #: The bearer token: a systemd credential name (``$CREDENTIALS_DIRECTORY``), else a file
    #: (a relative path: beside this file).
    token_file: SecretFile | None = None
    #: A CA bundle (PEM) to verify the portal with instead of the system's trust store.
    #: TLS is always verified: there is no setting that turns verification off.
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    #: Seconds one request may take, connect to last byte of the reply.
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    #: The longest wait between retries, seconds (exponential backoff with full jitter).
    backoff_cap: Annotated[float, Field(ge=1, le=86400)] = 900.0
    #: A full snapshot is queued at least this often, changed or not.
    snapshot_interval_hours: Annotated[float, Field(gt=0, le=24 * 31)] = 24.0
    #: The outbox's bound; past it the oldest queued events are dropped (and counted).
    outbox_max_mb: Annotated[float, Field(ge=1, le=100_000)] = 64.0

    @field_validator("url")
    @classmethod
    def _https_or_loopback(cls, value: str | None) -> str | None:
        checked = _https_url(value, credentials="the token goes in token_file")
        return checked.rstrip("/") if checked is not None else None

    @model_validator(mode="after")
    def _client_pair(self) -> PortalConfig:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together (mTLS)")
        return self


def _https_url(value: str | None, *, credentials: str) -> str | None:
    """``https://`` (``http://`` only to a loopback address), no credentials in it (where
    they go instead: ``credentials``)."""
    if value is None:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.username or parts.password:
        raise ValueError(f"no credentials in the URL: {credentials}")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ValueError("http:// is accepted only for a loopback address; use https://")
    return value


class _OutputConfig(_Section):
    """What every output shares: retries and the bound of its queue."""

    #: Seconds one delivery attempt may take (connecting included).
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    #: The longest wait between retries, seconds (exponential backoff with full jitter).
    backoff_cap: Annotated[float, Field(ge=1, le=86400)] = 900.0
    #: Everything is sent again at least this often, changed or not.
    resend_hours: Annotated[float, Field(gt=0, le=24 * 31)] = 24.0
    #: This output's queue bound; past it its oldest queued events (GLPI: documents, sent
    #: again at the next round) are dropped and counted.
    outbox_max_mb: Annotated[float, Field(ge=1, le=100_000)] = 64.0


class GlpiOutputConfig(_OutputConfig):
    """GLPI's native inventory (docs/glpi.md): one document per unit, POSTed to the
    server's inventory endpoint."""

    #: The inventory endpoint: ``https://glpi.example.com/front/inventory.php`` (GLPI 11
    #: also answers at ``/Inventory``); ``http://`` only to a loopback address.
    url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+[^\s?#]*$")]
    #: A CA bundle (PEM) to verify the server with instead of the system's trust store.
    ca_file: Path | None = None
    #: A client certificate (PEM) for GLPI's "client certificate" check (mTLS); with
    #: ``client_key``.
    client_cert: Path | None = None
    #: The private key of ``client_cert``.
    client_key: Path | None = None
    #: HTTP basic authentication (GLPI's inventory "Authorization header" setting), with
    #: ``password_file``.
    username: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^:\x00-\x1f\x7f]+$")] | None = (
        None
    )
    #: The basic-auth password: a systemd credential name, else a file; read at the start of
    #: every delivery run, never logged.
    password_file: SecretFile | None = None
    #: How bodies are compressed: ``zlib`` (``application/x-compress-zlib``, what
    #: glpi-agent sends), ``gzip`` or ``none`` (plain JSON).
    compression: Literal["zlib", "gzip", "none"] = "zlib"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return (
            _https_url(value, credentials="the user and password go in username and password_file") or value
        )

    @model_validator(mode="after")
    def _pairs(self) -> GlpiOutputConfig:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together (mTLS)")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together (HTTP basic authentication)")
        return self


class MqttOutputConfig(_OutputConfig):
    """An MQTT broker (docs/mqtt.md): the inventory retained, events, the agent's status."""

    #: ``mqtt://HOST[:1883]`` or ``mqtts://HOST[:8883]`` (TLS, always verified).
    url: Annotated[str, Field(pattern=r"^mqtts?://[^\s/?#@]+/?$")]
    #: The MQTT client id; ``roomsync-<agent_id>`` by default.
    client_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")] | None = None
    #: The user the broker knows the agent as; with ``password_file``.
    username: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")] | None = (
        None
    )
    #: The password (a systemd credential name, else a file); with ``username``.
    password_file: SecretFile | None = None
    #: A CA bundle (PEM) to verify an ``mqtts://`` broker with instead of the system's.
    ca_file: Path | None = None
    #: Topics start with this; ``roomsync/<agent_id>`` by default. No wildcards.
    topic_prefix: (
        Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^#+\x00-\x1f\x7f]+$")] | None
    ) = None
    #: Seconds between keep-alive pings; the broker says ``offline`` (the Last Will) after
    #: about 1.5 times this without a word from the agent.
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 60
    timeout: Annotated[float, Field(gt=0, le=600)] = 10.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from agent.uploader.mqtt import MqttTarget

        MqttTarget.of(value, "check")  # the same rules the publisher applies
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or value.endswith("/") or "//" in value):
            raise ValueError("a topic prefix neither starts nor ends with '/' and has no empty level")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> MqttOutputConfig:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        if self.ca_file is not None and not self.url.startswith("mqtts://"):
            raise ValueError("ca_file needs an mqtts:// URL")
        return self


class OutputsConfig(_Section):
    """Where the inventory goes besides the portal (``[outputs.glpi]``, ``[outputs.mqtt]``);
    each is delivered on its own: one failing never holds up another."""

    glpi: GlpiOutputConfig | None = None
    mqtt: MqttOutputConfig | None = None


class ApiConfig(_Section):
    listen: str = "127.0.0.1:8765"
    token_file: SecretFile | None = None
    #: Connections the API holds at once. The API serves a handful of local clients; a
    #: connection beyond these takes the place of the one idle longest, or is turned away
    #: (503) when every one is busy answering.
    max_connections: Annotated[int, Field(ge=1, le=512)] = 64
    #: Seconds a connection may take to send a whole request header, and may stay idle
    #: between requests, before it is closed.
    header_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value.startswith("unix:"):
            if len(value) == len("unix:"):
                raise ValueError("unix: needs a socket path")
            return value
        host, sep, port = value.rpartition(":")
        if (
            not sep
            or not host
            or not (port.isascii() and port.isdigit() and len(port) <= 5)
            or not 0 < int(port) < 65536
        ):
            raise ValueError("expected HOST:PORT (e.g. 127.0.0.1:8765) or unix:/path/to.sock")
        return value


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class StoreConfig(_Section):
    """The local store (SQLite in the state directory)."""

    #: A unit is reported removed after this many runs in a row of the source that found it
    #: without seeing it, so a flaky cable does not flap.
    remove_after_missed_scans: Annotated[int, Field(ge=1, le=1000)] = 3
    #: Observation history kept: scans younger than this many days…
    history_days: Annotated[float, Field(gt=0, le=3650)] = 30.0
    #: …for at most this many of the newest scans that changed something…
    history_scans: Annotated[int, Field(ge=1, le=1_000_000)] = 200
    #: …and at most this many MiB of history (the oldest scans' go first; the newest
    #: scan's stays whatever its size). A scan adds history only for the units it changed.
    history_max_mb: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)] = 64.0
    #: Change events are kept this many days (once the outbox has taken them).
    events_days: Annotated[float, Field(gt=0, le=36500)] = 365.0


class CoverageConfig(_Section):
    """Where coverage comes from for the portal snapshot and ``roomsync coverage``."""

    #: Purchase and contract records (CSV; format: docs/csv-formats.md). Without it the
    #: snapshot sends ``coverage: null``.
    entitlements: Path | None = None
    #: ``expiring_soon`` when coverage ends within this many days.
    expiring_days: Annotated[int, Field(ge=0, le=3650)] = 90
    #: For an example or training file only (the quickstart's): the day its dates were
    #: written as of. Each date in ``entitlements`` is read moved forward by the days from
    #: then to today (UTC, when the file is read: at start and reload), so the example shows
    #: the same statuses on any day. Leave unset for real records.
    dates_relative_to: Annotated[date, Field(ge=date(1980, 1, 1), le=date(2199, 12, 31))] | None = None

    def date_shift(self, today: date) -> int:
        """Days every entitlement date is moved by on ``today`` (0 unless
        ``dates_relative_to`` is set)."""
        return 0 if self.dates_relative_to is None else (today - self.dates_relative_to).days


class SelectConfig(_Section):
    """Logitech SELECT facts the entitlement records do not carry (domain.md S1, S3)."""

    #: The enterprise plan's tier, when the customer has one (S3): rooms it serves.
    enterprise_tier: Literal["100", "250", "500", "1000", "2000", "5000", "SLX"] | None = None

    @field_validator("enterprise_tier", mode="before")
    @classmethod
    def _tier_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _documented_platforms() -> dict[str, PlatformName]:
    """``[support] service_platforms``'s default: the ``serviceProvider`` whose platform is
    documented (issue [15/16]: ``MTR``, a Microsoft Teams room)."""
    return {"MTR": "teams"}


class ContactConfig(_Section):
    """One desk: a name, and a URL or a phone number (unset: the seeds' default for it)."""

    #: The desk's name, as an administrator would ask for it.
    name: Text | None = None
    #: Where tickets are opened (a portal or a form); set with only ``phone``, the seeds'
    #: URL is dropped.
    url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2000)] | None = None
    #: The desk's phone number.
    phone: Annotated[str, Field(pattern=r"^\+?[0-9][0-9 ()./-]{3,40}$")] | None = None


class SupportConfig(_Section):
    """Whom to call when a unit fails (``roomsync support``; agent/support.py). Each desk
    left unset keeps the seeds' contact (domain.md: seeds 000, 003, 004)."""

    #: The distributor Logitech products other than conference systems go back to by RMA
    #: (D1; the seeds': Ingram Micro's returns portal, the Netherlands).
    distributor: ContactConfig = ContactConfig()
    #: The reseller whose service contracts (HEZO+, H1-H3) cover units (the seeds': myHEZO).
    reseller: ContactConfig = ContactConfig()
    #: The SELECT desk: the Logitech Service Portal (S12).
    select: ContactConfig = ContactConfig()
    #: Logitech JumpStart, for Tap bundles in Microsoft Teams rooms (D2).
    jumpstart: ContactConfig = ContactConfig()
    #: Logitech Support, for conference systems other than Tap bundles (D2).
    logitech: ContactConfig = ContactConfig()
    #: Logitech Support's Tap-bundle form, for Zoom and Google Meet rooms (D2, P2).
    tap_bundles: ContactConfig = ContactConfig()
    #: A room's platform by the ``serviceProvider`` its CollabOS units report
    #: (``GET /api/v1/device``), for rooms whose ``[room] platform`` / room-map ``platform`` is unset. Keys
    #: are matched without regard to case; a provider not listed (``BYOD``…) leaves the
    #: platform unknown. Setting this table (or one key of it from the environment) replaces
    #: the default (``MTR`` is documented;
    #: what Zoom and Google Meet bars report is not: add it as your units show it, in
    #: ``roomsync inventory --json``'s ``attributes.service_provider``).
    service_platforms: dict[
        Annotated[
            str, Field(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")
        ],
        PlatformName,
    ] = Field(default_factory=_documented_platforms)

    @field_validator("service_platforms")
    @classmethod
    def _one_platform_per_provider(cls, value: dict[str, PlatformName]) -> dict[str, PlatformName]:
        seen: dict[str, str] = {}
        for key in value:
            other = seen.setdefault(key.upper(), key)
            if other != key:
                raise ValueError(f"{other!r} and {key!r} name one provider (case does not matter): keep one")
        return value


class AgentConfig(_Section):
    """The whole configuration file."""

    #: This agent's id towards the portal; by default a UUID made once and kept in the store.
    agent_id: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")] | None = None
    room: RoomConfig | None = None
    #: CSV placing LAN devices in rooms (format: docs/csv-formats.md).
    room_map: Path | None = None
    state_dir: Path | None = None
    log: LogConfig = LogConfig()
    sources: SourcesConfig = SourcesConfig()
    portal: PortalConfig = PortalConfig()
    outputs: OutputsConfig = OutputsConfig()
    api: ApiConfig = ApiConfig()
    select: SelectConfig = SelectConfig()
    support: SupportConfig = SupportConfig()
    store: StoreConfig = StoreConfig()
    coverage: CoverageConfig = CoverageConfig()


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated configuration and where it came from."""

    config: AgentConfig
    path: Path | None  # the file read, None for built-in defaults
    requested: Path  # the file looked for
    env_overrides: tuple[str, ...] = ()


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("ROOMSYNC_CONFIG"):
        return Path(env["ROOMSYNC_CONFIG"])
    if env.get("CONFIGURATION_DIRECTORY"):
        # systemd may list several directories separated by ':'; ours is the first.
        return Path(env["CONFIGURATION_DIRECTORY"].split(":")[0]) / "agent.toml"
    return DEFAULT_CONFIG_PATH


def load_config(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Read, merge and validate the configuration. Raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    explicit = path is not None or bool(env.get("ROOMSYNC_CONFIG"))
    requested = Path(path) if path is not None else default_config_path(env)
    where = str(requested)
    data: dict[str, Any] = {}
    used: Path | None = None
    try:
        with open(requested, "rb") as fh:
            data = tomllib.load(fh)
        used = requested
    except FileNotFoundError:
        if explicit:
            raise ConfigError([f"{where}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{where}: is a directory, expected a TOML file"]) from None
    except PermissionError:
        raise ConfigError([f"{where}: permission denied (run as a user who may read it)"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{where}: TOML syntax error: {exc}"]) from None
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, deep nesting
        raise ConfigError([f"{where}: not a usable TOML document: {_brief(exc)}"]) from None
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read: {exc.strerror or exc}"]) from None

    if used is not None:
        # Before the environment is merged in: only what the file says is relative to it.
        data = _from_file(data, AgentConfig, (), _directory_of(used), env)

    env_sources: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_KEYS:
            continue
        if not env[name].strip():
            continue  # set but empty: unset (ROOMSYNC_STATE_DIR= must not mean ".")
        keys = tuple(k.lower() for k in name[len(ENV_PREFIX) :].split("__"))
        if not all(keys):
            problems.append(f"environment {name}: empty key between '__' separators")
            continue
        try:
            _set_path(data, keys, _env_value(env[name]))
        except ValueError as exc:
            problems.append(f"environment {name}: {exc}")
            continue
        env_sources[keys] = name
    if problems:
        raise ConfigError(problems)

    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where if used else "built-in defaults", env_sources)) from None
    return LoadedConfig(config, used, requested, tuple(env_sources.values()))


def path_keys(
    model: type[BaseModel] = AgentConfig, prefix: str = ""
) -> Iterator[tuple[str, Literal["path", "secret"]]]:
    """Every key of ``model`` that is a local path, with its kind: ``"secret"`` for a
    :data:`SecretFile`, ``"path"`` for any other :class:`~pathlib.Path`. Keys inside an array
    of tables are written ``sources.ssh.hosts[].key_file``. The same reading of the
    annotations as :func:`load_config`'s (tests/test_config.py checks the list)."""
    for name, info in model.model_fields.items():
        for arm, markers in _arms(info.annotation, tuple(info.metadata)):
            if arm is Path:
                yield prefix + name, "secret" if _is_secret(markers) else "path"
            elif isinstance(arm, type) and issubclass(arm, BaseModel):
                yield from path_keys(arm, f"{prefix}{name}.")
            elif get_origin(arm) is list:
                for item, item_markers in _arms(get_args(arm)[0]):
                    if item is Path:
                        yield f"{prefix}{name}[]", "secret" if _is_secret(item_markers) else "path"
                    elif isinstance(item, type) and issubclass(item, BaseModel):
                        yield from path_keys(item, f"{prefix}{name}[].")


def _arms(annotation: Any, markers: tuple[Any, ...] = ()) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """The types a value of ``annotation`` may have, each with the ``Annotated`` metadata
    around it: ``SecretFile | None`` → ``(Path, (_SecretName(),)), (NoneType, ())``."""
    while get_origin(annotation) is Annotated:
        annotation, *more = get_args(annotation)
        markers = (*markers, *more)
    if get_origin(annotation) in (Union, types.UnionType):
        for arm in get_args(annotation):
            yield from _arms(arm, markers)
    else:
        yield annotation, markers


def _is_secret(markers: tuple[Any, ...]) -> bool:
    return any(isinstance(m, _SecretName) for m in markers)


def _directory_of(config_file: Path) -> Path:
    """The directory relative paths in ``config_file`` start from: its own, made absolute
    (``--config agent.toml`` means the current directory's at load time, and check-config
    shows absolute paths), symbolic links not followed (the directory the file was named in)."""
    return (config_file if config_file.is_absolute() else Path.cwd() / config_file).parent


def _from_file(
    value: Any, annotation: Any, markers: tuple[Any, ...], base: Path, env: Mapping[str, str]
) -> Any:
    """``value`` read from the file for a field of type ``annotation``, with every relative
    local path in it resolved (module docstring). The walk follows the model; anything that
    does not fit it (a number where a path belongs, an unknown key) is left for validation
    to report as written."""
    for arm, arm_markers in _arms(annotation, markers):
        if arm is Path and isinstance(value, str):
            return _resolve(value, base, env, secret=_is_secret(arm_markers))
        if isinstance(arm, type) and issubclass(arm, BaseModel) and isinstance(value, dict):
            fields = arm.model_fields
            return {
                key: _from_file(item, fields[key].annotation, tuple(fields[key].metadata), base, env)
                if key in fields
                else item
                for key, item in value.items()
            }
        if get_origin(arm) is list and isinstance(value, list):
            [item_type] = get_args(arm)
            return [_from_file(item, item_type, (), base, env) for item in value]
    return value


def _resolve(text: str, base: Path, env: Mapping[str, str], *, secret: bool) -> str:
    if secret:
        credential = credential_path(text, env)
        if credential is not None:
            return str(credential)
    if Path(text).is_absolute():
        return text
    return str(base / text)


def _env_value(text: str) -> Any:
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"looks like JSON but is not valid: {exc.msg}") from None
        except (ValueError, RecursionError) as exc:  # thousands of digits, deep nesting
            raise ValueError(f"looks like JSON but is not usable: {_brief(exc)}") from None
    return text


def _brief(exc: BaseException) -> str:
    """The first sentence of a parser's complaint (Python's own run on)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(";", 1)[0]


def _set_path(data: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(keys[: i + 1])} is not a table in the file")
        node = child
    node[keys[-1]] = value


def _describe(exc: ValidationError, where: str, env_sources: Mapping[tuple[str, ...], str]) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "(top level)"
        origin = where
        for n in range(len(loc), 0, -1):
            if loc[:n] in env_sources:
                origin = f"environment {env_sources[loc[:n]]}"
                break
        else:  # a key the environment made up (a typo in its name) lies below ``loc``
            named = [name for keys, name in env_sources.items() if loc and keys[: len(loc)] == loc]
            if named:
                origin = f"environment {', '.join(sorted(named))}"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (see config/agent.example.toml for the keys there are)"
        elif err["type"] == "missing":
            message = "required key is missing"
        got = err.get("input")
        shown = (
            ""
            if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict)
            else f" (got {_mask(key, got)!r})"
        )
        lines.append(f"{origin}: {key}: {message}{shown}")
    return lines


def _mask(key: str, value: Any) -> Any:
    return MASK if is_secret_key(key) else value


def effective_config(config: AgentConfig) -> dict[str, Any]:
    """The configuration as plain data with every secret masked (for check-config)."""
    return config.model_dump(mode="json", exclude_none=True)


def resolve_state_dir(
    config: AgentConfig,
    override: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Where the agent keeps its state: ``--state-dir``, the config's ``state_dir``,
    ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``), then ``/var/lib/roomsync`` under
    systemd or ``$XDG_STATE_HOME/roomsync`` (``~/.local/state/roomsync``) for a user."""
    env = os.environ if environ is None else environ
    if override is not None:
        return Path(override)
    if config.state_dir is not None:
        return config.state_dir
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if env.get("INVOCATION_ID"):
        return Path("/var/lib/roomsync")
    xdg = env.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path(env.get("HOME", "~")).expanduser() / ".local" / "state"
    return base / "roomsync"
