"""The source flags of ``roomsync scan`` and ``roomsync run``: the parent parser, and the
mapping of the flags onto each source's settings (flags are command-line matter; what a source
does by default is the registry's, :mod:`agent.discovery`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, TextIO

from agent.cli.common import UsageError, revalidate, seconds

if TYPE_CHECKING:
    from agent.config import (
        AgentConfig,
        CollabosSourceConfig,
        MdnsSourceConfig,
        SnmpSourceConfig,
        SshSourceConfig,
        UsbSourceConfig,
    )
    from agent.daemon_settings import SourceConfig


def add_source_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that pick sources and change their settings."""
    parser.add_argument("--usb", action="store_true", help="only the USB source")
    parser.add_argument(
        "--sysfs-root", metavar="PATH", help="read a captured sysfs tree instead of /sys (implies USB)"
    )
    parser.add_argument(
        "--all-usb", action="store_true", help="also list USB devices that are not Logitech's"
    )
    parser.add_argument(
        "--no-libusb", action="store_true", help="do not open devices through libusb for strings sysfs lacks"
    )
    lan = parser.add_argument_group(
        "LAN sources",
        "Any of these runs exactly the sources named on the command line "
        "(with --usb, USB too) instead of the ones enabled in the configuration; the other "
        "settings come from the configuration.",
    )
    lan.add_argument(
        "--snmp",
        metavar="TARGET",
        action="append",
        help="sweep an address, HOST:PORT or CIDR range with SNMP; repeatable",
    )
    lan.add_argument("--snmp-port", type=int, metavar="PORT", help="port of targets that name none")
    lan.add_argument(
        "--community",
        metavar="NAME",
        help="SNMPv2c community (visible in the process list: for tests; use "
        "community_file in the configuration in production)",
    )
    lan.add_argument("--snmp-timeout", type=seconds, metavar="S", help="seconds per SNMP request")
    lan.add_argument("--snmp-retries", type=int, metavar="N", help="SNMP retries per request")
    lan.add_argument("--concurrency", type=int, metavar="N", help="SNMP requests in flight")
    lan.add_argument("--mdns", action="store_true", help="browse mDNS (DNS-SD) services")
    lan.add_argument(
        "--mdns-type",
        metavar="TYPE",
        action="append",
        help="also browse this service type (e.g. _ipp._tcp.local.); repeatable",
    )
    lan.add_argument(
        "--mdns-interface",
        metavar="ADDR",
        action="append",
        help="browse only on the interface with this address; repeatable",
    )
    lan.add_argument("--mdns-timeout", type=seconds, metavar="S", help="seconds to browse")
    lan.add_argument(
        "--ssh",
        metavar="USER@HOST[:PORT]",
        action="append",
        help="read a room PC over SSH (host key verified); repeatable",
    )
    lan.add_argument("--ssh-key", metavar="FILE", help="private key for --ssh hosts")
    lan.add_argument("--known-hosts", metavar="FILE", help="known_hosts file for SSH host keys")
    lan.add_argument(
        "--collabos",
        metavar="HOST[:PORT]",
        action="append",
        help="read a CollabOS device (Rally Bar, Mini, RoomMate) through its Device Management "
        "API; its certificate is pinned at first contact; repeatable",
    )
    lan.add_argument("--collabos-user", metavar="NAME", help="API user for --collabos hosts (default admin)")
    lan.add_argument(
        "--collabos-password-file", metavar="FILE", help="file holding the API password for --collabos hosts"
    )
    lan.add_argument(
        "--collabos-ca-file",
        metavar="FILE",
        help="CA bundle for devices with a company-signed certificate (verified, not pinned)",
    )


def usb_settings(args: argparse.Namespace, cfg: AgentConfig) -> UsbSourceConfig:
    overrides: dict[str, object] = {}
    if args.sysfs_root is not None:
        if not os.path.isdir(args.sysfs_root):
            raise UsageError(f"--sysfs-root {args.sysfs_root}: no such directory")
        overrides["sysfs_root"] = args.sysfs_root
    if args.all_usb:
        overrides["all_usb"] = True
    if args.no_libusb:
        overrides["libusb_strings"] = False
    return revalidate(cfg.sources.usb, overrides, "--sysfs-root")


def snmp_settings(args: argparse.Namespace, cfg: AgentConfig) -> SnmpSourceConfig:
    overrides: dict[str, object] = {}
    for flag, key in (
        ("snmp", "targets"),
        ("snmp_port", "port"),
        ("snmp_timeout", "timeout"),
        ("snmp_retries", "retries"),
        ("concurrency", "concurrency"),
    ):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.community is not None:
        overrides.update(community=args.community, community_file=None, version="2c")
    return revalidate(cfg.sources.snmp, overrides, "--snmp options")


