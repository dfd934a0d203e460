"""``roomsync health``: ask the running daemon how it is (a monitoring check)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from agent.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Parents, UsageError, load, print_json, seconds

if TYPE_CHECKING:
    from agent.config import AgentConfig

    from .common import Subparsers


def register(sub: Subparsers, parents: Parents) -> None:
    health = sub.add_parser(
        "health",
        parents=[parents.common],
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
    health.add_argument(
        "--timeout", type=seconds, default=5.0, metavar="S", help="seconds to wait (default 5)"
    )
    health.add_argument("--json", action="store_true", help="print the daemon's status as JSON")
    health.set_defaults(func=cmd_health)


def health_url(args: argparse.Namespace, cfg: AgentConfig) -> str:
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
    cfg = load(args).config
    import asyncio

    from agent.secretfile import SecretFileError, read_secret

    url = health_url(args, cfg)
    token = None
    if cfg.api.token_file is not None:
        try:
            token = read_secret(cfg.api.token_file, "API token")
        except SecretFileError as exc:
            raise UsageError(str(exc)) from None
    try:
        status = asyncio.run(fetch_status(url, token, args.timeout))
    except Unreachable as exc:
        if args.json:
            print_json({"status": "down", "problems": [str(exc)]})
        else:
            print(f"down: {exc}")
        return EXIT_USAGE
    problems = list(status.get("problems") or [])
    verdict = "degraded" if problems else "healthy"
    if args.json:
        print_json({"status": verdict, **status})
    else:

        def word(source: dict[str, object]) -> str:
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


class Unreachable(Exception):
    """The daemon did not answer, or not with a status."""


async def fetch_status(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    """The daemon's ``/v1/status`` reply (a JSON object) from ``url`` (``unix:/path`` for a
    socket). A daemon turning connections away (``503`` with ``Retry-After``: more clients
    than ``[api] max_connections``) is asked again after that wait while ``timeout`` allows."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        data, retry_after = await _ask_status(url, token, max(deadline - time.monotonic(), 0.001))
        if data is not None:
            return data
        if retry_after is None or time.monotonic() + retry_after >= deadline:
            raise Unreachable(
                f"{url} is turning connections away: more clients than [api] max_connections "
                "(asked again until --timeout)"
            )
        await asyncio.sleep(retry_after)


async def _ask_status(
    url: str, token: str | None, timeout: float
) -> tuple[dict[str, Any] | None, float | None]:
    """The status, or (None, seconds to wait) when the daemon said 503 with ``Retry-After``."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector: aiohttp.BaseConnector | None = None
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
                raise Unreachable(f"{url} refused the API token ([api] token_file)")
            wait = reply.headers.get("Retry-After", "")
            if reply.status == 503 and wait.isascii() and wait.isdigit() and len(wait) <= 4:
                return None, min(max(float(wait), 0.1), 5.0)
            if reply.status != 200:
                raise Unreachable(f"{url}/v1/status answered HTTP {reply.status}")
            data = await reply.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        raise Unreachable(f"cannot reach the daemon at {url}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise Unreachable(f"{url}/v1/status answered something that is not a status")
    return data, None
