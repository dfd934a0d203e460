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
    common.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: $ROOMSYNC_CONFIG, else "
        "$CONFIGURATION_DIRECTORY/agent.toml under systemd, else "
        "/etc/roomsync/agent.toml)",
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=0, help="log progress to stderr (-vv for debug)"
    )
    common.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        help="log format (default: from config, else auto)",
    )
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the agent's state directory (default: config state_dir, "
        "$STATE_DIRECTORY, /var/lib/roomsync under systemd, else "
        "~/.local/state/roomsync: pass --state-dir /var/lib/roomsync to read "
        "the service's store by hand)",
    )
    rooms = argparse.ArgumentParser(add_help=False)
    rooms.add_argument(
        "--room-map",
        metavar="FILE",
        help="CSV placing LAN devices in rooms, with room names and locations "
        "(default: the configuration's room_map)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sources = argparse.ArgumentParser(add_help=False)
    sources.add_argument("--usb", action="store_true", help="only the USB source")
    sources.add_argument(
        "--sysfs-root", metavar="PATH", help="read a captured sysfs tree instead of /sys (implies USB)"
    )
    sources.add_argument(
        "--all-usb", action="store_true", help="also list USB devices that are not Logitech's"
    )
    sources.add_argument(
        "--no-libusb", action="store_true", help="do not open devices through libusb for strings sysfs lacks"
    )
    lan = sources.add_argument_group(
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
    lan.add_argument("--snmp-timeout", type=float, metavar="S", help="seconds per SNMP request")
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
    lan.add_argument("--mdns-timeout", type=float, metavar="S", help="seconds to browse")
    lan.add_argument(
        "--ssh",
        metavar="USER@HOST[:PORT]",
        action="append",
        help="read a room PC over SSH (host key verified); repeatable",
    )
    lan.add_argument("--ssh-key", metavar="FILE", help="private key for --ssh hosts")
    lan.add_argument("--known-hosts", metavar="FILE", help="known_hosts file for SSH host keys")

    scan = sub.add_parser(
        "scan",
        parents=[common, state, rooms, sources],
        help="run the enabled sources once and print the devices found",
        description="Run the enabled sources once and print the devices found. With no "
        "configuration file, scans this host's USB.",
    )
    scan.add_argument("--json", action="store_true", help="print JSON: {devices: [...], errors: [...]}")
    scan.add_argument(
        "--replay",
        metavar="CAPTURE.json",
        action="append",
        help="scan a device simulated from a recorded USB session (fwupd "
        "emulation JSON) instead of live sources; repeatable",
    )
    scan.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="give up on a source after S seconds (default 120)",
    )
    scan.add_argument("--no-store", action="store_true", help="do not store what the scan found")
    scan.add_argument(
        "--all", action="store_true", help="also list LAN responders the catalog does not know ('other')"
    )
    scan.set_defaults(func=cmd_scan)

    inventory = sub.add_parser(
        "inventory",
        parents=[common, state, rooms],
        help="print the stored inventory (what the scans found)",
        description="Print every unit in the agent's state: what the scans stored, with rooms, "
        "primary units and ticket serials. Reads the store; scans nothing.",
    )
    inventory.add_argument("--json", action="store_true", help="print JSON")
    inventory.add_argument(
        "--removed", action="store_true", help="list the units that left the inventory instead"
    )
    inventory.add_argument("--all", action="store_true", help="also list units the catalog does not know")
    inventory.set_defaults(func=cmd_inventory)

    events = sub.add_parser(
        "events",
        parents=[common, state],
        help="print the change events of past scans",
        description="Print the change events the scans produced (device.added, device.removed, "
        "device.moved, firmware.changed, health.changed, serial.conflict), oldest first.",
    )
    events.add_argument(
        "--since",
        metavar="TIME",
        help="only events at or after TIME (YYYY-MM-DD or RFC 3339; UTC if no offset)",
    )
    events.add_argument(
        "--limit",
        type=int,
        default=1000,
        metavar="N",
        help="at most the newest N events (default 1000; 0 = all)",
    )
    events.add_argument("--json", action="store_true", help="print JSON")
    events.set_defaults(func=cmd_events)

    coverage = sub.add_parser(
        "coverage",
        parents=[common, state, rooms],
        help="warranty, extended warranty, SELECT and reseller coverage of every unit",
        description="Evaluate the coverage of every serial in the entitlements file and every "
        "unit in the agent's state (what the scans stored), with the rule ids of "
        "domain.md behind each verdict. Most urgent first.",
    )
    coverage.add_argument(
        "--entitlements",
        metavar="FILE",
        help="purchase and contract records (CSV; config/entitlements.example.csv; "
        "default: [coverage] entitlements)",
    )
    coverage.add_argument("--today", metavar="YYYY-MM-DD", help="evaluate as of this day (default: today)")
    coverage.add_argument(
        "--expiring-days",
        type=int,
        metavar="N",
        help="'expiring_soon' when coverage ends within N days (default: [coverage] expiring_days, 90)",
    )
    coverage.add_argument(
        "--summary",
        action="store_true",
        help="site summary: rooms, units, counts per status, SELECT spares and "
        "service manager (S10, S11), enterprise tier (S3)",
    )
    coverage.add_argument("--json", action="store_true", help="print JSON")
    coverage.set_defaults(func=cmd_coverage)

    portal = argparse.ArgumentParser(add_help=False)
    portal.add_argument("--portal-url", metavar="URL", help="the portal's base URL (default: [portal] url)")
    portal.add_argument(
        "--token-file",
        metavar="FILE",
        help="file (or systemd credential name) holding the bearer token (default: [portal] token_file)",
    )
    portal.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify the portal with")
    portal.add_argument("--client-cert", metavar="FILE", help="client certificate (mTLS); with --client-key")
    portal.add_argument("--client-key", metavar="FILE", help="the client certificate's key")

    push = sub.add_parser(
        "push",
        parents=[common, state, rooms, portal],
        help="deliver the outbox (snapshots and change events) to the portal",
        description="Deliver everything the outbox holds to the licensing portal, oldest first, "
        "retrying transient failures (network, 408, 429, 5xx) with backoff until "
        "the deadline. Exit 0 only when the outbox is empty afterwards. The daemon "
        "(roomsync run) delivers continuously; push is the one-shot form.",
    )
    push.add_argument(
        "--once",
        action="store_true",
        help="deliver what is pending and exit (what push always does; the flag "
        "is accepted for scripts that spell it out)",
    )
    push.add_argument(
        "--deadline", type=float, default=60.0, metavar="S", help="stop retrying after S seconds (default 60)"
    )
    push.add_argument(
        "--retry-parked",
        action="store_true",
        help="first put parked messages (refused with a 4xx) back in the queue",
    )
    push.add_argument("--json", action="store_true", help="print the result as JSON")
    push.set_defaults(func=cmd_push)

    run = sub.add_parser(
        "run",
        parents=[common, state, rooms, sources, portal],
        help="run the agent as a daemon (systemd service): scan on schedules, push, serve the API",
        description="Run the agent until stopped: each source on its own schedule (USB also on "
        "hot-plug), the store, delivery to the portal when one is configured, and "
        "the local API (/healthz, /readyz, /v1/status, /v1/inventory, /v1/rooms, "
        "/v1/coverage, /v1/events, /metrics). systemd notify protocol; SIGTERM stops, "
        "SIGHUP reloads the configuration.",
    )
    run.add_argument(
        "--listen",
        metavar="ADDR:PORT",
        help="the API's address (default: [api] listen, 127.0.0.1:8765; unix:/path)",
    )
    run.add_argument(
        "--replay",
        metavar="CAPTURE.json",
        action="append",
        help="also run a device simulated from a recorded USB session (fwupd "
        "emulation JSON) as a unit on this host's USB, in [room], every "
        "[sources.usb] interval, beside the configured sources (source "
        "'replay'; nothing on live USB is touched); repeatable",
    )
    run.set_defaults(func=cmd_run)

    health = sub.add_parser(
        "health",
        parents=[common],
        help="ask the running daemon how it is (a monitoring check)",
        description="Ask the running daemon's API for its status. Exit 0 healthy, 1 degraded "
        "(one line per problem), 2 down or unreachable.",
    )
    health.add_argument(
        "--url",
        metavar="URL",
        help="the API's base URL (default: from [api] listen, http://127.0.0.1:8765; "
        "unix:/path for a socket)",
    )
    health.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait (default 5)")
    health.add_argument("--json", action="store_true", help="print the daemon's status as JSON")
    health.set_defaults(func=cmd_health)

    outbox = sub.add_parser(
        "outbox",
        parents=[common, state],
        help="show what waits for the portal (queued, parked, dropped) and the portal's state",
        description="Show the outbox: queued and parked messages, events not yet queued, what "
        "the bound dropped, and what the last delivery attempts said of the portal.",
    )
    outbox.add_argument("--json", action="store_true", help="print JSON")
    outbox.set_defaults(func=cmd_outbox)

    export = sub.add_parser(
        "export",
        parents=[common, state, rooms],
        help="write the inventory for other systems",
        description="Write the stored inventory in a format other systems read. "
        "service-portal-csv: one row per key device per room, for customers who "
        "upload rooms to Logitech's Service Portal by hand (S14). json: the "
        "snapshot roomsync push would send now.",
    )
    export.add_argument(
        "--format",
        required=True,
        choices=("service-portal-csv", "json"),
        help="service-portal-csv, or json: the inventory snapshot roomsync push "
        "would send now (roomsync.inventory.v1, docs/portal-api.md)",
    )
    export.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    export.set_defaults(func=cmd_export)

    check = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration and print it with secrets masked",
        description="Validate the configuration (file and ROOMSYNC_* environment) and print "
        "the effective configuration with secrets masked.",
    )
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


