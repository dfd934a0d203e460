"""The ``roomsync`` command line (also ``python -m agent``).

Exit status, for every command: 0 success; 1 the command ran but something failed (a source,
a target); 2 invalid usage or configuration (nothing was done), an output file that cannot be
written included; 130 interrupted.

One module per command group, each with a ``register(sub, parents)`` that adds its
sub-command(s) and a ``cmd_*`` function per command: :mod:`~agent.cli.scan`,
:mod:`~agent.cli.store_cmds` (inventory, events), :mod:`~agent.cli.coverage`,
:mod:`~agent.cli.push` (push, outbox), :mod:`~agent.cli.run`, :mod:`~agent.cli.health`,
:mod:`~agent.cli.export`, :mod:`~agent.cli.trust`, :mod:`~agent.cli.check_config`; shared helpers in
:mod:`~agent.cli.common`, :mod:`~agent.cli.context`, :mod:`~agent.cli.sources` and
:mod:`~agent.cli.views`. The domain logic lives below (coverage, inventory, uploader, the
daemon's settings in :mod:`agent.daemon_settings`): nothing imports this package.

Heavy libraries are imported inside the commands (types under ``TYPE_CHECKING``), so
``roomsync --help`` stays fast.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli import check_config, coverage, export, health, push, run, scan, store_cmds, trust
from agent.cli.common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Parents, UsageError
from agent.cli.sources import add_source_flags

__all__ = ["EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "UsageError", "main"]


def _parents() -> Parents:
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
    sources = argparse.ArgumentParser(add_help=False)
    add_source_flags(sources)
    portal = argparse.ArgumentParser(add_help=False)
    push.add_portal_flags(portal)
    return Parents(common=common, state=state, rooms=rooms, sources=sources, portal=portal)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomsync",
        description="Inventory Logitech meeting-room hardware: serials, firmware, health, coverage.",
        epilog="Exit status: 0 ok, 1 something failed, 2 invalid usage or configuration.",
    )
    parser.add_argument("--version", action="version", version=f"roomsync {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = _parents()
    # The order of ``roomsync --help``.
    scan.register(sub, parents)
    store_cmds.register(sub, parents)
    coverage.register(sub, parents)
    push.register(sub, parents)
    run.register(sub, parents)
    health.register(sub, parents)
    push.register_outbox(sub, parents)
    export.register(sub, parents)
    trust.register(sub, parents)
    check_config.register(sub, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and "JOURNAL_STREAM" in os.environ:
        # This process's own command line, under systemd: a crash reported as the journal
        # wants (agent.log is not imported otherwise: it costs --help ~35 ms).
        from agent.log import install_crash_reports

        install_crash_reports()
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        status = int(args.func(args))
        if argv is None:
            # This process's own command line: it ends now. Freezing what is alive spares
            # the interpreter's final garbage collections (~0.1 s after a scan, measured).
            gc.freeze()
        return status
    except UsageError as exc:
        from agent.log import journal_prefixed

        print(journal_prefixed(f"roomsync: {exc}"), file=sys.stderr)  # under systemd: priority err
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("roomsync: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (roomsync scan | head): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
