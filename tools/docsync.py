"""Keeping the generated parts of a document current: the one routine behind
``python -m tools.portal_schemas --write|--check`` (the portal schemas) and
``python -m tools.configdoc --write|--check`` (the configuration reference)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def sync_document(path: Path, render: Callable[[str], str], *, check: bool, stale: str) -> int:
    """Render the generated parts of the document at ``path``. With ``check``, only compare:
    1 (``stale`` printed) when the file differs from what it should hold; else rewrite it when
    it differs. 0 when it is (now) current; 2 when it cannot be read or ``render`` refuses it
    (``ValueError``: missing or unknown markers)."""
    try:
        text = path.read_text(encoding="utf-8")
        fresh = render(text)
    except (OSError, ValueError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if fresh == text:
        return 0
    if check:
        print(f"{path}: {stale}", file=sys.stderr)
        return 1
    path.write_text(fresh, encoding="utf-8")
    return 0