def _room_map(args: argparse.Namespace, cfg: Any) -> Any:
    """The room map named by --room-map or the configuration; None when there is none."""
    path = args.room_map or cfg.room_map
    if path is None:
        return None
    from agent.roommap import RoomMapError, load_room_map

    try:
        return load_room_map(path)
    except RoomMapError as exc:
        raise UsageError("room map refused:\n  " + "\n  ".join(exc.problems)) from None


def _configured_rooms(args: argparse.Namespace, cfg: Any) -> list[Any]:
    """The rooms the configuration and the room map name."""
    from agent.inventory import known_rooms

    return known_rooms(_config_room(cfg), _room_map(args, cfg))


def _rooms_report(args: argparse.Namespace, cfg: Any, devices: list[Any], stored_rooms: list[Any]) -> Any:
    """The stored devices summarised by room: the stored rooms and the configured ones."""
    from agent.catalog import load_catalog
    from agent.inventory import merge_rooms, summarize_rooms

    return summarize_rooms(devices, load_catalog(), merge_rooms(stored_rooms, _configured_rooms(args, cfg)))


def _stored_inventory(args: argparse.Namespace, cfg: Any) -> tuple[list[Any], list[Any]]:
    """(devices, rooms) from the store; empty, with a message, when nothing was stored yet."""
    from agent.store import StoreError

    store = _open_store(args, cfg)
    if store is None:
        return [], []
    try:
        with store:
            return store.devices(), store.rooms()
    except StoreError as exc:
        raise UsageError(str(exc)) from None


