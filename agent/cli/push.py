"""The outputs: ``roomsync push`` delivers the outbox, ``roomsync outbox`` shows it."""

from __future__ import annotations

import argparse
import builtins
import sys
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Parents,
    UsageError,
    load,
    print_json,
    seconds_or_zero,
    table,
)
from agent.cli.context import (
    configured_rooms,
    make_outbox,
    open_store,
    portal_settings,
    snapshot_context,
)
from agent.uploader import GLPI, OUTPUTS, PORTAL

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.uploader.delivery import RunResult
    from agent.uploader.outbox import Outbox, OutboxStats
    from agent.uploader.outputs import Output

    from .common import Subparsers


def add_portal_flags(parser: argparse.ArgumentParser) -> None:
    """Where to deliver: the flags that override ``[portal]``."""
    parser.add_argument("--portal-url", metavar="URL", help="the portal's base URL (default: [portal] url)")
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="file (or systemd credential name) holding the bearer token (default: [portal] token_file)",
    )
    parser.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify the portal with")
    parser.add_argument("--client-cert", metavar="FILE", help="client certificate (mTLS); with --client-key")
    parser.add_argument("--client-key", metavar="FILE", help="the client certificate's key")


def register(sub: Subparsers, parents: Parents) -> None:
    push = sub.add_parser(
        "push",
        parents=[parents.common, parents.state, parents.rooms, parents.portal],
        help="deliver the outbox to the portal and every configured output",
        description="Deliver everything the outbox holds to every configured output — the "
        "licensing portal, [outputs.glpi], [outputs.mqtt] — each on its own and at once, "
        "oldest first, retrying transient failures (network, 408, 429, 5xx, no PUBACK) with "
        "backoff until the deadline. Exit 0 only when every queue delivered to is empty "
        "afterwards. The daemon (roomsync run) delivers continuously; push is the one-shot form.",
    )
    push.add_argument(
        "--once",
        action="store_true",
        help="deliver what is pending and exit (what push always does; the flag "
        "is accepted for scripts that spell it out)",
    )
    push.add_argument(
        "--target",
        choices=OUTPUTS,
        metavar="NAME",
        help=f"deliver to this output only ({', '.join(OUTPUTS)}); by default to every one configured",
    )
    push.add_argument(
        "--deadline",
        type=seconds_or_zero,
        default=60.0,
        metavar="S",
        help="stop after S seconds, the request in flight included (default 60; 0: one attempt)",
    )
    push.add_argument(
        "--retry-parked",
        action="store_true",
        help="first put parked messages (refused with a 4xx) back in the queue",
    )
    push.add_argument("--json", action="store_true", help="print the result as JSON")
    push.set_defaults(func=cmd_push)


def register_outbox(sub: Subparsers, parents: Parents) -> None:
    outbox = sub.add_parser(
        "outbox",
        parents=[parents.common, parents.state],
        help="show what waits for each output (queued, parked, dropped) and its state",
        description="Show the outbox of every output (the portal, GLPI, MQTT): queued and "
        "parked messages, events not yet queued, what the bound dropped, and what the last "
        "delivery attempts said of each.",
    )
    outbox.add_argument("--json", action="store_true", help="print JSON")
    outbox.add_argument(
        "--discard",
        choices=[name for name in OUTPUTS if name != PORTAL],
        metavar="NAME",
        help="drop the queue and state of an output taken out of the configuration (glpi, mqtt): "
        "its cursor would otherwise keep change events from being pruned",
    )
    outbox.set_defaults(func=cmd_outbox)


def _portal_given(args: argparse.Namespace, cfg: AgentConfig) -> bool:
    return bool(cfg.portal.url or args.portal_url)


def push_outputs(args: argparse.Namespace, cfg: AgentConfig) -> tuple[list[Output], dict[str, str]]:
    """The outputs ``push`` delivers to — ``--target``'s, else every one configured (the
    portal's flags configure the portal) — and those whose settings cannot be used, with
    why. The portal alone (or asked for by name) with unusable settings is a
    :class:`UsageError`, naming what to set, as it always was; beside other outputs it is
    one of the unusable ones, and the others are delivered to."""
    from agent.uploader.outputs import configured_outputs

    wanted = args.target
    unusable: dict[str, str] = {}
    portal = None
    if wanted in (None, PORTAL) and (wanted == PORTAL or _portal_given(args, cfg) or not _any_output(cfg)):
        if wanted == PORTAL or not _any_output(cfg):
            portal = portal_settings(args, cfg)
        else:
            try:
                portal = portal_settings(args, cfg)
            except UsageError as exc:
                unusable[PORTAL] = str(exc)
    found = configured_outputs(cfg, portal)
    if wanted is not None:
        found = [o for o in found if o.name == wanted]
        if not found:
            raise UsageError(f"--target {wanted}: [outputs.{wanted}] is not in the configuration")
    return found, unusable


