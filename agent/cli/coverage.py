"""``roomsync coverage``: the warranty, SELECT and reseller coverage of every unit."""

from __future__ import annotations

import argparse
import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import TYPE_CHECKING, TypeAlias

from agent.cli.common import (
    EXIT_OK,
    Parents,
    UsageError,
    json_item,
    load,
    parse_day,
    print_json,
    print_json_texts,
    print_table,
)
from agent.cli.context import rooms_report, stored_inventory

if TYPE_CHECKING:
    from datetime import date

    from agent.config import AgentConfig
    from agent.coverage import CoverageUnit, Verdict
    from agent.inventory import RoomsReport
    from agent.uploader.snapshot import CoverageList

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
    from agent.entitlements import EntitlementsError, load_entitlements
    from agent.uploader.snapshot import SnapshotContext, coverage_list

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
    report = rooms_report(args, cfg, devices, stored_rooms)
    context = SnapshotContext(load_catalog(), entitlements=entitlements, expiring_days=args.expiring_days)
    listed = coverage_list(devices, context, today)  # the units /v1/coverage lists too
    assert listed is not None  # records were given
    if args.summary:
        return _print_site_summary(args, cfg, listed, report, today)
    tickets = {r.room_id: r.ticket_serial for r in report.rooms}
    rows = _most_urgent_first(listed)
    if args.json:
        print_json_texts(_json_texts(rows(), tickets))
        return EXIT_OK
    if not listed.units and not listed.rows.records:
        print("no units: the entitlements file is empty and no scan has been stored yet")
        return EXIT_OK
    print_table(
        ["STATUS", "COVERED UNTIL", "SERIAL", "PRODUCT", "ROOM", "REASON"],
        lambda: (
            [
                str(v.status),
                v.covered_until.isoformat() if v.covered_until else "-",
                serial or "-",
                (unit.product or "-") if unit else "-",
                (unit.room or "-") if unit else "-",
                v.reason,
            ]
            for v, serial, unit in rows()
        ),
    )
    return EXIT_OK


Row: TypeAlias = "tuple[Verdict, str, CoverageUnit | None]"


def _most_urgent_first(listed: CoverageList) -> Callable[[], Iterator[Row]]:
    """Every listed unit, most urgent first (:func:`agent.coverage.urgency_key`), as often as
    asked: the inventory's units and their verdicts, sorted; the records no scan found
    (units of unknown product, in no room) as serials grouped by the verdict they share, each
    group sorted, merged in. A record costs its serial, not a verdict of its own."""
    from agent.coverage import urgency_key

    seen = sorted(zip(listed.verdicts, listed.units, strict=True), key=lambda pair: urgency_key(pair[0]))
    groups = listed.rows.groups(skip=listed.keys)
    for _, serials in groups:
        serials.sort()

    def group(verdict: Verdict, serials: list[str]) -> Iterator[tuple[tuple[int, date, str], Row]]:
        rank, until, _ = urgency_key(verdict)
        return (((rank, until, serial), (verdict, serial, None)) for serial in serials)

    def rows() -> Iterator[Row]:
        streams: list[Iterator[tuple[tuple[int, date, str], Row]]] = [
            ((urgency_key(v), (v, v.serial or "", unit)) for v, unit in seen)
        ]
        streams += [group(verdict, serials) for verdict, serials in groups]
        return (row for _, row in heapq.merge(*streams, key=itemgetter(0)))

    return rows


def _json_texts(rows: Iterable[Row], tickets: dict[str, str | None]) -> Iterator[str]:
    """Each row as ``coverage --json`` lists it: a verdict records share made into text once,
    each one's serial put in."""
    shared: dict[int, str] = {}  # by the verdict's id: every one is kept by the groups
    for verdict, serial, unit in rows:
        if unit is not None:
            room = unit.room
            yield json_item(
                {
                    **verdict.to_dict(),
                    "room": room,
                    "ticket_serial": tickets.get(room) if room else None,
                    "reason": verdict.reason,
                }
            )
            continue
        text = shared.get(id(verdict))
        if text is None:
            fields = {**verdict.to_dict(), "room": None, "ticket_serial": None, "reason": verdict.reason}
            text = shared[id(verdict)] = json_item({**fields, "serial": ""})[len(_SERIAL_HEAD) + 2 :]
        yield _SERIAL_HEAD + json.dumps(serial, ensure_ascii=False) + text


#: How :func:`json_item` begins a verdict: its serial is its first key.
_SERIAL_HEAD = '{\n  "serial": '


def _print_site_summary(
    args: argparse.Namespace,
    cfg: AgentConfig,
    listed: CoverageList,
    report: RoomsReport,
    today: date,
) -> int:
    from agent.site import summarize

    site = summarize(
        [(v, unit.room) for v, unit in zip(listed.verdicts, listed.units, strict=True)],
        [r.room_id for r in report.rooms],
        today,
        enterprise_tier=cfg.select.enterprise_tier,
        roomless={str(status): count for status, count in listed.rows.counts(skip=listed.keys).items()},
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