def _config_room(cfg: Any) -> Any:
    from agent.model import Room

    return Room(**cfg.room.model_dump()) if cfg.room else None


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


def _source_settings(name: str, args: argparse.Namespace, cfg: Any) -> Any:
    """Source ``name``'s settings: the configuration's, with the command line's flags."""
    return {"usb": _usb_settings, "snmp": _snmp_settings, "mdns": _mdns_settings, "ssh": _ssh_settings}[name](
        args, cfg
    )


def _named_sources(args: argparse.Namespace) -> dict[str, bool]:
    """Which sources the command line's source flags name."""
    return {
        "usb": bool(args.usb or args.sysfs_root is not None),
        "mdns": bool(args.mdns or args.mdns_type or args.mdns_interface or args.mdns_timeout),
        "snmp": bool(args.snmp),
        "ssh": bool(args.ssh),
    }


def _wanted_sources(args: argparse.Namespace, cfg: Any) -> list[str]:
    """The command line names sources: exactly those. Else the configuration's."""
    named = _named_sources(args)
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

    usb_settings = _usb_settings(args, cfg)
    sources = []
    progress: list[_SweepProgress] = []
    wanted = _wanted_sources(args, cfg)
    settings = {name: _source_settings(name, args, cfg) for name in wanted}  # usage errors first
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
    room_map = _room_map(args, cfg)
    now = datetime.now(UTC)
    catalog = load_catalog()
    try:
        report = scan_once(sources, catalog, now, room, timeout=args.timeout, room_map=room_map)
    finally:
        for bar in progress:
            bar.finish()
    if not sources:
        report.messages.append(
            "no source is enabled in the configuration (see [sources.*]); --usb scans this host's USB anyway"
        )
    from agent.inventory import known_rooms, summarize_rooms

    rooms = known_rooms(room, room_map)
    summary = summarize_rooms(report.devices, catalog, rooms)
    events = _store_scan(args, cfg, report, rooms, now) if sources and not args.no_store else []

    if args.json:
        _print_json(
            {
                "generated_at": now.isoformat(),
                "agent": {"version": __version__, "hostname": os.uname().nodename},
                "room": room.to_dict() if room else None,
                "devices": [d.to_dict() for d in report.devices],
                "rooms": [r.to_dict() for r in summary.rooms],
                "unassigned": [d.identity for d in summary.unassigned],
                "events": [e.to_dict() for e in events],
                "errors": [e.to_dict() for e in report.errors],
                "messages": report.messages,
                "sources": [
                    {"name": r.name, "seconds": round(r.seconds, 6), "success": r.success}
                    for r in report.runs
                ],
            }
        )
    else:
        _print_scan_table(report, show_other=args.all)
        _print_room_lines(summary)
        if events:
            print()
            _print_events(events)
    return EXIT_FAILED if report.errors else EXIT_OK


def _event_change(event: Any) -> str:
    """What changed, in a few words: ``room a → b``, ``firmware 1.9 → 1.10``…"""
    before, after = event.before or {}, event.after or {}
    keys = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if str(event.type) in ("device.added", "device.removed") or not keys:
        return ""
    return "; ".join(
        f"{k} {before.get(k) if before.get(k) is not None else '-'} → "
        f"{after.get(k) if after.get(k) is not None else '-'}"
        for k in keys[:3]
    )


def _print_events(events: list[Any]) -> None:
    print(
        _table(
            ["AT", "EVENT", "PRODUCT", "SERIAL", "ROOM", "CHANGE"],
            [
                [
                    e.at.isoformat(timespec="seconds"),
                    str(e.type),
                    e.product or "-",
                    e.serial or "-",
                    e.room or "-",
                    _event_change(e),
                ]
                for e in events
            ],
        )
    )


def _print_room_lines(summary: Any) -> None:
    """One line per room that holds something: its primary unit and the serial to quote."""
    lines = []
    for r in summary.rooms:
        if not r.devices:
            continue
        line = (
            f"room {r.room_id}: primary unit {r.primary_product or '-'} {r.primary_unit or '-'}, "
            f"ticket serial {r.ticket_serial or '-'}"
        )
        if r.flags:
            line += f" [{', '.join(r.flags)}]"
        lines.append(line)
    if lines:
        print()
        print("\n".join(lines))


