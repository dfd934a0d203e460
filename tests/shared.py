"""Where the shared documents and recorded fixtures live: ``../shared`` beside the repo.

Tests read them in place and skip with a clear reason when they are absent; nothing from
there is ever copied into the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CAPTURES = SHARED / "fixtures" / "usb-captures"


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(
            f"{path} is absent: the shared documents and fixtures are expected in "
            f"../shared beside the repository checkout"
        )
    return path
