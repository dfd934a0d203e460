"""A real full disk for store tests: a script run in a private mount namespace
(``unshare -m``, root only), where it mounts a small tmpfs at the directory it is given
(``sys.argv[1]``) and prints its findings as one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.shared import missing, require, require_tool

REPO = Path(__file__).resolve().parents[1]


def run_on_small_disk(tmp_path: Path, script: str) -> dict[str, Any]:
    """Run ``script`` with a fresh mount point as its argument; ``tests.shared.missing``
    (a failure under CI) where a mount namespace cannot be made (not root, no unshare).
    Returns what it printed, decoded."""
    require_tool("unshare", "util-linux")
    require(
        os.geteuid() == 0, "needs root to mount a small tmpfs in a private mount namespace (CI runs as root)"
    )
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", script, str(mount)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    if result.returncode != 0 and "unshare failed" in result.stderr:
        missing(f"cannot make a mount namespace here (CI runs as root): {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out