def _store_scan(args: argparse.Namespace, cfg: Any, report: Any, rooms: Any, now: Any) -> list[Any]:
    """Keep what the scan found and return the change events it produced; a store failure is
    one error, and the results still print."""
    from agent.config import resolve_state_dir
    from agent.model import ScanError
    from agent.store import Retention, Store, StoreError

    state_dir = resolve_state_dir(cfg, args.state_dir)
    settings = cfg.store
    try:
        with Store.open(state_dir) as store:
            record = store.record_scan(
                report.devices,
                rooms,
                now,
                len(report.errors),
                # Only sources that ran to the end can tell that a unit is gone.
                sources_run={r.name for r in report.runs if r.success},
                remove_after=settings.remove_after_missed_scans,
                retention=Retention(settings.history_days, settings.history_scans, settings.events_days),
            )
            try:
                context = _snapshot_context(cfg, rooms)
            except UsageError as exc:
                report.errors.append(
                    ScanError("outbox", str(state_dir), f"{exc}; no snapshot queued (the change events are)")
                )
            else:
                from agent.uploader.snapshot import queue_snapshot

                queue_snapshot(_outbox(store, cfg), store, context, now)
            return list(record.events)
    except StoreError as exc:
        report.errors.append(ScanError("store", str(state_dir), str(exc)))
        return []


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
            rows.append(
                [
                    "  " * depth + ("└ " if depth else "") + _product_label(d),
                    d.model or "-",
                    serial,
                    d.firmware or "-",
                    str(d.transport) if not depth else "",
                    d.address if not depth else "",
                    usb_id if not depth else "",
                    (d.room or "-") if not depth else "",
                    str(d.health),
                ]
            )
            for child in d.children:  # a bar's Sight, mic pods, remote
                add_row(child, depth + 1)

        for d in devices:
            add_row(d, 0)
        print(
            _table(
                [
                    "PRODUCT",
                    "MODEL",
                    "SERIAL",
                    "FIRMWARE",
                    "TRANSPORT",
                    "ADDRESS",
                    "USB ID",
                    "ROOM",
                    "HEALTH",
                ],
                rows,
            )
        )
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
        print(
            f"{hidden} other responder{'s' if hidden != 1 else ''} the catalog does not know "
            "(not Logitech room hardware): --all lists them"
        )
    for err in report.errors:
        print(f"error: {err.source}: {err.target}: {err.message}", file=sys.stderr)


# --------------------------------------------------------------------------- inventory, events


def _open_store(args: argparse.Namespace, cfg: Any) -> Any:
    """The store, or None when no scan was stored yet (a message says so)."""
    from agent.config import resolve_state_dir
    from agent.store import DB_NAME, Store, StoreError

    state_dir = resolve_state_dir(cfg, args.state_dir)
    if not (state_dir / DB_NAME).exists():
        print(f"roomsync: no inventory stored in {state_dir} yet: run roomsync scan first", file=sys.stderr)
        return None
    try:
        return Store.open(state_dir)
    except StoreError as exc:
        raise UsageError(str(exc)) from None


def cmd_inventory(args: argparse.Namespace) -> int:
    loaded = _load(args)
    cfg = loaded.config
    from agent.scan import ScanReport
    from agent.store import StoreError

    store = _open_store(args, cfg)
    devices: list[Any] = []
    stored_rooms: list[Any] = []
    last_scan = None
    if store is not None:
        try:
            with store:
                devices = store.devices(removed=args.removed)
                stored_rooms = store.rooms()
                last_scan = store.last_scan()
        except StoreError as exc:
            raise UsageError(str(exc)) from None
    summary = _rooms_report(args, cfg, devices, stored_rooms)
    if args.json:
        _print_json(
            {
                "last_scan": last_scan.isoformat() if last_scan else None,
                "removed": args.removed,
                "devices": [d.to_dict() for d in devices],
                "rooms": [r.to_dict() for r in summary.rooms],
                "unassigned": [d.identity for d in summary.unassigned],
            }
        )
        return EXIT_OK
    if last_scan is not None:
        print(
            f"last scan {last_scan.isoformat(timespec='seconds')}"
            + (": units that left the inventory" if args.removed else "")
        )
    _print_scan_table(ScanReport(devices=devices), show_other=args.all)
    if not args.removed:
        _print_room_lines(summary)
    return EXIT_OK


def _parse_time(text: str) -> Any:
    from datetime import UTC, datetime

    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text}: expected YYYY-MM-DD or an RFC 3339 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_events(args: argparse.Namespace) -> int:
    loaded = _load(args)
    cfg = loaded.config
    from agent.store import StoreError

    since = _parse_time(args.since) if args.since else None
    if args.limit < 0:
        raise UsageError("--limit must be 0 or more")
    store = _open_store(args, cfg)
    found: list[Any] = []
    if store is not None:
        try:
            with store:
                found = store.events(since, limit=args.limit or None)
        except StoreError as exc:
            raise UsageError(str(exc)) from None
    if args.json:
        _print_json([e.to_dict() for e in found])
    elif found:
        _print_events(found)
    elif store is not None:
        print("no events" + (f" since {since.isoformat()}" if since else ""))
    return EXIT_OK


