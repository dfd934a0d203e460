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


def cmd_scan(args: argparse.Namespace) -> int:
    loaded = _load(args)
    cfg = loaded.config
    from datetime import UTC, datetime

    from agent.catalog import load_catalog
    from agent.discovery import SOURCES, source_class
    from agent.model import Room, ScanError
    from agent.scan import scan_once

    usb_settings = cfg.sources.usb
    overrides: dict[str, Any] = {}
    if args.sysfs_root is not None:
        if not os.path.isdir(args.sysfs_root):
            raise UsageError(f"--sysfs-root {args.sysfs_root}: no such directory")
        overrides["sysfs_root"] = args.sysfs_root
    if args.all_usb:
        overrides["all_usb"] = True
    if args.no_libusb:
        overrides["libusb_strings"] = False
    if overrides:
        usb_settings = usb_settings.model_copy(update=overrides)

    if args.usb or args.sysfs_root is not None:
        wanted = ["usb"]
    elif args.replay:
        wanted = []  # a replay stands alone unless --usb / --sysfs-root is asked for too
    else:
        wanted = [name for name in ("usb", "mdns", "snmp", "ssh")
                  if getattr(cfg.sources, name).enabled]
    sources = []
    unavailable: list[ScanError] = []
    for name in wanted:
        if name not in SOURCES:
            unavailable.append(ScanError(name, "*", f"source {name!r} is enabled in the "
                                         f"configuration but this version of roomsync "
                                         f"({__version__}) does not have it yet"))
            continue
        settings = usb_settings if name == "usb" else getattr(cfg.sources, name)
        sources.append(source_class(name).from_config(settings))

    for capture in args.replay or ():
        if not os.path.isfile(capture):
            raise UsageError(f"--replay {capture}: no such file")
        from agent.discovery.usb_replay import ReplayUsbSource

        sources.append(ReplayUsbSource(capture, sync_deadline=usb_settings.sync_deadline))

    room = Room(**cfg.room.model_dump()) if cfg.room else None
    now = datetime.now(UTC)
    report = scan_once(sources, load_catalog(), now, room, timeout=args.timeout)
    report.errors[:0] = unavailable
    if not sources and not unavailable:
        report.messages.append("no source is enabled in the configuration (see [sources.*]); "
                               "--usb scans this host's USB anyway")

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
        _print_scan_table(report)
    return EXIT_FAILED if report.errors else EXIT_OK


def _print_scan_table(report: Any) -> None:
    for message in report.messages:
        print(message)
    if report.devices:
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
                "  " * depth + ("└ " if depth else "") + d.product, d.model or "-", serial,
                d.firmware or "-", str(d.transport) if not depth else "",
                d.address if not depth else "", usb_id if not depth else "",
                (d.room or "-") if not depth else "", str(d.health),
            ])
            for child in d.children:  # a bar's Sight, mic pods, remote
                add_row(child, depth + 1)

        for d in report.devices:
            add_row(d, 0)
        print(_table(["PRODUCT", "MODEL", "SERIAL", "FIRMWARE", "TRANSPORT", "ADDRESS", "USB ID",
                      "ROOM", "HEALTH"], rows))
        if weak_serial:
            print("* serial is not label-grade (e.g. the USB chip's serial): check the label")
        for d in report.devices:
            for unit in (d, *d.children):
                for issue in unit.health_issues:
                    if str(issue.severity) != "info":
                        print(f"{unit.product} at {d.address}: {issue.message}")
    elif not report.errors:
        print("no devices found")
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
