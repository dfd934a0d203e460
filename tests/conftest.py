"""Test-wide settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Commands the tests run (in this process or as subprocesses) keep their state in a
    temporary directory, never in the user's ~/.local/state/roomsync."""
    path = tmp_path_factory.mktemp("xdg-state")
    saved = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "STATE_DIRECTORY", "INVOCATION_ID")}
    os.environ["XDG_STATE_HOME"] = str(path)
    os.environ.pop("STATE_DIRECTORY", None)
    os.environ.pop("INVOCATION_ID", None)
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
