"""The ``roomsync`` command line (also ``python -m agent``).

Exit status, for every command: 0 success; 1 the command ran but something failed (a source,
a target); 2 invalid usage or configuration (nothing was done); 130 interrupted.

Heavy libraries are imported inside the commands, so ``roomsync --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from agent import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad arguments or configuration: reported in one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomsync",
        description="Inventory Logitech meeting-room hardware: serials, firmware, health, coverage.",
        epilog="Exit status: 0 ok, 1 something failed, 2 invalid usage or configuration.",
    )
    parser.add_argument("--version", action="version", version=f"roomsync {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help="configuration file (default: $ROOMSYNC_CONFIG or /etc/roomsync/agent.toml)")
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress to stderr (-vv for debug)")
    common.add_argument("--log-format", choices=("auto", "json", "console"),
                        help="log format (default: from config, else auto)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    scan = sub.add_parser(
        "scan", parents=[common], help="run the enabled sources once and print the devices found",
        description="Run the enabled sources once and print the devices found. With no "
                    "configuration file, scans this host's USB.")
    scan.add_argument("--json", action="store_true", help="print JSON: {devices: [...], errors: [...]}")
    scan.add_argument("--usb", action="store_true", help="only the USB source")
    scan.add_argument("--sysfs-root", metavar="PATH",
                      help="read a captured sysfs tree instead of /sys (implies USB)")
    scan.add_argument("--all-usb", action="store_true",
                      help="also list USB devices that are not Logitech's")
    scan.add_argument("--replay", metavar="CAPTURE.json", action="append",
                      help="scan a device simulated from a recorded USB session (fwupd "
                           "emulation JSON) instead of live sources; repeatable")
    scan.add_argument("--no-libusb", action="store_true",
                      help="do not open devices through libusb for strings sysfs lacks")
    scan.add_argument("--timeout", type=float, default=120.0, metavar="S",
                      help="give up on a source after S seconds (default 120)")
    scan.add_argument("--state-dir", metavar="DIR",
                      help="where the inventory is stored (default: config state_dir, "
                           "$STATE_DIRECTORY, else ~/.local/state/roomsync)")
    scan.add_argument("--no-store", action="store_true", help="do not store what the scan found")
    scan.add_argument("--all", action="store_true",
                      help="also list LAN responders the catalog does not know ('other')")
    lan = scan.add_argument_group(
        "LAN sources", "Any of these runs exactly the sources named on the command line "
        "(with --usb, USB too) instead of the ones enabled in the configuration; the other "
        "settings come from the configuration.")
    lan.add_argument("--snmp", metavar="TARGET", action="append",
                     help="sweep an address, HOST:PORT or CIDR range with SNMP; repeatable")
    lan.add_argument("--snmp-port", type=int, metavar="PORT", help="port of targets that name none")
    lan.add_argument("--community", metavar="NAME",
                     help="SNMPv2c community (visible in the process list: for tests; use "
                          "community_file in the configuration in production)")
    lan.add_argument("--snmp-timeout", type=float, metavar="S", help="seconds per SNMP request")
    lan.add_argument("--snmp-retries", type=int, metavar="N", help="SNMP retries per request")
    lan.add_argument("--concurrency", type=int, metavar="N", help="SNMP requests in flight")
    lan.add_argument("--mdns", action="store_true", help="browse mDNS (DNS-SD) services")
    lan.add_argument("--mdns-type", metavar="TYPE", action="append",
                     help="also browse this service type (e.g. _ipp._tcp.local.); repeatable")
    lan.add_argument("--mdns-interface", metavar="ADDR", action="append",
                     help="browse only on the interface with this address; repeatable")
    lan.add_argument("--mdns-timeout", type=float, metavar="S", help="seconds to browse")
    lan.add_argument("--ssh", metavar="USER@HOST[:PORT]", action="append",
                     help="read a room PC over SSH (host key verified); repeatable")
    lan.add_argument("--ssh-key", metavar="FILE", help="private key for --ssh hosts")
    lan.add_argument("--known-hosts", metavar="FILE", help="known_hosts file for SSH host keys")
    scan.set_defaults(func=cmd_scan)

    check = sub.add_parser(
        "check-config", parents=[common],
        help="validate the configuration and print it with secrets masked",
        description="Validate the configuration (file and ROOMSYNC_* environment) and print "
                    "the effective configuration with secrets masked.")
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"roomsync: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("roomsync: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (roomsync scan | head): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


# --------------------------------------------------------------------------- helpers


def _load(args: argparse.Namespace) -> Any:
    from agent.config import ConfigError, load_config
    from agent.log import configure

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        raise UsageError("invalid configuration:\n  " + "\n  ".join(exc.problems)) from None
    cfg = loaded.config
    # A one-shot command prints its result, not its progress, unless asked (-v, -vv).
    level = {0: "warning", 1: "info"}.get(args.verbose, "debug")
    configure(level, args.log_format or cfg.log.format)
    return loaded


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- scan


def _revalidate(settings: Any, overrides: dict[str, Any], flags: str) -> Any:
    """``settings`` with command-line ``overrides``, validated like the configuration."""
    from pydantic import ValidationError

    if not overrides:
        return settings
    try:
        return type(settings).model_validate({**settings.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"{flags}: {problems}") from None


def _usb_settings(args: argparse.Namespace, cfg: Any) -> Any:
    overrides: dict[str, Any] = {}
    if args.sysfs_root is not None:
        if not os.path.isdir(args.sysfs_root):
            raise UsageError(f"--sysfs-root {args.sysfs_root}: no such directory")
        overrides["sysfs_root"] = args.sysfs_root
    if args.all_usb:
        overrides["all_usb"] = True
    if args.no_libusb:
        overrides["libusb_strings"] = False
    return _revalidate(cfg.sources.usb, overrides, "--sysfs-root")


def _snmp_settings(args: argparse.Namespace, cfg: Any) -> Any:
    overrides: dict[str, Any] = {}
    for flag, key in (("snmp", "targets"), ("snmp_port", "port"), ("snmp_timeout", "timeout"),
                      ("snmp_retries", "retries"), ("concurrency", "concurrency")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.community is not None:
        overrides.update(community=args.community, community_file=None, version="2c")
    return _revalidate(cfg.sources.snmp, overrides, "--snmp options")


def _mdns_settings(args: argparse.Namespace, cfg: Any) -> Any:
    settings = cfg.sources.mdns
    overrides: dict[str, Any] = {}
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
    return _revalidate(settings, overrides, "--mdns options")


def parse_ssh_target(spec: str) -> dict[str, Any]:
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


def _ssh_settings(args: argparse.Namespace, cfg: Any) -> Any:
    settings = cfg.sources.ssh
    overrides: dict[str, Any] = {}
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
    return _revalidate(settings, overrides, "--ssh options")


def _wanted_sources(args: argparse.Namespace, cfg: Any) -> list[str]:
    """The command line names sources: exactly those. Else the configuration's."""
    named = {
        "usb": args.usb or args.sysfs_root is not None,
        "mdns": bool(args.mdns or args.mdns_type or args.mdns_interface or args.mdns_timeout),
        "snmp": bool(args.snmp),
        "ssh": bool(args.ssh),
    }
    if any(named.values()):
        return [name for name, on in named.items() if on]
    if args.replay:
        return []  # a replay stands alone unless --usb / --sysfs-root is asked for too
    return [name for name in ("usb", "mdns", "snmp", "ssh") if getattr(cfg.sources, name).enabled]


