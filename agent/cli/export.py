"""``roomsync export``: the stored inventory in a format other systems read."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from agent.cli.common import EXIT_FAILED, EXIT_OK, Parents, UsageError, load, write_output
from agent.cli.context import (
    configured_rooms,
    make_outbox,
    open_store,
    rooms_report,
    snapshot_context,
    stored_inventory,
)

if TYPE_CHECKING:
    from agent.config import AgentConfig

    from .common import Subparsers


def register(sub: Subparsers, parents: Parents) -> None:
    export = sub.add_parser(
        "export",
        parents=[parents.common, parents.state, parents.rooms],
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


def cmd_export(args: argparse.Namespace) -> int:
    cfg = load(args).config
    if args.format == "json":
        return _export_snapshot(args, cfg)
    from agent.uploader.service_portal import service_portal_csv, service_portal_rows

    devices, stored_rooms = stored_inventory(args, cfg)
    report = rooms_report(args, cfg, devices, stored_rooms)
    rows = service_portal_rows(report)
    write_output(args.output, service_portal_csv(rows))
    skipped = len(report.unassigned)
    if skipped:
        print(
            f"roomsync: {skipped} unit(s) in no room are not exported (a room map places LAN devices)",
            file=sys.stderr,
        )
    if args.output:
        print(f"wrote {len(rows)} key device row(s) to {args.output}", file=sys.stderr)
    return EXIT_OK


def _export_snapshot(args: argparse.Namespace, cfg: AgentConfig) -> int:
    from datetime import UTC, datetime

    from agent.store import StoreError
    from agent.uploader.snapshot import build_snapshot

    context = snapshot_context(cfg, configured_rooms(args, cfg))
    store = open_store(args, cfg)
    if store is None:
        return EXIT_FAILED
    try:
        with store:
            outbox = make_outbox(store, cfg)
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
    write_output(args.output, message.model_dump_json(by_alias=True, indent=2) + "\n")
    if args.output:
        print(
            f"wrote the snapshot ({sum(len(p.devices) for p in message.places)} placed and "
            f"{len(message.unassigned)} unassigned unit(s)) to {args.output}",
            file=sys.stderr,
        )
    return EXIT_OK
