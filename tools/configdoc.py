"""The configuration reference, generated from the configuration model (:mod:`agent.config`).

``python -m tools.configdoc --write docs/configuration.md``, run from the repository root,
rewrites the part of the document between ``<!-- generated:configuration -->`` and
``<!-- /generated:configuration -->``; ``--check docs/configuration.md`` exits 1 when that part
is stale (tests/test_configdoc.py runs it); ``--print`` prints the generated part alone.
Everything outside the markers is written by hand and left alone.

What comes from where
---------------------
* **Keys, tables, types, limits, choices, defaults and required keys**: the pydantic models
  themselves (``model_fields``: the annotation, ``Annotated`` constraints such as ``ge``/``le``/
  ``pattern``/``max_length``, ``Literal`` choices, ``default``/``default_factory``), walked from
  :class:`agent.config.AgentConfig` down through nested sections and lists of sections
  (``[[sources.ssh.hosts]]``).
* **What a key means**, first found of:

  1. the field's pydantic ``description`` (none is set today; one would win),
  2. the ``#:`` comment right above the field in ``agent/config.py``, read from the source with
     :mod:`ast` (the way Sphinx reads attribute comments; comments do not exist at run time),
  3. the key's comment in ``config/agent.example.toml``: the ``# …`` after its value plus the
     indented ``# …`` lines under it, else the comment paragraph right above the key.

  4. :data:`FALLBACK`, for the few keys neither file explains (a comment that only lists the
     ``Literal`` choices explains nothing). Better: a ``#:`` comment in ``agent/config.py``,
     then drop the entry here (tests/test_configdoc.py fails on an entry no longer needed).

  tests/test_configdoc.py fails when a key ends up with no meaning. A table's text is its class
  docstring, else the comment on its ``[header]`` line in the example; a comment paragraph
  right under a table's last key (no blank line between) is added to it.
* **Examples** (``e.g.``) are the example file's values where they differ from the default.

This is a developer tool, not part of the installed package: it reads the checkout
(``config/agent.example.toml`` beside ``tools/``, and ``agent/config.py`` for the ``#:``
comments) and is run from the repository root.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import ipaddress
import json
import re
import sys
import textwrap
import tomllib
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from agent.config import PRINTABLE, AgentConfig
from tools.docsync import sync_document

__all__ = [
    "BEGIN",
    "END",
    "EXAMPLE",
    "FALLBACK",
    "Key",
    "Section",
    "describe_type",
    "generate",
    "key_paths",
    "main",
    "read_example",
    "render",
    "sections",
]

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "agent.example.toml"
BEGIN = "<!-- generated:configuration -->"
END = "<!-- /generated:configuration -->"
_BLOCK = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.S)

#: What a key means where neither ``agent/config.py`` nor the example file says (checked
#: against the code: agent/discovery/snmp.py, agent/discovery/ssh.py, agent/secretfile.py,
#: agent/uploader/delivery.py).
FALLBACK: dict[str, str] = {
    "log.level": "the lowest level that is logged",
    "room.location": "where the room is, shown to people",
    "room.seat_count": "seats in the room",
    "sources.snmp.enabled": "sweep `targets` (the daemon, and `roomsync scan` when no source is named "
    "on its command line)",
    "sources.snmp.version": "`2c` (community) or `3` (USM with authentication and privacy; needs "
    "`[sources.snmp.v3]`)",
    "sources.snmp.retries": "how many times an unanswered request is sent again",
    "sources.snmp.v3.user": "the USM user name",
    "sources.snmp.v3.auth_protocol": "the USM authentication protocol",
    "sources.snmp.v3.auth_key_file": "file holding the authentication key (one line)",
    "sources.snmp.v3.priv_protocol": "the USM privacy (encryption) protocol",
    "sources.snmp.v3.priv_key_file": "file holding the privacy key (one line)",
    "sources.ssh.enabled": "read the `[[sources.ssh.hosts]]` (the daemon, and `roomsync scan` when no "
    "source is named on its command line)",
    "sources.ssh.connect_timeout": "seconds allowed for each of connect, SSH handshake, log-in and each read",
    "sources.ssh.hosts[].host": "the PC's host name or address; `known_hosts` must hold its key "
    "under this very name (`[host]:port` for a port other than 22)",
    "sources.ssh.hosts[].port": "the PC's SSH port",
    "sources.ssh.hosts[].user": "the account to log in as (by key only: no password, no SSH agent)",
    "sources.ssh.hosts[].key_file": "the private key to log in with (no passphrase); a bare name "
    "is looked up in `$CREDENTIALS_DIRECTORY` first; required in "
    "practice: a host without one is an error",
    "sources.ssh.hosts[].os": "`linux`: files read over SFTP, no command run; `windows`: one fixed "
    "PowerShell command (docs/ssh-room-pcs.md)",
    "portal.client_key": "the private key of `client_cert` (mTLS)",
}


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a table, as the reference shows it."""

    #: The key's path as the reference writes it: ``sources.ssh.hosts[].host`` inside an
    #: array of tables.
    dotted: str
    type: str
    default: str
    meaning: str