def mdns_settings(args: argparse.Namespace, cfg: AgentConfig) -> MdnsSourceConfig:
    settings = cfg.sources.mdns
    overrides: dict[str, object] = {}
    if args.mdns_type:
        from agent.discovery.mdns import normalize_service_type

        types = list(settings.service_types)
        for text in args.mdns_type:
            try:
                t = normalize_service_type(text)
            except ValueError as exc:
                raise UsageError(f"--mdns-type {text}: {exc}") from None
            if t not in types:
                types.append(t)
        overrides["service_types"] = types
    if args.mdns_interface:
        overrides["interfaces"] = args.mdns_interface
    if args.mdns_timeout is not None:
        overrides["timeout"] = args.mdns_timeout
    return revalidate(settings, overrides, "--mdns options")


def parse_ssh_target(spec: str) -> dict[str, str | int]:
    """``USER@HOST[:PORT]`` (``USER@[v6]:PORT``) as SSH host settings."""
    user, at, rest = spec.rpartition("@")
    if not at or not user or not rest:
        raise UsageError(f"--ssh {spec}: expected USER@HOST[:PORT]")
    host, port = rest, 22
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail:
            if not tail.startswith(":") or not tail[1:].isdigit():
                raise UsageError(f"--ssh {spec}: expected USER@[ADDRESS]:PORT")
            port = int(tail[1:])
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        if not port_text.isdigit():
            raise UsageError(f"--ssh {spec}: port {port_text!r} is not a number")
        port = int(port_text)
    return {"host": host, "port": port, "user": user}


def ssh_settings(args: argparse.Namespace, cfg: AgentConfig) -> SshSourceConfig:
    settings = cfg.sources.ssh
    overrides: dict[str, object] = {}
    if args.ssh:
        hosts = []
        for spec in args.ssh:
            host = parse_ssh_target(spec)
            if args.ssh_key:
                host["key_file"] = args.ssh_key
            hosts.append(host)
        overrides["hosts"] = hosts
    elif args.ssh_key:
        overrides["hosts"] = [{**h.model_dump(), "key_file": args.ssh_key} for h in settings.hosts]
    if args.known_hosts:
        overrides["known_hosts"] = args.known_hosts
    return revalidate(settings, overrides, "--ssh options")


def collabos_settings(args: argparse.Namespace, cfg: AgentConfig) -> CollabosSourceConfig:
    settings = cfg.sources.collabos
    overrides: dict[str, object] = {}
    if args.collabos:
        overrides["hosts"] = list(args.collabos)
    for flag, key in (
        ("collabos_user", "user"),
        ("collabos_password_file", "password_file"),
        ("collabos_ca_file", "ca_file"),
    ):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    return revalidate(settings, overrides, "--collabos options")


def source_settings(name: str, args: argparse.Namespace, cfg: AgentConfig) -> SourceConfig:
    """Source ``name``'s settings: the configuration's, with the command line's flags."""
    if name == "usb":
        return usb_settings(args, cfg)
    if name == "snmp":
        return snmp_settings(args, cfg)
    if name == "mdns":
        return mdns_settings(args, cfg)
    if name == "ssh":
        return ssh_settings(args, cfg)
    if name == "collabos":
        return collabos_settings(args, cfg)
    raise KeyError(name)


def named_sources(args: argparse.Namespace) -> dict[str, bool]:
    """Which sources the command line's source flags name."""
    return {
        "usb": bool(args.usb or args.sysfs_root is not None),
        "mdns": bool(args.mdns or args.mdns_type or args.mdns_interface or args.mdns_timeout),
        "snmp": bool(args.snmp),
        "ssh": bool(args.ssh),
        "collabos": bool(args.collabos),
    }


def wanted_sources(args: argparse.Namespace, cfg: AgentConfig) -> list[str]:
    """For a one-shot scan: the sources the command line names, exactly those. Else the
    configuration's (what runs when ``enabled`` is unset is the registry's)."""
    from agent.discovery import SOURCES, runs

    named = named_sources(args)
    if any(named.values()):
        return [name for name, on in named.items() if on]
    if args.replay:
        return []  # a replay stands alone unless --usb / --sysfs-root is asked for too
    return [name for name in SOURCES if runs(name, getattr(cfg.sources, name).enabled, daemon=False)]


class SweepProgress:
    """``addresses done / total, responders so far`` on one terminal line (stderr), for
    sweeps that take more than a second; nothing when stderr is not a terminal."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._clock = time.monotonic
        self.started = self._clock()
        self._last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int, responders: int) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if now - self.started < 1.0 or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        self.stream.write(f"\r{self.label}: {done}/{total} addresses, {responders} answered ")
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
