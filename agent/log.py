"""Logging with structlog: JSON lines for machines, readable lines for people.

* ``format = "auto"`` (default): JSON when stderr is not a terminal or the process runs
  under systemd (``$JOURNAL_STREAM`` / ``$INVOCATION_ID``), a readable console line otherwise.
* Events have stable names (``usb.scan.done``) and keys; operators' log queries rely on them.
* Secrets never reach the log: values of keys that name a secret are masked, whatever the
  caller passes (see :func:`mask_secrets`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from agent.sanitize import MASK, is_secret_key

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def mask_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask every value whose key names a secret, at any depth."""
    for key in list(event):
        event[key] = _masked(key, event[key])
    return event


def _masked(key: str, value: Any) -> Any:
    if key != "event" and is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, Mapping):
        return {k: _masked(str(k), v) for k, v in value.items()}
    return value


def use_json(fmt: str, stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    if env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"):
        return True
    isatty = getattr(stream, "isatty", None)
    return not (isatty and isatty())


class _Stderr:
    """``sys.stderr`` as it is when a line is written, not when logging was set up (it may
    be replaced meanwhile: a test harness's capture, a daemonising wrapper)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog for the process. Logs go to stderr; stdout is for command output."""
    out: Any = stream or _Stderr()
    json_lines = use_json(fmt, out)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_secrets,
    ]
    if json_lines:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