@dataclass(slots=True)
class Section:
    """One TOML table (``()`` is the top level); ``array`` for ``[[…]]`` tables."""

    path: tuple[str, ...]
    text: str = ""
    optional: bool = False
    array: bool = False
    keys: list[Key] = field(default_factory=list)

    @property
    def header(self) -> str:
        name = ".".join(self.path)
        return f"[[{name}]]" if self.array else f"[{name}]" if name else "top level"


# --------------------------------------------------------------------------- the model


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """``(annotation without None, whether None was allowed)``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional  # noqa: UP007 - a runtime union of several args
    return annotation, False


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, …]`` → ``(T, constraints)``, following nested ``Annotated``."""
    constraints: list[Any] = []
    while get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        for item in extra:
            constraints.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        annotation = base
    return annotation, constraints


def _section_model(annotation: Any) -> tuple[type[BaseModel] | None, bool, bool]:
    """The section model a field holds: ``(model, optional, array)``, model ``None`` for a
    plain value."""
    inner, optional = _without_none(annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner, optional, False
    if get_origin(inner) is list:
        [item] = get_args(inner)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, optional, True
    return None, optional, False


def _number(value: Any) -> str:
    return (
        str(int(value))
        if isinstance(value, float) and value.is_integer() and abs(value) >= 1000
        else str(value)
    )


def _limits(constraints: Sequence[Any]) -> list[str]:
    found = []
    for c in constraints:
        if isinstance(c, annotated_types.Ge):
            found.append(f"≥ {_number(c.ge)}")
        elif isinstance(c, annotated_types.Gt):
            found.append(f"> {_number(c.gt)}")
        elif isinstance(c, annotated_types.Le):
            found.append(f"≤ {_number(c.le)}")
        elif isinstance(c, annotated_types.Lt):
            found.append(f"< {_number(c.lt)}")
    low = next((c.min_length for c in constraints if isinstance(c, annotated_types.MinLen)), None)
    high = next((c.max_length for c in constraints if isinstance(c, annotated_types.MaxLen)), None)
    if low is not None and high is not None:
        found.append(f"{low}–{high} characters")
    elif high is not None:
        found.append(f"at most {high} characters")
    elif low is not None:
        found.append(f"at least {low} characters")
    for c in constraints:
        pattern = getattr(c, "pattern", None)
        if pattern == PRINTABLE.pattern:
            found.append("no control characters")
        elif pattern:
            found.append(f"matching `{pattern}`")
    return found


_SIMPLE = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "text",
    Path: "path",
    SecretStr: "secret text",
    ipaddress.IPv4Address: "IPv4 address",
    ipaddress.IPv6Address: "IPv6 address",
}


def describe_type(annotation: Any, constraints: Sequence[Any] = ()) -> str:
    """A reader's words for a field's type and limits (``number (≥ 1, ≤ 604800)``)."""
    inner, _optional = _without_none(annotation)
    inner, more = _unwrap(inner)
    limits = _limits([*constraints, *more])
    if get_origin(inner) is Literal:
        text = "one of " + ", ".join(f"`{json.dumps(v)}`" for v in get_args(inner))
    elif get_origin(inner) is list:
        [item] = get_args(inner)
        item_text = describe_type(item)
        text = f"list of {'IP addresses' if item_text == 'IP address' else item_text}"
    elif get_origin(inner) is dict:
        key, value = get_args(inner)
        text = f"table: {describe_type(key)} → {describe_type(value)}"
    elif get_origin(inner) in (Union, types.UnionType):
        words = [describe_type(a) for a in get_args(inner)]
        text = "IP address" if set(words) == {"IPv4 address", "IPv6 address"} else " or ".join(words)
    else:
        text = _SIMPLE.get(inner, getattr(inner, "__name__", str(inner)))
    return f"{text} ({', '.join(limits)})" if limits else text