def _any_output(cfg: AgentConfig) -> bool:
    return cfg.outputs.glpi is not None or cfg.outputs.mqtt is not None


def cmd_push(args: argparse.Namespace) -> int:
    cfg = load(args).config
    import asyncio
    import os
    import time
    from datetime import UTC, datetime

    from agent.store import StoreError
    from agent.uploader.delivery import Delivery, RunResult
    from agent.uploader.outputs import make_outbox

    outputs, unusable = push_outputs(args, cfg)
    context = snapshot_context(cfg, configured_rooms(args, cfg))
    store = open_store(args, cfg)
    if store is None:
        return EXIT_OK  # nothing was ever stored: nothing to deliver
    deadline = time.monotonic() + args.deadline
    results: dict[str, RunResult] = {}
    stats: dict[str, OutboxStats] = {}
    with store:
        try:
            deliveries = []
            outboxes = {}
            for output in outputs:
                # Each output on its own: one whose settings or documents fail is reported,
                # and the others are delivered to all the same.
                outbox = outboxes[output.name] = make_outbox(
                    store, output, agent_id=cfg.agent_id, version=__version__, hostname=os.uname().nodename
                )
                try:
                    if args.retry_parked:
                        outbox.unpark()
                    now = datetime.now(UTC)
                    if output.name == GLPI or outbox.snapshot_due(now):
                        output.queue(outbox, store, context, now)

                    def fresh(output: Output = output, outbox: Outbox = outbox) -> bool:
                        return output.queue(outbox, store, context, datetime.now(UTC), force=True)

                    delivery = Delivery(
                        outbox,
                        output.transport(outbox.agent, user_agent=f"roomsync/{__version__}"),
                        snapshot=fresh if output.name != GLPI else None,
                    )
                except StoreError:
                    raise
                except Exception as exc:  # OutputError: its settings; anything else: its documents
                    unusable[output.name] = _problem(exc)
                    continue
                deliveries.append((output, outbox, delivery))

            async def deliver_all() -> list[RunResult | BaseException]:
                runs = (d.run(deadline=deadline) for _, _, d in deliveries)
                return await asyncio.gather(*runs, return_exceptions=True)

            for (output, _outbox, _), result in zip(deliveries, asyncio.run(deliver_all()), strict=True):
                if isinstance(result, StoreError):
                    raise result
                if isinstance(result, BaseException):
                    unusable[output.name] = _problem(result)
                else:
                    results[output.name] = result
            stats = {name: outbox.stats() for name, outbox in outboxes.items()}
        except StoreError as exc:
            print(f"roomsync: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if not results:  # no output could be delivered to at all: the settings are the problem
        raise UsageError("; ".join(f"{name}: {problem}" for name, problem in unusable.items()))
    empty = not unusable and all(stats[name].empty for name in results)
    shown = {name: _result_dict(result, stats[name]) for name, result in results.items()}
    for name, problem in unusable.items():
        shown[name] = {
            **_result_dict(RunResult("unusable", last_problem=problem), None),
            "outbox": (stats[name].to_dict() if name in stats else None),
        }
    # The configured order (the portal first), an unusable portal among them.
    order = [name for name in OUTPUTS if name in shown]
    if args.json:
        first = next(name for name in order if name in results)
        runs = list(results.values())
        print_json(
            {
                **shown[first],
                "result": next((shown[n]["result"] for n in order if shown[n]["result"] != "empty"), "empty"),
                "delivered": sum(r.delivered for r in runs),
                "events_delivered": sum(r.events_delivered for r in runs),
                "parked": sum(r.parked for r in runs),
                "retries": sum(r.retries for r in runs),
                "last_problem": next(
                    (shown[n]["last_problem"] for n in order if shown[n]["last_problem"]), None
                ),
                "outputs": {name: shown[name] for name in order},
            }
        )
    else:
        where = {o.name: o.where for o in outputs}
        for name in order:
            if name in unusable:
                print(f"{name}: not delivered: {unusable[name]}")
                continue
            result = results[name]
            print(
                f"{name}: delivered {result.delivered} message(s) ({result.events_delivered} "
                f"event(s)) to {where[name]}; {result.retries} retr{'y' if result.retries == 1 else 'ies'}"
            )
            print_outbox_summary(stats[name], result.stopped_because, result.last_problem, indent="  ")
    for name, problem in unusable.items():
        print(f"roomsync: {name}: {problem}", file=sys.stderr)
    return EXIT_OK if empty else EXIT_FAILED


def _problem(exc: BaseException) -> str:
    from agent.uploader.delivery import OutputError

    return str(exc) if isinstance(exc, OutputError) else f"{type(exc).__name__}: {exc}"


def _result_dict(result: RunResult, stats: OutboxStats | None) -> dict[str, Any]:
    return {
        "result": result.stopped_because,
        "delivered": result.delivered,
        "events_delivered": result.events_delivered,
        "parked": result.parked,
        "retries": result.retries,
        "last_problem": result.last_problem,
        "outbox": stats.to_dict() if stats is not None else None,
    }


def print_outbox_summary(
    stats: OutboxStats, stopped: str | None = None, problem: str | None = None, *, indent: str = ""
) -> None:
    from agent.sanitize import printable

    def print(text: str) -> None:  # every line of the summary, indented
        builtins.print(indent + text)

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
        print(f"{reasons[stopped]}: {printable(problem)}" if problem else reasons[stopped])
    name = stats.output
    section = "[portal]" if name == PORTAL else f"[outputs.{name}]"
    if stats.parked:
        refused = "the portal (4xx)" if name == PORTAL else f"{name}"
        print(
            f"parked messages were refused by {refused}; roomsync outbox shows why, "
            "roomsync push --retry-parked sends them again"
        )
    if stats.dropped_messages:
        what = f"{stats.dropped_events} event(s) in " if stats.dropped_events or name != GLPI else ""
        print(f"the outbox bound dropped {what}{stats.dropped_messages} message(s) ({section} outbox_max_mb)")
    state = stats.state
    if state.state not in ("ok", "unknown"):
        print(f"{name} {state.state}" + (f": {printable(state.reason)}" if state.reason else ""))


def cmd_outbox(args: argparse.Namespace) -> int:
    cfg = load(args).config
    from agent.store import StoreError
    from agent.uploader.outbox import discard_output, queued_outputs

    if args.discard is not None:
        if getattr(cfg.outputs, args.discard) is not None:
            raise UsageError(
                f"--discard {args.discard}: [outputs.{args.discard}] is still configured; take it out of "
                "the configuration first (the daemon would queue for it again)"
            )
        args.writes = True
    store = open_store(args, cfg)
    if store is None:
        return EXIT_OK
    if args.discard is not None:
        try:
            with store:
                dropped = discard_output(store, args.discard)
        except StoreError as exc:
            raise UsageError(str(exc)) from None
        print(f"discarded the {args.discard} queue: {dropped} message(s) and its state")
        return EXIT_OK
    try:
        with store:
            configured = {PORTAL} | {name for name in OUTPUTS if getattr(cfg.outputs, name, None) is not None}
            names = [n for n in OUTPUTS if n in configured or n in queued_outputs(store)]
            outboxes = [make_outbox(store, cfg, name) for name in names]
            shown = [(outbox, outbox.stats(), outbox.messages()) for outbox in outboxes]
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    agent_id = outboxes[0].agent.id
    if args.json:
        portal_stats = shown[0][1]  # the portal's, first: the top level as it was before outputs
        print_json(
            {
                **portal_stats.to_dict(),
                "agent_id": agent_id,
                "messages": [m.to_dict() for m in shown[0][2]],  # the portal's, as before outputs
                "outputs": {
                    stats.output: {
                        **stats.to_dict(),
                        "configured": stats.output in configured,
                        "messages": [m.to_dict() for m in messages],
                    }
                    for _, stats, messages in shown
                },
            }
        )
        return EXIT_OK
    print(f"agent id {agent_id}")
    rows: list[list[str]] = []
    for outbox, stats, messages in shown:
        if len(shown) > 1:
            note = (
                ""
                if outbox.output in configured
                else f" (not configured: its queue is kept; --discard {outbox.output} drops it)"
            )
            print(f"{outbox.output}{note}:")
        print_outbox_summary(stats, indent="  " if len(shown) > 1 else "")
        rows.extend(
            [
                m.output,
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
        )
    if rows:
        print()
        print(
            table(
                ["OUTPUT", "SEQ", "KIND", "EVENTS", "BYTES", "STATE", "ATTEMPTS", "QUEUED", "LAST ERROR"],
                rows,
            )
        )
    return EXIT_OK