# --------------------------------------------------------------------------- coverage


def _parse_day(text: str | None, flag: str) -> Any:
    from datetime import date

    if text is None:
        return date.today()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text}: expected a date as YYYY-MM-DD") from None


def _coverage_units(devices: list[Any], entitlements: Any) -> list[tuple[str, str | None, str | None]]:
    """(serial, product, room) of every unit in the state (children too) with a serial, then
    every serial of the entitlements file the state does not hold; each serial once."""
    from agent.sanitize import normalize_serial

    units: dict[str, tuple[str, str | None, str | None]] = {}

    def add(device: Any) -> None:
        if device.serial:
            key = normalize_serial(device.serial)
            units.setdefault(key, (device.serial, device.product, device.room))
        for child in device.children:
            add(child)

    for device in devices:
        add(device)
    for key, record in entitlements.items():
        units.setdefault(key, (record.serial, None, None))
    return list(units.values())


def cmd_coverage(args: argparse.Namespace) -> int:
    loaded = _load(args)
    cfg = loaded.config
    from agent.catalog import load_catalog
    from agent.coverage import evaluate_all, urgency_key
    from agent.entitlements import EntitlementsError, load_entitlements

    today = _parse_day(args.today, "--today")
    if args.expiring_days is None:
        args.expiring_days = cfg.coverage.expiring_days
    if args.expiring_days < 0:
        raise UsageError("--expiring-days must be 0 or more")
    path = args.entitlements or cfg.coverage.entitlements
    if path is None:
        raise UsageError("no entitlements file: pass --entitlements FILE or set [coverage] entitlements")
    try:
        entitlements = load_entitlements(path)
    except EntitlementsError as exc:
        raise UsageError("entitlements refused, nothing imported:\n  " + "\n  ".join(exc.problems)) from None
    except OSError as exc:
        raise UsageError(f"--entitlements {path}: {exc.strerror or exc}") from None
    devices, stored_rooms = _stored_inventory(args, cfg)
    catalog = load_catalog()
    report = _rooms_report(args, cfg, devices, stored_rooms)
    tickets = {r.room_id: r.ticket_serial for r in report.rooms}
    units = _coverage_units(devices, entitlements)
    verdicts = evaluate_all(
        [(serial, product) for serial, product, _ in units],
        entitlements,
        catalog,
        today,
        expiring_days=args.expiring_days,
    )
    rows = sorted(zip(verdicts, units, strict=True), key=lambda pair: urgency_key(pair[0]))
    if args.summary:
        return _print_site_summary(args, cfg, rows, report, today)
    if args.json:
        _print_json(
            [
                {
                    **v.to_dict(),
                    "room": room,
                    "ticket_serial": tickets.get(room) if room else None,
                    "reason": v.reason,
                }
                for v, (_serial, _product, room) in rows
            ]
        )
        return EXIT_OK
    if not rows:
        print("no units: the entitlements file is empty and no scan has been stored yet")
        return EXIT_OK
    print(
        _table(
            ["STATUS", "COVERED UNTIL", "SERIAL", "PRODUCT", "ROOM", "REASON"],
            [
                [
                    str(v.status),
                    v.covered_until.isoformat() if v.covered_until else "-",
                    v.serial or "-",
                    product or "-",
                    room or "-",
                    v.reason,
                ]
                for v, (_serial, product, room) in rows
            ],
        )
    )
    return EXIT_OK


def _print_site_summary(args: argparse.Namespace, cfg: Any, rows: list[Any], report: Any, today: Any) -> int:
    from agent.site import summarize

    site = summarize(
        [(v, room) for v, (_s, _p, room) in rows],
        [r.room_id for r in report.rooms],
        today,
        enterprise_tier=cfg.select.enterprise_tier,
    )
    rooms = [
        {
            "room": r.room_id,
            "primary_unit": r.primary_unit,
            "ticket_serial": r.ticket_serial,
            "flags": list(r.flags),
        }
        for r in report.rooms
    ]
    if args.json:
        _print_json(
            {
                **site.to_dict(),
                "today": today.isoformat(),
                "room_summaries": rooms,
                "unassigned": len(report.unassigned),
            }
        )
        return EXIT_OK
    print(f"as of {today.isoformat()}: {site.rooms} room(s), {site.units} unit(s)")
    print("  " + ", ".join(f"{status} {count}" for status, count in site.by_status.items()))
    for note in site.notes:
        print(f"  {note}")
    if site.flags:
        print(f"  flags: {', '.join(site.flags)}")
    if report.unassigned:
        print(f"  {len(report.unassigned)} unit(s) in no room (a room map places LAN devices)")
    return EXIT_OK


# --------------------------------------------------------------------------- export

#: The Service Portal CSV's columns (S14), in order.
SERVICE_PORTAL_COLUMNS = ("room_id", "room_name", "location", "product", "model", "serial", "firmware")


