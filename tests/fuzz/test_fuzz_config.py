"""Fuzz: the configuration (agent/config.py ``load_config``): TOML files and environment
overrides.

Inputs: random TOML documents written with tomli_w from random trees; trees that use the real
key names (walked from the pydantic model) with values of every type in every place; the
shipped ``config/agent.example.toml`` with nodes mutated; random bytes and hostile TOML text
(nesting bombs, integers with thousands of digits, bad UTF-8); ``ROOMSYNC_*`` variables with
random names and values, JSON bombs included.

Documented behaviour: "Raises :class:`ConfigError`" — a :class:`LoadedConfig` or a
ConfigError whose ``problems`` lists every problem, one line each, "never as a traceback".
"""

from __future__ import annotations

import json
import tomllib
import typing
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import event, example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from agent.config import AgentConfig, ConfigError, LoadedConfig, effective_config, load_config
from agent.sanitize import MASK
from tests.fuzz import fuzz, mutated, mutated_tree, nesting_bomb

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "agent.example.toml"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None`` or ``list[X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _key_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], bool]]:
    """Every key of the configuration as ``(path, is_list_of_tables)``."""
    paths = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        sub = _model_of(info.annotation)
        is_list = typing.get_origin(info.annotation) is list or any(
            typing.get_origin(a) is list for a in typing.get_args(info.annotation)
        )
        paths.append(((*prefix, key), sub is not None and is_list))
        if sub is not None:
            paths += _key_paths(sub, (*prefix, key))
    return paths


KEY_PATHS = _key_paths(AgentConfig)
LEAF_PATHS = [p for p, _ in KEY_PATHS]

# TOML can hold no null: the values tomli_w can write.
TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=60),
    st.sampled_from(
        [
            "",
            " ",
            "2c",
            "3",
            "SHA",
            "AES",
            "info",
            "json",
            "/sys",
            "127.0.0.1:8765",
            "unix:",
            "unix:/run/x.sock",
            "https://p.example",
            "http://127.0.0.1:1",
            "http://10.0.0.1",
            "https://u:p@h",
            "https://[::1",
            "10.0.0.0/8",
            "10.0.0.1:²",
            "oslo-4-12",
            "_https._tcp.local.",
            "::1",
            "SLX",
            "100",
            "x" * 201,
        ]
    ),
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.dates(),
    st.times(),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=12,
)


@st.composite
def config_trees(draw: st.DrawFn) -> dict[str, Any]:
    """A tree that uses the configuration's own key names, with values of any type."""
    tree: dict[str, Any] = {}
    for path in draw(st.lists(st.sampled_from(LEAF_PATHS), max_size=8)):
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            table = dict(KEY_PATHS).get(path, False)
            value = (
                draw(
                    st.lists(
                        st.dictionaries(
                            st.sampled_from([p[-1] for p in LEAF_PATHS]), TOML_SCALARS, max_size=5
                        ),
                        max_size=3,
                    )
                )
                if table
                else draw(TOML_VALUES)
            )
            node[path[-1]] = value
    if draw(st.booleans()):
        tree[draw(st.text(max_size=10))] = draw(TOML_VALUES)
    return tree


def _example_tree() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


def _toml(tree: dict[str, Any]) -> bytes:
    return tomli_w.dumps(tree).encode("utf-8")


