"""What a test needs from outside the repository, and what happens when it is missing.

The shared documents and recorded fixtures live in ``../shared`` beside the checkout (or
wherever ``RS_SHARED_DIR`` points: the override exists so that the CI behaviour below can
be checked against an empty directory without touching the real one). Tests read them in
place; nothing from there is ever copied into the repository.

Every test that needs something the machine may lack (a shared fixture, a real peer such as
snmpd or sshd, a tool such as ruff) asks through :func:`missing` / :func:`require`:

* with ``CI=true`` in the environment the test FAILS, with a message saying what to
  install: CI never passes by skipping;
* without it (a developer's quick loop) the test is skipped with the same message.

A precondition that CI legitimately cannot meet (a permission check that needs a non-root
user while CI runs as root; a tool feature newer than Debian 12 ships) is
:func:`not_applicable`: a skip in CI too, with a reason that says why. ``tests/conftest.py``
turns any other skip into a failure under CI, so a ``pytest.skip`` that bypasses these
helpers cannot make CI pass either.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

#: Environment variable that moves the shared directory (deliberately not ROOMSYNC_*: every
#: unknown ROOMSYNC_* variable is a configuration error for the agent).
SHARED_ENV = "RS_SHARED_DIR"
SHARED = Path(os.environ.get(SHARED_ENV) or Path(__file__).resolve().parents[1].parent / "shared").resolve()
CAPTURES = SHARED / "fixtures" / "usb-captures"

#: How to get everything the suite needs.
BOOTSTRAP = "run ./scripts/bootstrap"
#: The start of every skip reason that is allowed to stay a skip under CI.
NOT_APPLICABLE = "not applicable on this machine (a skip in CI too): "


def in_ci() -> bool:
    """True when ``CI`` is set to a true value (``CI=true`` as CI systems set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes", "on"}


def missing(reason: str) -> NoReturn:
    """The one way a test reports that a fixture, peer or tool it needs is absent: a
    failure under ``CI=true``, a skip otherwise. ``reason`` says what to install."""
    if in_ci():
        pytest.fail(f"CI=true: a missing prerequisite is a failure, not a skip: {reason}", pytrace=False)
    pytest.skip(reason)


def require(condition: object, reason: str) -> None:
    """:func:`missing` unless ``condition`` holds."""
    if not condition:
        missing(reason)


def not_applicable(reason: str) -> NoReturn:
    """Skip, even under CI, a check this environment cannot make by its nature; ``reason``
    must say why CI cannot satisfy it (see the module docstring)."""
    pytest.skip(NOT_APPLICABLE + reason)


def require_tool(name: str, package: str, *, path: str | None = None) -> str:
    """The absolute path of executable ``name`` (looked up on ``PATH``, then in ``path`` if
    given); :func:`missing` naming Debian package ``package`` when it is not there."""
    found = shutil.which(name) or (shutil.which(name, path=path) if path else None)
    if found is None:
        missing(f"{name} is not installed (Debian package {package}; {BOOTSTRAP})")
    return found


def shared_missing_reason(path: Path) -> str:
    return (
        f"{path} is absent: the shared documents and fixtures are expected in ../shared beside "
        f"the repository checkout (or in ${SHARED_ENV}); clone the project with its shared "
        f"directory next to it"
    )


def shared_file(*parts: str) -> Path:
    """A file under the shared directory; :func:`missing` when it is absent."""
    path = SHARED.joinpath(*parts)
    require(path.is_file(), shared_missing_reason(path))
    return path