def _csv_cell(value: Any) -> str:
    """A cell safe to open in a spreadsheet: text a spreadsheet would run as a formula
    (=, +, -, @, tab, CR at the start) is prefixed with a quote."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def cmd_export(args: argparse.Namespace) -> int:
    loaded = _load(args)
    cfg = loaded.config
    import csv

    if args.format == "json":
        return _export_snapshot(args, cfg)
    devices, stored_rooms = _stored_inventory(args, cfg)
    report = _rooms_report(args, cfg, devices, stored_rooms)
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(SERVICE_PORTAL_COLUMNS)
        count = 0
        for summary in report.rooms:
            room = report.directory.get(summary.room_id)
            for key in summary.key_devices:
                writer.writerow(
                    [
                        _csv_cell(v)
                        for v in (
                            summary.room_id,
                            room.name if room else None,
                            room.location if room else None,
                            key.product,
                            key.model,
                            key.serial,
                            key.firmware,
                        )
                    ]
                )
                count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    skipped = len(report.unassigned)
    if skipped:
        print(
            f"roomsync: {skipped} unit(s) in no room are not exported (a room map places LAN devices)",
            file=sys.stderr,
        )
    if args.output:
        print(f"wrote {count} key device row(s) to {args.output}", file=sys.stderr)
    return EXIT_OK


def _write_output(args: argparse.Namespace, text: str) -> None:
    if not args.output:
        sys.stdout.write(text)
        return
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise UsageError(f"--output {args.output}: {exc.strerror or exc}") from None


def _export_snapshot(args: argparse.Namespace, cfg: Any) -> int:
    from datetime import UTC, datetime

    from agent.store import StoreError
    from agent.uploader.snapshot import build_snapshot

    context = _snapshot_context(cfg, _configured_rooms(args, cfg))
    store = _open_store(args, cfg)
    if store is None:
        return EXIT_FAILED
    try:
        with store:
            outbox = _outbox(store, cfg)
            message = build_snapshot(
                store,
                context,
                outbox.agent,
                outbox.next_sequence(),
                datetime.now(UTC),
                outbox.dropped_events(),
            )
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    _write_output(args, message.model_dump_json(by_alias=True, indent=2) + "\n")
    if args.output:
        print(
            f"wrote the snapshot ({sum(len(p.devices) for p in message.places)} placed and "
            f"{len(message.unassigned)} unassigned unit(s)) to {args.output}",
            file=sys.stderr,
        )
    return EXIT_OK


# --------------------------------------------------------------------------- portal: outbox, push


def _snapshot_context(cfg: Any, rooms: Any) -> Any:
    """What a snapshot needs besides the store: catalog, the configured ``rooms``,
    entitlements."""
    from agent.catalog import load_catalog
    from agent.entitlements import EntitlementsError, load_entitlements
    from agent.uploader.snapshot import SnapshotContext

    entitlements = None
    path = cfg.coverage.entitlements
    if path is not None:
        try:
            entitlements = load_entitlements(path)
        except EntitlementsError as exc:
            problems = "\n  ".join(exc.problems)
            raise UsageError(f"[coverage] entitlements {path} refused:\n  {problems}") from None
        except OSError as exc:
            raise UsageError(f"[coverage] entitlements {path}: {exc.strerror or exc}") from None
    return SnapshotContext(load_catalog(), tuple(rooms), entitlements, cfg.coverage.expiring_days)


def _outbox(store: Any, cfg: Any) -> Any:
    from datetime import timedelta

    from agent.uploader.outbox import Outbox

    return Outbox(
        store,
        agent_id=cfg.agent_id,
        version=__version__,
        hostname=os.uname().nodename,
        max_bytes=int(cfg.portal.outbox_max_mb * 1024 * 1024),
        snapshot_interval=timedelta(hours=cfg.portal.snapshot_interval_hours),
    )


def _portal_settings(args: argparse.Namespace, cfg: Any) -> Any:
    from agent.uploader.delivery import PortalError, PortalSettings

    overrides = {
        key: value
        for key, value in (
            ("url", args.portal_url),
            ("token_file", args.token_file),
            ("ca_file", args.ca_file),
            ("client_cert", args.client_cert),
            ("client_key", args.client_key),
        )
        if value is not None
    }
    portal = _revalidate(cfg.portal, overrides, "--portal-url/--token-file/--ca-file/--client-cert")
    try:
        return PortalSettings.from_config(portal)
    except PortalError as exc:
        raise UsageError(str(exc)) from None


def cmd_push(args: argparse.Namespace) -> int:
    loaded = _load(args)
    cfg = loaded.config
    import asyncio
    import time
    from datetime import UTC, datetime

    from agent.store import StoreError
    from agent.uploader.delivery import Delivery, PortalError
    from agent.uploader.snapshot import queue_snapshot

    if args.deadline < 0:
        raise UsageError("--deadline must be 0 or more")
    settings = _portal_settings(args, cfg)
    context = _snapshot_context(cfg, _configured_rooms(args, cfg))
    store = _open_store(args, cfg)
    if store is None:
        return EXIT_OK  # nothing was ever stored: nothing to deliver
    deadline = time.monotonic() + args.deadline
    with store:
        try:
            outbox = _outbox(store, cfg)
            if args.retry_parked:
                outbox.unpark()
            now = datetime.now(UTC)
            if outbox.snapshot_due(now):
                queue_snapshot(outbox, store, context, now)
            delivery = Delivery(
                outbox,
                settings,
                user_agent=f"roomsync/{__version__}",
                snapshot=lambda: queue_snapshot(outbox, store, context, datetime.now(UTC), force=True),
            )
            result = asyncio.run(delivery.run(deadline=deadline))
            stats = outbox.stats()
        except PortalError as exc:
            raise UsageError(str(exc)) from None
        except StoreError as exc:
            print(f"roomsync: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if args.json:
        _print_json(
            {
                "result": result.stopped_because,
                "delivered": result.delivered,
                "events_delivered": result.events_delivered,
                "parked": result.parked,
                "retries": result.retries,
                "last_problem": result.last_problem,
                "outbox": stats.to_dict(),
            }
        )
    else:
        print(
            f"delivered {result.delivered} message(s) ({result.events_delivered} event(s)) to "
            f"{settings.host}; {result.retries} retr{'y' if result.retries == 1 else 'ies'}"
        )
        _print_outbox_summary(stats, result.stopped_because, result.last_problem)
    return EXIT_OK if stats.empty else EXIT_FAILED


def _print_outbox_summary(stats: Any, stopped: str | None = None, problem: str | None = None) -> None:
    reasons = {
        "paused": "delivery paused",
        "deadline": "gave up at the deadline",
        "error": "the store failed",
        "stopped": "stopped",
    }
    if stats.empty:
        print("outbox empty")
    else:
        print(
            f"outbox: {stats.pending} pending, {stats.parked} parked, {stats.events_waiting} event(s) "
            f"not yet queued ({stats.bytes} bytes)"
        )
    if stopped in reasons:
        print(f"{reasons[stopped]}: {problem}" if problem else reasons[stopped])
    if stats.parked:
        print(
            "parked messages were refused by the portal (4xx); roomsync outbox shows why, "
            "roomsync push --retry-parked sends them again"
        )
    if stats.dropped_events:
        print(
            f"the outbox bound dropped {stats.dropped_events} event(s) in {stats.dropped_messages} "
            "message(s) ([portal] outbox_max_mb)"
        )
    portal = stats.portal
    if portal.state not in ("ok", "unknown"):
        print(f"portal {portal.state}" + (f": {portal.reason}" if portal.reason else ""))


def cmd_outbox(args: argparse.Namespace) -> int:
    loaded = _load(args)
    cfg = loaded.config
    from agent.store import StoreError

    store = _open_store(args, cfg)
    if store is None:
        return EXIT_OK
    try:
        with store:
            outbox = _outbox(store, cfg)
            stats, messages = outbox.stats(), outbox.messages()
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        _print_json(
            {**stats.to_dict(), "agent_id": outbox.agent.id, "messages": [m.to_dict() for m in messages]}
        )
        return EXIT_OK
    print(f"agent id {outbox.agent.id}")
    _print_outbox_summary(stats)
    if messages:
        print()
        print(
            _table(
                ["SEQ", "KIND", "EVENTS", "BYTES", "STATE", "ATTEMPTS", "QUEUED", "LAST ERROR"],
                [
                    [
                        str(m.sequence),
                        m.kind,
                        str(m.events),
                        str(m.size),
                        m.state,
                        str(m.attempts),
                        m.created_at.isoformat(timespec="seconds"),
                        m.last_error or "-",
                    ]
                    for m in messages
                ],
            )
        )
    return EXIT_OK


# --------------------------------------------------------------------------- run, health


def _daemon_settings(args: argparse.Namespace, cfg: Any) -> Any:
    """The daemon's settings: the configuration with the command line's overrides."""
    from datetime import timedelta
    from pathlib import Path

    from agent.catalog import load_catalog
    from agent.config import resolve_state_dir
    from agent.daemon import DaemonSettings, SourcePlan
    from agent.discovery import source_class
    from agent.inventory import known_rooms
    from agent.store import Retention

    named = (
        _wanted_sources(args, cfg)
        if any(_named_sources(args).values())
        else [
            name
            for name in ("usb", "mdns", "snmp", "ssh")
            if getattr(cfg.sources, name).enabled or (name == "mdns" and cfg.sources.mdns.enabled is None)
        ]
    )
    plans = []
    sysfs_root = None
    hotplug_poll = cfg.sources.usb.hotplug_poll
    for name in named:
        settings = _source_settings(name, args, cfg)
        interval = float(settings.interval)
        timeout = min(max(interval * 0.9, 30.0), 600.0)
        plans.append(SourcePlan(name, source_class(name).from_config(settings), interval, timeout))
        if name == "usb":
            sysfs_root = Path(settings.sysfs_root)
    replays = getattr(args, "replay", None) or []
    if replays:
        from agent.discovery.usb_replay import ReplaySources

        for capture in replays:
            if not os.path.isfile(capture):
                raise UsageError(f"--replay {capture}: no such file")
        usb = _usb_settings(args, cfg)
        interval = float(usb.interval)
        plans.append(
            SourcePlan(
                "replay",
                ReplaySources(replays, sync_deadline=usb.sync_deadline),
                interval,
                min(max(interval * 0.9, 30.0), 600.0),
            )
        )
    portal = None
    if args.portal_url or cfg.portal.url:
        portal = _portal_settings(args, cfg)
    listen = args.listen or cfg.api.listen
    from agent.config import ApiConfig

    _revalidate(ApiConfig(), {"listen": listen}, "--listen")
    store = cfg.store
    room, room_map = _config_room(cfg), _room_map(args, cfg)
    return DaemonSettings(
        plans=tuple(plans),
        state_dir=resolve_state_dir(cfg, args.state_dir),
        catalog=load_catalog(),
        room=room,
        room_map=room_map,
        snapshot=_snapshot_context(cfg, known_rooms(room, room_map)),
        portal=portal,
        listen=listen,
        api_token_file=cfg.api.token_file,
        agent_id=cfg.agent_id,
        sysfs_root=sysfs_root,
        hotplug_poll=hotplug_poll,
        remove_after=store.remove_after_missed_scans,
        retention=Retention(store.history_days, store.history_scans, store.events_days),
        outbox_max_bytes=int(cfg.portal.outbox_max_mb * 1024 * 1024),
        snapshot_interval=timedelta(hours=cfg.portal.snapshot_interval_hours),
    )


def cmd_run(args: argparse.Namespace) -> int:
    from agent.config import ConfigError, load_config
    from agent.log import configure

    loaded = _load(args)
    cfg = loaded.config
    # A daemon logs its progress at the configured level (-v raises it).
    level = {0: cfg.log.level, 1: "info"}.get(args.verbose, "debug")
    configure(level, args.log_format or cfg.log.format)
    settings = _daemon_settings(args, cfg)
    from agent.api import is_loopback_listen

    if settings.api_token_file is None and not is_loopback_listen(settings.listen):
        # Refused before anything is opened or bound (the API checks again when it starts).
        raise UsageError(
            f"--listen/[api] listen {settings.listen} is reachable from the network: "
            "set [api] token_file (a bearer token) or listen on 127.0.0.1"
        )

    def reload() -> Any:
        try:
            fresh = load_config(args.config)
        except ConfigError as exc:
            raise UsageError("invalid configuration: " + "; ".join(exc.problems)) from None
        settings = _daemon_settings(args, fresh.config)
        log = fresh.config.log
        configure({0: log.level, 1: "info"}.get(args.verbose, "debug"), args.log_format or log.format)
        return settings

    import faulthandler

    from agent.daemon import Daemon, run_until_stopped

    faulthandler.enable()  # a watchdog abort (SIGABRT) leaves every thread's stack in the journal
    return run_until_stopped(Daemon(settings, reload=reload))


def _health_url(args: argparse.Namespace, cfg: Any) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    listen = cfg.api.listen
    if listen.startswith("unix:"):
        return listen
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def cmd_health(args: argparse.Namespace) -> int:
    loaded = _load(args)
    cfg = loaded.config
    import asyncio

    from agent.secretfile import SecretFileError, read_secret

    url = _health_url(args, cfg)
    token = None
    if cfg.api.token_file is not None:
        try:
            token = read_secret(cfg.api.token_file, "API token")
        except SecretFileError as exc:
            raise UsageError(str(exc)) from None
    try:
        status = asyncio.run(_fetch_status(url, token, args.timeout))
    except _Unreachable as exc:
        if args.json:
            _print_json({"status": "down", "problems": [str(exc)]})
        else:
            print(f"down: {exc}")
        return EXIT_USAGE
    problems = list(status.get("problems") or [])
    verdict = "degraded" if problems else "healthy"
    if args.json:
        _print_json({"status": verdict, **status})
    else:

        def word(source: dict[str, Any]) -> str:
            if source.get("last_success") is None:
                return "pending"
            if source.get("last_success") is False:
                return "failed"
            return f"{source.get('errors')} error(s)" if source.get("errors") else "ok"

        sources = ", ".join(f"{s['name']} {word(s)}" for s in status.get("sources", []))
        print(
            f"{verdict}: roomsync {status.get('version')}, up {status.get('uptime', 0):.0f} s"
            + (f"; {sources}" if sources else "")
        )
        for problem in problems:
            print(f"  {problem}")
    return EXIT_FAILED if problems else EXIT_OK


class _Unreachable(Exception):
    pass


async def _fetch_status(url: str, token: str | None, timeout: float) -> Any:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector: Any = None
    base = url
    if url.startswith("unix:"):
        connector = aiohttp.UnixConnector(path=url[len("unix:") :])
        base = "http://localhost"
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), trust_env=False
            ) as session,
            session.get(base + "/v1/status", headers=headers, allow_redirects=False) as reply,
        ):
            if reply.status == 401:
                raise _Unreachable(f"{url} refused the API token ([api] token_file)")
            if reply.status != 200:
                raise _Unreachable(f"{url}/v1/status answered HTTP {reply.status}")
            data = await reply.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        raise _Unreachable(f"cannot reach the daemon at {url}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise _Unreachable(f"{url}/v1/status answered something that is not a status")
    return data


# --------------------------------------------------------------------------- check-config


def cmd_check_config(args: argparse.Namespace) -> int:
    loaded = _load(args)
    from agent.config import effective_config

    data = effective_config(loaded.config)
    if args.json:
        _print_json(
            {
                "file": str(loaded.path) if loaded.path else None,
                "env_overrides": list(loaded.env_overrides),
                "config": data,
            }
        )
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