def toml_value(value: Any) -> str:
    """A default as it would be written in the TOML file."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value), ensure_ascii=False)


def _default(info: FieldInfo) -> tuple[Any, bool]:
    """``(default value, required)``."""
    if info.is_required():
        return None, True
    if info.default_factory is not None:
        return info.default_factory(), False  # type: ignore[call-arg]
    return (None if info.default is PydanticUndefined else info.default), False


def _source_comments(model: type[BaseModel]) -> dict[str, str]:
    """The ``#:`` comment right above each field in the class body, by field name — a
    field a base class defines with its comment there (the nearest class's wins)."""
    found: dict[str, str] = {}
    for base in reversed(model.__mro__):
        if (
            base is not model
            and isinstance(base, type)
            and issubclass(base, BaseModel)
            and base is not BaseModel
        ):
            found.update(_own_comments(base))
    found.update(_own_comments(model))
    return found


def _own_comments(model: type[BaseModel]) -> dict[str, str]:
    try:
        lines, _start = inspect.getsourcelines(model)
    except (OSError, TypeError):
        return {}
    try:
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except SyntaxError:
        return {}
    found: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment: list[str] = []
            i = node.lineno - 2  # the line above, as an index into ``lines``
            while i >= 0 and lines[i].strip().startswith("#:"):
                comment.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            if comment:
                found[node.target.id] = " ".join(comment)
    return found


def _docstring(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    if model.__doc__ is None or any(model.__doc__ == base.__doc__ for base in model.__mro__[1:]):
        return ""
    return inspect.cleandoc(doc).split("\n\n", 1)[0]


# --------------------------------------------------------------------------- the example file


@dataclass(slots=True)
class ExampleKey:
    value: str
    comment: str = ""
    above: str = ""


@dataclass(slots=True)
class Example:
    """What ``config/agent.example.toml`` says of each key and table."""

    keys: dict[tuple[str, ...], ExampleKey] = field(default_factory=dict)
    tables: dict[tuple[str, ...], str] = field(default_factory=dict)
    #: Comment paragraphs right under a table's last key.
    notes: dict[tuple[str, ...], list[str]] = field(default_factory=dict)


_HEADER = re.compile(r"^#?\s*\[(\[?)\s*(?P<name>[A-Za-z0-9_.]+)\s*\]\]?\s*(?:#\s?(?P<comment>.*))?$")
_KEY = re.compile(r"^(?:#\s*)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<rest>.*)$")
_CONTINUATION = re.compile(r"^\s+#\s?(?P<text>.*)$")


def _split_value(rest: str) -> tuple[str, str] | None:
    """``value  # comment`` → ``(value, comment)``: the shortest prefix that is a TOML value
    (a ``#`` inside a string is not a comment); ``None`` when no prefix is one."""
    cuts = [i for i, ch in enumerate(rest) if ch == "#"] + [len(rest)]
    for cut in cuts:
        value = rest[:cut].strip()
        if not value:
            continue
        try:
            tomllib.loads(f"k = {value}")
        except tomllib.TOMLDecodeError:
            continue
        return value, rest[cut + 1 :].strip() if cut < len(rest) else ""
    return None


def read_example(text: str, known: dict[tuple[str, ...], set[str]]) -> Example:
    """The comments of an example configuration. ``known`` maps each table path to its key
    names: a line counts as a key or a table only when the model has it, so prose that looks
    like ``name = value`` is never taken for one."""
    example = Example()
    table: tuple[str, ...] = ()
    paragraph: list[str] = []
    last: ExampleKey | None = None  # the key whose comment may continue on the next line
    trailer = False  # the paragraph began right under a key

    def end_paragraph() -> None:
        nonlocal paragraph, trailer
        if trailer and paragraph:  # a note under the table's last key
            example.notes.setdefault(table, []).append(" ".join(paragraph))
        paragraph, trailer = [], False

    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            end_paragraph()
            last = None
            continue
        header = _HEADER.match(stripped)
        if header and tuple(header["name"].split(".")) in known:
            end_paragraph()
            table = tuple(header["name"].split("."))
            example.tables[table] = (header["comment"] or "").strip()
            last = None
            continue
        continuation = _CONTINUATION.match(line)
        if continuation and last is not None:
            last.comment = f"{last.comment} {continuation['text'].strip()}".strip()
            continue
        key = _KEY.match(stripped)
        parts = _split_value(key["rest"]) if key and key["key"] in known.get(table, set()) else None
        if key and parts is not None:
            value, comment = parts
            # The comment lines right above a key are about that key, even when they start
            # right under the previous one.
            above = " ".join(paragraph)
            paragraph, trailer = [], False
            last = ExampleKey(value, comment, above)
            example.keys.setdefault((*table, key["key"]), last)
            continue
        if stripped.startswith("#"):
            words = stripped.lstrip("#").strip()
            if words and not words.startswith("---"):
                trailer = trailer or (last is not None and not paragraph)
                paragraph.append(words)
        else:
            end_paragraph()
        last = None
    end_paragraph()
    return example


# --------------------------------------------------------------------------- the reference


def _tables(
    model: type[BaseModel], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], type[BaseModel]]]:
    yield path, model
    for name, info in model.model_fields.items():
        sub, _optional, _array = _section_model(info.annotation)
        if sub is not None:
            yield from _tables(sub, (*path, name))