class _SweepProgress:
    """``addresses done / total, responders so far`` on one terminal line (stderr), for
    sweeps that take more than a second; nothing when stderr is not a terminal."""

    def __init__(self, label: str, stream: Any = None) -> None:
        import time

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


def cmd_scan(args: argparse.Namespace) -> int:
    loaded = _load(args)
    cfg = loaded.config
    from datetime import UTC, datetime

    from agent.catalog import load_catalog
    from agent.discovery import source_class
    from agent.model import Room
    from agent.scan import scan_once

    settings_for = {"usb": _usb_settings, "snmp": _snmp_settings, "mdns": _mdns_settings,
                    "ssh": _ssh_settings}
    usb_settings = _usb_settings(args, cfg)
    sources = []
    progress: list[_SweepProgress] = []
    wanted = _wanted_sources(args, cfg)
    settings = {name: settings_for[name](args, cfg) for name in wanted}  # usage errors first
    for name in wanted:
        source = source_class(name).from_config(settings[name])
        if name == "snmp":
            bar = _SweepProgress("SNMP sweep")
            source.progress = bar
            progress.append(bar)
        sources.append(source)

    for capture in args.replay or ():
        if not os.path.isfile(capture):
            raise UsageError(f"--replay {capture}: no such file")
        from agent.discovery.usb_replay import ReplayUsbSource

        sources.append(ReplayUsbSource(capture, sync_deadline=usb_settings.sync_deadline))

    room = Room(**cfg.room.model_dump()) if cfg.room else None
    now = datetime.now(UTC)
    try:
        report = scan_once(sources, load_catalog(), now, room, timeout=args.timeout)
    finally:
        for bar in progress:
            bar.finish()
    if not sources:
        report.messages.append("no source is enabled in the configuration (see [sources.*]); "
                               "--usb scans this host's USB anyway")
    elif not args.no_store:
        _store_scan(args, cfg, report, room, now)

    if args.json:
        _print_json({
            "generated_at": now.isoformat(),
            "agent": {"version": __version__, "hostname": os.uname().nodename},
            "room": room.to_dict() if room else None,
            "devices": [d.to_dict() for d in report.devices],
            "errors": [e.to_dict() for e in report.errors],
            "messages": report.messages,
            "sources": [{"name": r.name, "seconds": round(r.seconds, 6), "success": r.success}
                        for r in report.runs],
        })
    else:
        _print_scan_table(report, show_other=args.all)
    return EXIT_FAILED if report.errors else EXIT_OK


