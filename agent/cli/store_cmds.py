"""``roomsync inventory`` and ``roomsync events``: what the store holds."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from agent.cli.common import EXIT_OK, Parents, UsageError, load, print_json
from agent.cli.context import open_store, rooms_report
from agent.cli.views import print_events, print_room_lines, print_scan_table

if TYPE_CHECKING:
    from datetime import datetime

    from agent.events import ChangeEvent
    from agent.model import Device, Room

    from .common import Subparsers


def register(sub: Subparsers, parents: Parents) -> None:
    inventory = sub.add_parser(
        "inventory",
        parents=[parents.common, parents.state, parents.rooms],
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
        parents=[parents.common, parents.state],
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


def cmd_inventory(args: argparse.Namespace) -> int:
    cfg = load(args).config
    from agent.scan import ScanReport
    from agent.store import StoreError

    store = open_store(args, cfg)
    devices: list[Device] = []
    stored_rooms: list[Room] = []
    last_scan = None
    if store is not None:
        try:
            with store:
                devices = store.devices(removed=args.removed)
                stored_rooms = store.rooms()
                last_scan = store.last_scan()
        except StoreError as exc:
            raise UsageError(str(exc)) from None
    summary = rooms_report(args, cfg, devices, stored_rooms)
    if args.json:
        print_json(
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
    print_scan_table(ScanReport(devices=devices), show_other=args.all)
    if not args.removed:
        print_room_lines(summary)
    return EXIT_OK


def parse_time(text: str) -> datetime:
    """``--since``: YYYY-MM-DD or RFC 3339, UTC when no offset is given."""
    from datetime import UTC, datetime

    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text}: expected YYYY-MM-DD or an RFC 3339 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_events(args: argparse.Namespace) -> int:
    cfg = load(args).config
    from agent.store import StoreError

    since = parse_time(args.since) if args.since else None
    if args.limit < 0:
        raise UsageError("--limit must be 0 or more")
    store = open_store(args, cfg)
    found: list[ChangeEvent] = []
    if store is not None:
        try:
            with store:
                found = store.events(since, limit=args.limit or None)
        except StoreError as exc:
            raise UsageError(str(exc)) from None
    if args.json:
        print_json([e.to_dict() for e in found])
    elif found:
        print_events(found)
    elif store is not None:
        print("no events" + (f" since {since.isoformat()}" if since else ""))
    return EXIT_OK
