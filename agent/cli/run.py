"""``roomsync run``: the agent as a daemon. The settings are built by the daemon layer
(:mod:`agent.daemon_settings`); this module maps the command line onto them."""

from __future__ import annotations

import argparse
import gc
from typing import TYPE_CHECKING

from agent.cli.common import Parents, UsageError, load, revalidate
from agent.cli.context import portal_settings, room_map
from agent.cli.sources import named_sources, source_settings

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.daemon import DaemonSettings
    from agent.daemon_settings import SourceConfig

    from .common import Subparsers


def register(sub: Subparsers, parents: Parents) -> None:
    run = sub.add_parser(
        "run",
        parents=[parents.common, parents.state, parents.rooms, parents.sources, parents.portal],
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


def daemon_settings(args: argparse.Namespace, cfg: AgentConfig) -> DaemonSettings:
    """The daemon's settings: the configuration with the command line's overrides."""
    from agent.config import ApiConfig
    from agent.daemon_settings import SettingsError, build_daemon_settings, daemon_sources

    # Sources named by flags run alone; else the configuration's (defaults: the registry's).
    names = [name for name, on in named_sources(args).items() if on] or daemon_sources(cfg.sources)
    settings = {name: source_settings(name, args, cfg) for name in names}  # the flags' usage errors first

    def settings_of(name: str) -> SourceConfig:
        return settings[name] if name in settings else source_settings(name, args, cfg)

    portal = portal_settings(args, cfg) if args.portal_url or cfg.portal.url else None
    listen = args.listen or cfg.api.listen
    revalidate(ApiConfig(), {"listen": listen}, "--listen")
    try:
        return build_daemon_settings(
            cfg,
            names=names,
            source_settings=settings_of,
            replays=args.replay or (),
            portal=portal,
            listen=listen,
            state_dir=args.state_dir,
            room_map=room_map(args, cfg),
        )
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from agent.config import ConfigError, load_config
    from agent.log import configure

    cfg = load(args).config
    # A daemon logs its progress at the configured level (-v raises it).
    level = {0: cfg.log.level, 1: "info"}.get(args.verbose, "debug")
    configure(level, args.log_format or cfg.log.format)
    settings = daemon_settings(args, cfg)
    from agent.config import api_exposure_problem

    exposed = api_exposure_problem(settings.listen, settings.api_token_file)
    if exposed is not None:
        # Refused before anything is opened or bound (the API checks again when it starts).
        raise UsageError(f"{exposed} (--listen or [api] listen)")

    def reload() -> DaemonSettings:
        try:
            fresh = load_config(args.config)
        except ConfigError as exc:
            raise UsageError("invalid configuration: " + "; ".join(exc.problems)) from None
        settings = daemon_settings(args, fresh.config)
        log = fresh.config.log
        configure({0: log.level, 1: "info"}.get(args.verbose, "debug"), args.log_format or log.format)
        return settings

    import faulthandler

    from agent.daemon import Daemon, run_until_stopped

    faulthandler.enable()  # a watchdog abort (SIGABRT) leaves every thread's stack in the journal
    # What is alive now (modules, classes, schemas, the catalog: ~55,000 objects) lives as
    # long as the process: out of the cyclic collector's sight, every full collection the
    # daemon ever makes walks ~10 ms less (measured). The collection first: garbage is
    # not frozen with it.
    gc.collect()
    gc.freeze()
    return run_until_stopped(Daemon(settings, reload=reload))
