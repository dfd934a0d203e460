"""ruff and mypy over the code base: lint findings, unformatted code and type errors fail the
suite like any other defect. ruff is pinned in the test extra, so a newer ruff's formatting
cannot turn CI red."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.shared import BOOTSTRAP, missing

REPO = Path(__file__).resolve().parents[1]
#: What ruff checks and formats; ``tools`` only once it exists.
RUFF_PATHS = [p for p in ("agent", "tests", "bench", "tools") if (REPO / p).is_dir()]


def _venv_tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        missing(f"{name} is not installed (it comes with the test extra: {BOOTSTRAP})")
    return found


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [_venv_tool("ruff"), "check", *RUFF_PATHS], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = subprocess.run(
        [_venv_tool("ruff"), "format", "--check", *RUFF_PATHS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"run: .venv/bin/ruff format {' '.join(RUFF_PATHS)}\n" + result.stdout + result.stderr
    )


def test_mypy_on_the_package() -> None:
    result = subprocess.run(
        [_venv_tool("mypy"), "agent"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