def _store_scan(args: argparse.Namespace, cfg: Any, report: Any, room: Any, now: Any) -> None:
    """Keep what the scan found; a store failure is one error, the results still print."""
    from agent.config import resolve_state_dir
    from agent.model import ScanError
    from agent.store import Store, StoreError

    state_dir = resolve_state_dir(cfg, args.state_dir)
    try:
        with Store.open(state_dir) as store:
            store.record_scan(report.devices, [room] if room else [], now, len(report.errors))
    except StoreError as exc:
        report.errors.append(ScanError("store", str(state_dir), str(exc)))


def _is_hidden_other(device: Any) -> bool:
    """An unknown LAN responder: listed in JSON always, in the table with --all."""
    return bool(device.category == "other" and str(device.transport) != "usb")


def _product_label(device: Any) -> str:
    if device.category != "other" or str(device.transport) == "usb":
        return str(device.product)
    description = str(device.attributes.get("description") or "")
    if len(description) > 40:
        description = description[:39] + "…"
    label = f"other: {device.vendor or 'unknown vendor'}"
    return f"{label} ({description})" if description else label


def _print_scan_table(report: Any, *, show_other: bool = False) -> None:
    for message in report.messages:
        print(message)
    devices = [d for d in report.devices if show_other or not _is_hidden_other(d)]
    hidden = len(report.devices) - len(devices)
    if devices:
        rows: list[list[str]] = []
        weak_serial = False

        def add_row(d: Any, depth: int) -> None:
            nonlocal weak_serial
            serial = d.serial or "-"
            if d.serial and not d.serial_label_grade:
                serial += "*"
                weak_serial = True
            usb_id = f"{d.vendor_id:04x}:{d.product_id:04x}" if d.vendor_id is not None else "-"
            rows.append([
                "  " * depth + ("└ " if depth else "") + _product_label(d), d.model or "-", serial,
                d.firmware or "-", str(d.transport) if not depth else "",
                d.address if not depth else "", usb_id if not depth else "",
                (d.room or "-") if not depth else "", str(d.health),
            ])
            for child in d.children:  # a bar's Sight, mic pods, remote
                add_row(child, depth + 1)

        for d in devices:
            add_row(d, 0)
        print(_table(["PRODUCT", "MODEL", "SERIAL", "FIRMWARE", "TRANSPORT", "ADDRESS", "USB ID",
                      "ROOM", "HEALTH"], rows))
        if weak_serial:
            print("* serial is not label-grade (e.g. the USB chip's serial): check the label")
        for d in devices:
            for unit in (d, *d.children):
                for issue in unit.health_issues:
                    if str(issue.severity) != "info":
                        print(f"{unit.product} at {d.address}: {issue.message}")
    elif not report.errors and not hidden:
        print("no devices found")
    if hidden:
        print(f"{hidden} other responder{'s' if hidden != 1 else ''} the catalog does not know "
              "(not Logitech room hardware): --all lists them")
    for err in report.errors:
        print(f"error: {err.source}: {err.target}: {err.message}", file=sys.stderr)


# --------------------------------------------------------------------------- check-config


def cmd_check_config(args: argparse.Namespace) -> int:
    loaded = _load(args)
    from agent.config import effective_config

    data = effective_config(loaded.config)
    if args.json:
        _print_json({
            "file": str(loaded.path) if loaded.path else None,
            "env_overrides": list(loaded.env_overrides),
            "config": data,
        })
        return EXIT_OK
    import tomli_w

    if loaded.path:
        print(f"# configuration file: {loaded.path} (valid)")
    else:
        print(f"# {loaded.requested} not found: built-in defaults")
    for name in loaded.env_overrides:
        print(f"# overridden by environment: {name}")
    print("# secrets are masked\n")
    sys.stdout.write(tomli_w.dumps(data))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
