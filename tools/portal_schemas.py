"""The JSON Schemas that ``docs/portal-api.md`` embeds, kept equal to the portal protocol's models
(:func:`agent.uploader.protocol.json_schemas`).

Run from the repository root: ``python -m tools.portal_schemas --write docs/portal-api.md``
rewrites every schema block of the document (between ``<!-- schema:NAME -->`` and
``<!-- /schema:NAME -->``, a fenced ``json`` block); ``--check docs/portal-api.md`` exits 1 when
a block is stale (tests/test_portal_protocol.py runs it); ``--print NAME`` prints one schema.
Everything outside the blocks is written by hand and left alone.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.uploader.protocol import MODELS, json_schemas
from tools.docsync import sync_document

__all__ = ["main", "render_schema_blocks", "schema_blocks"]

_BLOCK = re.compile(
    r"(?P<open><!-- schema:(?P<name>[\w.-]+) -->\n)```json\n(?P<body>.*?)\n?```\n"
    r"(?P<close><!-- /schema:(?P=name) -->)",
    re.S,
)


def _render(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False)


def schema_blocks(text: str) -> dict[str, str]:
    """The schema blocks of a document (between ``<!-- schema:NAME -->`` and
    ``<!-- /schema:NAME -->``), by name, as the JSON text they hold."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def render_schema_blocks(text: str) -> str:
    """``text`` with every schema block holding the current schema. Raises
    :class:`ValueError` when a schema has no block or a block names no schema."""
    schemas = json_schemas()
    found = schema_blocks(text)
    missing = sorted(set(schemas) - set(found))
    unknown = sorted(set(found) - set(schemas))
    if missing or unknown:
        raise ValueError(f"schema blocks: missing {missing or 'none'}, unknown {unknown or 'none'}")
    return _BLOCK.sub(lambda m: f"{m['open']}```json\n{_render(schemas[m['name']])}\n```\n{m['close']}", text)


def main(argv: Sequence[str] | None = None) -> int:
    """``--write DOC`` rewrites the document's schema blocks, ``--check DOC`` exits 1 when they
    are stale, ``--print NAME`` prints one schema."""
    parser = argparse.ArgumentParser(prog="python -m tools.portal_schemas", description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="DOC", type=Path)
    group.add_argument("--check", metavar="DOC", type=Path)
    group.add_argument("--print", metavar="NAME", choices=sorted(MODELS), dest="print_name")
    args = parser.parse_args(argv)
    if args.print_name:
        print(_render(json_schemas()[args.print_name]))
        return 0
    path: Path = args.write or args.check
    return sync_document(
        path,
        render_schema_blocks,
        check=bool(args.check),
        stale=f"schema blocks are stale; run python -m tools.portal_schemas --write {path}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
