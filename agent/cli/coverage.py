"""``roomsync coverage``: the warranty, SELECT and reseller coverage of every unit."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from agent.cli.common import EXIT_OK, Parents, UsageError, load, parse_day, print_json, table
from agent.cli.context import rooms_report, stored_inventory

if TYPE_CHECKING:
    from datetime import date

    from agent.config import AgentConfig
    from agent.coverage import CoverageUnit, Verdict
    from agent.inventory import RoomsReport

    from .common import Subparsers


def register(sub: Subparsers, parents: Parents) -> None:
    coverage = sub.add_parser(
        "coverage",
        parents=[parents.common, parents.state, parents.rooms],
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
    coverage.add_argument(
        "--today",
        metavar="YYYY-MM-DD",
        help="evaluate as of this day (default: today in UTC, as the daemon's API)",
    )
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


def cmd_coverage(args: argparse.Namespace) -> int:
    cfg = load(args).config
    from agent.catalog import load_catalog
    from agent.coverage import coverage_units, evaluate_all, urgency_key
    from agent.entitlements import EntitlementsError, load_entitlements

    today = parse_day(args.today, "--today")
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
    devices, stored_rooms = stored_inventory(args, cfg)
    catalog = load_catalog()
    report = rooms_report(args, cfg, devices, stored_rooms)
    tickets = {r.room_id: r.ticket_serial for r in report.rooms}
    units = coverage_units(devices, entitlements)  # the units /v1/coverage lists too
    verdicts = evaluate_all(
        [(unit.serial, unit.product) for unit in units],
        entitlements,
        catalog,
        today,
        expiring_days=args.expiring_days,
    )
    rows = sorted(zip(verdicts, units, strict=True), key=lambda pair: urgency_key(pair[0]))
    if args.summary:
        return _print_site_summary(args, cfg, rows, report, today)
    if args.json:
        print_json(
            [
                {
                    **v.to_dict(),
                    "room": unit.room,
                    "ticket_serial": tickets.get(unit.room) if unit.room else None,
                    "reason": v.reason,
                }
                for v, unit in rows
            ]
        )
        return EXIT_OK
    if not rows:
        print("no units: the entitlements file is empty and no scan has been stored yet")
        return EXIT_OK
    print(
        table(
            ["STATUS", "COVERED UNTIL", "SERIAL", "PRODUCT", "ROOM", "REASON"],
            [
                [
                    str(v.status),
                    v.covered_until.isoformat() if v.covered_until else "-",
                    v.serial or "-",
                    unit.product or "-",
                    unit.room or "-",
                    v.reason,
                ]
                for v, unit in rows
            ],
        )
    )
    return EXIT_OK


def _print_site_summary(
    args: argparse.Namespace,
    cfg: AgentConfig,
    rows: list[tuple[Verdict, CoverageUnit]],
    report: RoomsReport,
    today: date,
) -> int:
    from agent.site import summarize

    site = summarize(
        [(v, unit.room) for v, unit in rows],
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
        print_json(
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