def _clean(text: str) -> str:
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    text = re.sub(r":(?:func|class|mod|meth|attr|data):`~?([^`]+)`", r"`\1`", text)
    return " ".join(text.split())


def _sentence(text: str) -> str:
    text = text.strip()
    if text[:1].islower() and not text[1:2].isupper():  # "mDNS …" stays as it is
        text = text[:1].upper() + text[1:]
    return text if text.endswith(("…", ".")) else text + "."


def _plain(value: Any) -> Any:
    """A default as the TOML reader would give it back (paths, secrets, addresses as text)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def _same_value(toml_text: str, value: Any) -> bool:
    try:
        return bool(tomllib.loads(f"k = {toml_text}")["k"] == _plain(value))
    except tomllib.TOMLDecodeError:
        return False


def _only_choices(comment: str, annotation: Any) -> bool:
    """Whether ``comment`` merely lists a ``Literal``'s choices (``debug | info | …``)."""
    inner, _optional = _without_none(annotation)
    inner, _constraints = _unwrap(inner)
    if get_origin(inner) is not Literal:
        return False
    words = set(re.findall(r"[A-Za-z0-9]+", comment)) - {"or"}
    return words == {str(v) for v in get_args(inner)}


def key_paths(model: type[BaseModel] = AgentConfig, prefix: str = "") -> Iterator[str]:
    """Every key of ``model`` as the reference writes it (``sources.usb.interval``,
    ``sources.ssh.hosts[].host``), tables excluded."""
    for name, info in model.model_fields.items():
        sub, _optional, array = _section_model(info.annotation)
        if sub is None:
            yield prefix + name
        else:
            yield from key_paths(sub, f"{prefix}{name}{'[]' if array else ''}.")


