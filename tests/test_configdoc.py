"""The configuration reference (docs/configuration.md) is generated from the configuration model
(``tools/configdoc.py``): it must be fresh, name every key with a meaning, and go stale when the
model changes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from agent.config import AgentConfig
from tools import configdoc

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "configuration.md"


def every_key(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of the model, walked here independently of the generator: tables (nested
    models, optional or not) are descended into, arrays of tables are written ``name[]``."""
    found = []
    for name, info in model.model_fields.items():
        annotation: Any = info.annotation
        args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
        if len(args) == 1 and getattr(annotation, "__origin__", None) is not list:
            annotation = args[0]  # X | None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += every_key(annotation, f"{prefix}{name}.")
        elif (
            getattr(annotation, "__origin__", None) is list
            and isinstance(annotation.__args__[0], type)
            and issubclass(annotation.__args__[0], BaseModel)
        ):
            found += every_key(annotation.__args__[0], f"{prefix}{name}[].")
        else:
            found.append(prefix + name)
    return found


def generated(text: str) -> str:
    start, end = text.index(configdoc.BEGIN), text.index(configdoc.END)
    return text[start:end]


def rows(text: str) -> dict[str, list[str]]:
    """The generated tables' rows by key: [type, default, meaning]."""
    found = {}
    for line in generated(text).splitlines():
        match = re.match(r"^\| `([^`]+)` \| (.*) \|$", line)
        if match:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", match[2])]
            found[match[1]] = cells
    return found


def test_the_document_is_fresh() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert configdoc.main(["--check", str(DOC)]) == 0, (
        "docs/configuration.md is stale: run python -m tools.configdoc --write docs/configuration.md"
    )
    assert configdoc.render(text) == text


def test_every_key_is_in_the_document_with_a_meaning() -> None:
    keys = every_key(AgentConfig)
    assert len(keys) > 50 and "sources.ssh.hosts[].host" in keys and "sources.snmp.v3.user" in keys
    table = rows(DOC.read_text(encoding="utf-8"))
    assert sorted(table) == sorted(keys)
    assert list(configdoc.key_paths()) == keys  # the generator walks the same keys
    for key, (type_, default, meaning) in table.items():
        assert type_ and default, key
        assert meaning, f"{key} has no meaning: add a #: comment in agent/config.py"
    for header in ("[room]", "[sources.snmp.v3]", "[[sources.ssh.hosts]]", "[portal]", "[coverage]"):
        assert f"### `{header}`" in DOC.read_text(encoding="utf-8")


def test_defaults_limits_and_choices_come_from_the_model() -> None:
    table = rows(DOC.read_text(encoding="utf-8"))
    assert table["sources.usb.interval"][:2] == ["number (≥ 1, ≤ 604800)", "`300.0`"]
    assert table["room.id"][1].startswith("**required**")
    assert table["log.level"][0] == 'one of `"debug"`, `"info"`, `"warning"`, `"error"`'
    assert table["sources.mdns.service_types"][1] == '`["_https._tcp.local.", "_http._tcp.local."]`'
    assert "\\|" in table["sources.mdns.service_types"][0]  # a | in a cell is escaped
    assert table["portal.url"][1] == 'unset; e.g. `"https://portal.example.com"`'
    assert table["store.history_days"][1] == "`30.0`"  # the example's 30 is the default: no e.g.


class _ChangedDefault(AgentConfig):
    state_dir: Path | None = Path("/srv/roomsync")


class _NewKey(AgentConfig):
    #: A key nobody documented in the reference yet.
    shiny: Annotated[int, Field(ge=2, le=9)] = 4


@pytest.mark.parametrize("changed", [_ChangedDefault, _NewKey])
def test_a_model_change_makes_the_document_stale(changed: type[AgentConfig]) -> None:
    text = DOC.read_text(encoding="utf-8")
    fresh = configdoc.render(text, model=changed)
    assert fresh != text
    if changed is _NewKey:
        row = "| `shiny` | integer (≥ 2, ≤ 9) | `4` | A key nobody documented in the reference yet. |"
        assert row in fresh
    else:
        assert '| `state_dir` | path | `"/srv/roomsync"`; e.g. `"/var/lib/roomsync"` |' in fresh


def test_check_fails_on_a_stale_copy_and_write_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = DOC.read_text(encoding="utf-8")
    stale = tmp_path / "configuration.md"
    stale.write_text(text.replace("| `300.0` |", "| `30.0` |", 1), encoding="utf-8")
    assert configdoc.main(["--check", str(stale)]) == 1
    assert "stale" in capsys.readouterr().err
    assert configdoc.main(["--write", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == text
    assert configdoc.main(["--check", str(stale)]) == 0


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace(configdoc.END, ""),
        lambda t: t.replace(configdoc.BEGIN, ""),
        lambda t: t + "\n" + configdoc.BEGIN + "\n" + configdoc.END + "\n",
    ],
)
def test_missing_or_repeated_markers_are_errors(tmp_path: Path, edit: Any) -> None:
    broken = tmp_path / "doc.md"
    broken.write_text(edit(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    assert configdoc.main(["--write", str(broken)]) == 2
    assert configdoc.main(["--check", str(tmp_path / "absent.md")]) == 2


def test_every_fallback_meaning_is_for_a_real_key_and_still_needed() -> None:
    """FALLBACK is for keys neither agent/config.py nor the example file explains; once one of
    them does, the entry must go (else two texts for one key drift apart)."""
    keys = set(every_key(AgentConfig))
    assert set(configdoc.FALLBACK) <= keys
    example = configdoc.EXAMPLE.read_text(encoding="utf-8")
    without = {
        k.dotted: k.meaning for s in configdoc.sections(AgentConfig, example, fallback={}) for k in s.keys
    }
    stale = [k for k in configdoc.FALLBACK if without[k]]
    assert stale == [], f"documented elsewhere now: delete {stale} from tools/configdoc.py FALLBACK"


def test_the_example_reader() -> None:
    text = """\
# A paragraph about the first key.
# first = "x"
[table]                 # what the table is
plain = 1               # a plain key
hashed = "a # b"        # not the value's hash
# commented = true      # a commented-out key
                        # continued here
listing = 5
# Prose that says not = "a key"
# An unknown = "key" in prose is ignored.
# after = 2
# A note under the table's last key.

[other]
"""
    known = {
        (): {"first"},
        ("table",): {"plain", "hashed", "commented", "listing", "after"},
        ("other",): set(),
    }
    example = configdoc.read_example(text, known)
    first = example.keys[("first",)]
    assert (first.value, first.comment, first.above) == ('"x"', "", "A paragraph about the first key.")
    assert example.keys[("table", "hashed")].value == '"a # b"'
    assert example.keys[("table", "hashed")].comment == "not the value's hash"
    assert example.keys[("table", "commented")].comment == "a commented-out key continued here"
    assert example.keys[("table", "listing")].comment == ""
    assert example.tables[("table",)] == "what the table is"
    assert ("table", "not") not in example.keys and ("table", "unknown") not in example.keys
    assert example.keys[("table", "after")].above == (
        'Prose that says not = "a key" An unknown = "key" in prose is ignored.'
    )
    assert example.notes[("table",)] == ["A note under the table's last key."]
