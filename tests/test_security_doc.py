"""docs/security.md says of the tests it names: "every one exists in tests/". Each
``tests/….py::name`` (and each ``::name`` after it, which means the same file) must name a
test function (or class) defined in that file, so that the threat model cannot point at a
test that was renamed or removed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "security.md"
#: ``tests/x.py::name`` or ``::name`` (the file named last in the same cell).
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")
FILE = re.compile(r"`(tests/[\w/]+\.py)(?:::\w+)?`")


def scopes() -> list[str]:
    """Where ``::name`` refers back: a table cell, or a paragraph of prose."""
    found: list[str] = []
    paragraph: list[str] = []
    for line in [*DOC.read_text(encoding="utf-8").splitlines(), ""]:
        if line.startswith("|"):
            found += line.split("|")
        elif line.strip():
            paragraph.append(line)
            continue
        if paragraph:
            found.append(" ".join(paragraph))
            paragraph = []
    return found


def references() -> list[tuple[str, str]]:
    found = []
    for scope in scopes():
        current = None
        for match in re.finditer(r"`tests/[\w/]+\.py(?:::\w+)?`|`::\w+`", scope):
            file = FILE.fullmatch(match[0])
            if file:
                current = file[1]
            ref = REFERENCE.fullmatch(match[0])
            if ref:
                assert current is not None, f"{match[0]} follows no file in: {scope.strip()[:120]}"
                found.append((current, ref[2]))
    return found


def defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }


def test_every_test_the_threat_model_names_exists() -> None:
    refs = references()
    assert len(refs) > 100  # the parser reads the document
    missing = []
    cache: dict[str, set[str]] = {}
    for file, name in refs:
        path = REPO / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
            continue
        names = cache.setdefault(file, defined(path))
        if name not in names:
            missing.append(f"{file}::{name}")
    assert not missing, "docs/security.md names tests that do not exist:\n" + "\n".join(sorted(set(missing)))