def sections(
    model: type[BaseModel] = AgentConfig,
    example_text: str | None = None,
    fallback: dict[str, str] | None = None,
) -> list[Section]:
    """Every table of ``model`` (the top level first, then depth-first in field order), each
    with its keys. ``fallback`` (default :data:`FALLBACK`) gives the meaning of keys that
    neither the model's source nor the example explains."""
    known = {
        path: {n for n, i in m.model_fields.items() if _section_model(i.annotation)[0] is None}
        for path, m in _tables(model)
    }
    example = read_example(example_text, known) if example_text is not None else Example()
    extra = FALLBACK if fallback is None else fallback
    found: list[Section] = []

    def visit(
        current: type[BaseModel], path: tuple[str, ...], prefix: str, optional: bool, array: bool
    ) -> None:
        texts = [_docstring(current) or example.tables.get(path, ""), *example.notes.get(path, [])]
        section = Section(path, _clean(" ".join(_sentence(t) for t in texts if t)), optional, array)
        found.append(section)
        comments = _source_comments(current)
        later: list[tuple[type[BaseModel], tuple[str, ...], str, bool, bool]] = []
        for name, info in current.model_fields.items():
            sub, sub_optional, sub_array = _section_model(info.annotation)
            if sub is not None:
                later.append(
                    (
                        sub,
                        (*path, name),
                        f"{prefix}{name}{'[]' if sub_array else ''}.",
                        sub_optional,
                        sub_array,
                    )
                )
                continue
            dotted = prefix + name
            seen = example.keys.get((*path, name))
            said = ""
            if seen is not None:
                said = (
                    seen.comment
                    if seen.comment and not _only_choices(seen.comment, info.annotation)
                    else seen.above
                )
            meaning = info.description or comments.get(name) or said or extra.get(dotted, "")
            value, required = _default(info)
            default = "**required**" if required else "unset" if value is None else f"`{toml_value(value)}`"
            if seen is not None and (required or not _same_value(seen.value, value)):
                default += f"; e.g. `{seen.value}`"
            section.keys.append(
                Key(
                    dotted,
                    describe_type(info.annotation, info.metadata),
                    default,
                    _sentence(_clean(meaning)) if meaning else "",
                )
            )
        for args in later:
            visit(*args)

    visit(model, (), "", False, False)
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _environment(section: Section) -> str:
    if section.array:
        *parent, name = section.path
        var = "ROOMSYNC_" + "__".join(p.upper() for p in (*parent, name))
        return f"Environment: the whole list as JSON, `{var}='[{{…}}, …]'`."
    prefix = "ROOMSYNC_" + "".join(f"{p.upper()}__" for p in section.path)
    return f"Environment: `{prefix}<KEY>`."


def generate(model: type[BaseModel] = AgentConfig, example: Path | None = EXAMPLE) -> str:
    """The generated part of the document (without the markers)."""
    text = None
    if example is not None:
        try:
            text = example.read_text(encoding="utf-8")
        except OSError:
            text = None
    out: list[str] = []
    for section in sections(model, text):
        if not section.keys:
            continue
        out.append(f"### `{section.header}`" if section.path else "### Top level")
        out.append("")
        intro = []
        if section.text:
            intro.append(section.text)
        if section.array:
            intro.append("An array of tables: repeat the header once per entry.")
        elif section.optional:
            intro.append("An optional table: absent unless written.")
        intro.append(_environment(section))
        out.append(" ".join(intro))
        out.append("")
        out.append("| Key | Type and limits | Default | Meaning |")
        out.append("|---|---|---|---|")
        for key in section.keys:
            out.append(
                f"| `{_cell(key.dotted)}` | {_cell(key.type)} | {_cell(key.default)} | {_cell(key.meaning)} |"
            )
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def render(markdown: str, model: type[BaseModel] = AgentConfig, example: Path | None = EXAMPLE) -> str:
    """``markdown`` with the part between :data:`BEGIN` and :data:`END` regenerated. Raises
    :class:`ValueError` unless the document holds the pair exactly once."""
    if markdown.count(BEGIN) != 1 or markdown.count(END) != 1 or not _BLOCK.search(markdown):
        raise ValueError(f"expected one {BEGIN} … {END} block")
    block = f"{BEGIN}\n{generate(model, example)}{END}"
    return _BLOCK.sub(lambda _m: block, markdown)


def main(argv: Sequence[str] | None = None) -> int:
    """``--write DOC`` regenerates the document's configuration reference, ``--check DOC``
    exits 1 when it is stale, ``--print`` prints the generated part."""
    parser = argparse.ArgumentParser(prog="python -m tools.configdoc", description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="DOC", type=Path)
    group.add_argument("--check", metavar="DOC", type=Path)
    group.add_argument("--print", action="store_true", dest="print_only")
    args = parser.parse_args(argv)
    if args.print_only:
        sys.stdout.write(generate())
        return 0
    path: Path = args.write or args.check
    return sync_document(
        path,
        render,
        check=bool(args.check),
        stale=f"the configuration reference is stale; run python -m tools.configdoc --write {path}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