#: Documents that stress the TOML reader rather than the model.
HOSTILE_TOML = st.one_of(
    nesting_bomb(st.integers(1, 50_000)).map(lambda bomb: "a = " + bomb.replace('{"a":', "{a=")),
    st.integers(1, 20_000).map(lambda n: "a = " + "[" * n + "]" * n),
    st.integers(4000, 20_000).map(lambda n: "a = " + "9" * n),
    st.integers(1, 5_000).map(lambda n: "[" + ".".join(["t"] * n) + "]"),
    st.sampled_from(
        [
            "a = 1979-05-27T07:32:00Z",
            "a = 0x7fffffffffffffffff",
            "a = nan",
            "a = inf",
            'a = "\\uD800"',
            "a = '''",
            "[room]\nid = 1\n[room]\n",
            "\ufeffa = 1",
            "a.b.c = 1\na.b = 2",
            "[[sources.ssh.hosts]]\nhost = 'x'\n[sources.ssh.hosts]",
        ]
    ),
).map(str.encode)
FILES = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.text(max_size=12), TOML_VALUES, max_size=6).map(_toml),
    config_trees().map(_toml),
    mutated_tree(_example_tree(), max_steps=4, values=TOML_VALUES).map(_toml),
    mutated_tree(_example_tree(), max_steps=1, values=TOML_SCALARS).map(_toml),  # one value wrong
    st.just(_toml(_example_tree())).flatmap(lambda b: mutated(b, max_steps=3)),
    HOSTILE_TOML,
)


def _env_names() -> st.SearchStrategy[str]:
    known = st.sampled_from(LEAF_PATHS).map(lambda p: "ROOMSYNC_" + "__".join(p).upper())
    made_up = st.text(st.sampled_from("ABCDEFGHIJ_"), max_size=20).map(lambda t: "ROOMSYNC_" + t)
    return st.one_of(known, made_up, st.just("ROOMSYNC_CONFIG"), st.just("HOME"))


ENV_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["true", "false", "1", "[]", "{}", "[1,", '{"a": 1}', "null", '["10.0.0.0/24"]', "  [  ", "{x}"]
    ),
    nesting_bomb(st.integers(1, 100_000)),
    st.integers(4000, 9000).map(lambda n: "[" + "9" * n + "]"),
    TOML_VALUES.map(lambda v: json.dumps(v, default=str)),
)


def _check(loaded: LoadedConfig) -> None:
    assert isinstance(loaded.config, AgentConfig)
    shown = effective_config(loaded.config)  # check-config prints this; it must not fail
    tomli_w.dumps({k: v for k, v in shown.items() if v is not None})
    community = loaded.config.sources.snmp.community.get_secret_value()
    assert shown["sources"]["snmp"]["community"] in (MASK, "**********") or not community


def _load(tmp: Path, content: bytes, environ: dict[str, str]) -> None:
    path = tmp / "agent.toml"
    path.write_bytes(content)
    try:
        loaded = load_config(path, environ=environ)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        assert "Traceback" not in str(exc)
        event("refused")
        return
    event("loaded")
    _check(loaded)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


@fuzz(100)
@given(FILES)
@example(b"a = " + b"[" * 3_000)  # was a RecursionError out of tomllib
@example(b"a = " + b"9" * 5_000)  # was a ValueError (integer string conversion limit)
@example(b'[api]\nlisten = "a:\xc2\xb2"')
@example(b"[sources.snmp]\ntargets = ['1.2.3.4:\xc2\xb2']")
def test_config_files_load_or_raise_config_error(tmp: Path, content: bytes) -> None:
    _load(tmp, content, {})


@fuzz(140)
@given(st.dictionaries(_env_names(), ENV_VALUES, max_size=4), st.sampled_from([b"", b"[room]\nid = 'a'\n"]))
@example({"ROOMSYNC_ROOM__NAME": "[" * 3_000}, b"")  # was a RecursionError out of json
@example({"ROOMSYNC_ROOM__ID__X": "1"}, b"[room]\nid = 'a'\n")
@example({"ROOMSYNC___": "1"}, b"")
def test_environment_overrides_load_or_raise_config_error(
    tmp: Path, environ: dict[str, str], content: bytes
) -> None:
    _load(tmp, content, environ)


def test_key_paths_are_the_models() -> None:
    """The generator knows the real keys (guards _key_paths against model changes)."""
    assert ("room", "id") in LEAF_PATHS and ("sources", "snmp", "v3", "user") in LEAF_PATHS
    assert dict(KEY_PATHS)[("sources", "ssh", "hosts")] is True
