"""``roomsync scan``: run the enabled sources once, print what they found, store it."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from agent import __version__
from agent.cli.common import EXIT_FAILED, EXIT_OK, Parents, UsageError, load, print_json, seconds
from agent.cli.context import config_room, queue_outputs, room_map, snapshot_context
from agent.cli.sources import SweepProgress, source_settings, usb_settings, wanted_sources
from agent.cli.views import print_events, print_room_lines, print_scan_table

if TYPE_CHECKING:
    from datetime import datetime

    from agent.catalog import Catalog
    from agent.config import AgentConfig
    from agent.discovery import Source
    from agent.discovery.snmp import SnmpSource
    from agent.events import ChangeEvent
    from agent.model import Room
    from agent.scan import ScanReport

    from .common import Subparsers


def register(sub: Subparsers, parents: Parents) -> None:
    scan = sub.add_parser(
        "scan",
        parents=[parents.common, parents.state, parents.rooms, parents.sources],
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
        type=seconds,
        default=120.0,
        metavar="S",
        help="give up on a source after S seconds (default 120)",
    )
    scan.add_argument("--no-store", action="store_true", help="do not store what the scan found")
    scan.add_argument(
        "--all", action="store_true", help="also list LAN responders the catalog does not know ('other')"
    )
    scan.set_defaults(func=cmd_scan)


def cmd_scan(args: argparse.Namespace) -> int:
    cfg = load(args).config
    from datetime import UTC, datetime

    from agent.catalog import load_catalog
    from agent.config import resolve_state_dir
    from agent.discovery import make_source
    from agent.scan import scan_once

    usb = usb_settings(args, cfg)
    sources: list[Source] = []
    progress: list[SweepProgress] = []
    wanted = wanted_sources(args, cfg)
    settings = {name: source_settings(name, args, cfg) for name in wanted}  # usage errors first
    state_dir = resolve_state_dir(cfg, args.state_dir)
    for name in wanted:
        if name == "snmp":
            sweep: SnmpSource = make_source(name, settings[name], state_dir)
            bar = SweepProgress("SNMP sweep")
            sweep.progress = bar
            progress.append(bar)
            sources.append(sweep)
        else:
            source = make_source(name, settings[name], state_dir)
            if hasattr(source, "run_budget"):  # a source that paces itself to end in time
                source.run_budget = args.timeout
            sources.append(source)

    for capture in args.replay or ():
        if not os.path.isfile(capture):
            raise UsageError(f"--replay {capture}: no such file")
        from agent.discovery.usb_replay import ReplayUsbSource

        sources.append(ReplayUsbSource(capture, sync_deadline=usb.sync_deadline))

    room = config_room(cfg)
    rooms_map = room_map(args, cfg)
    now = datetime.now(UTC)
    catalog = load_catalog()
    try:
        report = scan_once(sources, catalog, now, room, timeout=args.timeout, room_map=rooms_map)
    finally:
        for bar in progress:
            bar.finish()
    if not sources:
        report.messages.append(
            "no source is enabled in the configuration (see [sources.*]); --usb scans this host's USB anyway"
        )
    from agent.inventory import known_rooms, summarize_rooms

    rooms = known_rooms(room, rooms_map)
    events = store_scan(args, cfg, report, rooms, now, catalog) if sources and not args.no_store else []
    summary = summarize_rooms(report.devices, catalog, rooms)

    if args.json:
        print_json(
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
        print_scan_table(report, show_other=args.all)
        print_room_lines(summary)
        if events:
            print()
            print_events(events)
    return EXIT_FAILED if report.errors else EXIT_OK


def store_scan(
    args: argparse.Namespace,
    cfg: AgentConfig,
    report: ScanReport,
    rooms: list[Room],
    now: datetime,
    catalog: Catalog,
) -> list[ChangeEvent]:
    """Keep what the scan found and return the change events it produced; a store failure is
    one error, and the results still print."""
    from agent.config import resolve_state_dir
    from agent.inventory import merge_rules
    from agent.model import ScanError
    from agent.store import Retention, Store, StoreError

    state_dir = resolve_state_dir(cfg, args.state_dir)
    settings = cfg.store
    try:
        with Store.open(state_dir) as store:
            record = store.record_scan(
                report.readings,
                rooms,
                now,
                len(report.errors),
                # Only sources that ran to the end can tell that a unit is gone.
                sources_run={r.name for r in report.runs if r.success},
                unreached=report.unreached,
                remove_after=settings.remove_after_missed_scans,
                retention=Retention.from_config(settings),
                rules=merge_rules(catalog),
            )
            try:
                context = snapshot_context(cfg, rooms)
            except UsageError as exc:
                report.errors.append(
                    ScanError("outbox", str(state_dir), f"{exc}; no snapshot queued (the change events are)")
                )
            else:
                for problem in queue_outputs(store, cfg, context, now):
                    report.errors.append(ScanError("outbox", str(state_dir), problem))
            _record_identities(report, record.placed)
            return list(record.events)
    except StoreError as exc:
        report.errors.append(ScanError("store", str(state_dir), str(exc)))
        return []


def _record_identities(report: ScanReport, placed: tuple[str, ...]) -> None:
    """Each unit of the scan under the identity of its record in the store (kept from its
    first sighting), as its events and ``roomsync inventory`` name it."""
    by_channel = {
        (d.sources[0] if d.sources else str(d.transport), d.address): identity
        for d, identity in zip(report.readings, placed, strict=False)
        if identity
    }
    for device in report.devices:
        identity = next((by_channel.get((s.source, s.address)) for s in device.seen_by), None)
        if identity is not None:
            device.assigned_identity = identity
