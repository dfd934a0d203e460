"""Fuzz tests (hypothesis) of every parser that reads outside input (issue 8, item 2).

The rule they check (brief: "bad input gets a clear error and loses nothing"): whatever a
device, a peer, a portal or an operator's file hands a parser, the parser returns a result or
raises the exception its docstring names — never another exception type, never a hang, and
never more output than it promises (length caps).

One file per area: ``test_fuzz_sync.py`` (Sync frames, the UsbMsg envelope, the outgoing
gate, the client and replay decode paths, device-info JSON), ``test_fuzz_snmp.py``,
``test_fuzz_mdns.py``, ``test_fuzz_csv.py`` (entitlements, room map, csvtext),
``test_fuzz_config.py``, ``test_fuzz_usb.py`` (sysfs strings, sanitize),
``test_fuzz_portal.py`` (delivery replies, the portal protocol), ``test_fuzz_room_pc.py``
(DMI, os-release, PowerShell output) and ``test_fuzz_usbfw.py`` (the USB firmware decoders,
UVC descriptors, video4linux recordings).

Budgets
-------
Every test is decorated with :func:`fuzz` and its CI example count. In CI (no environment
variable set) the profile ``roomsync-fuzz-ci`` applies: derandomized (the same examples on
every run, so a red build is reproducible and a green one stays green), no example database,
a per-example deadline. The whole directory runs in about 20 s on 2 cores (budget: 30 s).

The long run sets ``FUZZ_EXAMPLES=N`` (``bench/fuzz.py`` does it): profile
``roomsync-fuzz-long``, every test runs ``N`` examples with a random seed (pass pytest's
``--hypothesis-seed`` to repeat a run). The variable deliberately has no ``ROOMSYNC_`` prefix:
the CLI reads ``ROOMSYNC_*`` variables as configuration keys.

:data:`EXAMPLES_RUN` counts the examples each test ran in this process (explicit
``@example`` cases and shrinking included), for ``bench/fuzz.py``'s report.
"""

from __future__ import annotations

import copy
import functools
import os
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES_ENV = "FUZZ_EXAMPLES"
CI_PROFILE = "roomsync-fuzz-ci"
LONG_PROFILE = "roomsync-fuzz-long"
#: Per-example deadline: generous (parsers take micro- to milliseconds; the largest inputs
#: here, a 1 MiB JSON document, take tens of ms) but it turns a hang into a failure at once.
DEADLINE = timedelta(seconds=3)
#: Examples run per test, keyed ``module::test`` (module without the ``tests.fuzz.`` prefix).
EXAMPLES_RUN: Counter[str] = Counter()


def _long_run_examples() -> int | None:
    text = os.environ.get(EXAMPLES_ENV, "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise RuntimeError(f"{EXAMPLES_ENV}={text!r}: expected a whole number of examples (≥ 1)")
    return int(text)


LONG_RUN_EXAMPLES = _long_run_examples()

_SUPPRESSED = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]
settings.register_profile(
    CI_PROFILE,
    derandomize=True,
    database=None,
    deadline=DEADLINE,
    suppress_health_check=_SUPPRESSED,
    print_blob=True,
)
settings.register_profile(
    LONG_PROFILE,
    parent=settings.get_profile(CI_PROFILE),
    derandomize=False,
    max_examples=LONG_RUN_EXAMPLES or 1,
)

_T = TypeVar("_T", bound=Callable[..., Any])


def fuzz(examples: int, *, deadline: timedelta | None = None) -> Callable[[_T], _T]:
    """Settings for one fuzz test, above its ``@given``: ``examples`` in CI, ``FUZZ_EXAMPLES``
    in a long run; counts the examples it runs in :data:`EXAMPLES_RUN`. The profile is applied
    per test (never loaded globally), so the rest of the suite keeps its own settings."""

    def decorate(test: _T) -> _T:
        handle = test.hypothesis  # type: ignore[attr-defined]  # set by @given
        inner = handle.inner_test
        key = f"{test.__module__.removeprefix('tests.fuzz.')}::{test.__name__}"

        @functools.wraps(inner)
        def counted(*args: Any, **kwargs: Any) -> Any:
            EXAMPLES_RUN[key] += 1
            return inner(*args, **kwargs)

        handle.inner_test = counted
        profile = LONG_PROFILE if LONG_RUN_EXAMPLES else CI_PROFILE
        chosen = settings(
            settings.get_profile(profile),
            max_examples=LONG_RUN_EXAMPLES or examples,
            deadline=deadline or DEADLINE,
        )
        return chosen(test)  # type: ignore[no-any-return]

    return decorate


# --------------------------------------------------------------------------- strategies

#: u32 values that break length and sequence fields.
INTERESTING_U32 = st.sampled_from(
    [
        0,
        1,
        7,
        8,
        11,
        12,
        13,
        0x7F,
        0x80,
        0xFF,
        0x100,
        0x1000,
        0xFFFF,
        0x10000,
        1 << 20,
        (1 << 20) + 1,
        0x7FFF_FFFF,
        0x8000_0000,
        0xFFFF_FFFE,
        0xFFFF_FFFF,
        0xCC06,
        0xCC07,
        0xCC08,
        0xFF01,
        0xFF02,
        0xFF03,
    ]
)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, max_steps: int = 4) -> bytes:
    """``seed`` changed by a few byte-level mutations: bit flips, overwrites, inserts,
    deletes, truncation, duplication, and u32 fields set to boundary values."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(
            st.sampled_from(["flip", "set", "insert", "delete", "truncate", "u32", "duplicate", "append"])
        )
        size = len(data)
        if kind == "flip" and size:
            i = draw(st.integers(0, size - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and size:
            data[draw(st.integers(0, size - 1))] = draw(st.integers(0, 255))
        elif kind == "insert":
            i = draw(st.integers(0, size))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete" and size:
            i = draw(st.integers(0, size - 1))
            del data[i : draw(st.integers(i + 1, min(size, i + 32)))]
        elif kind == "truncate":
            del data[draw(st.integers(0, size)) :]
        elif kind == "u32" and size >= 4:
            i = draw(st.integers(0, size - 4))
            data[i : i + 4] = struct.pack("<I", draw(INTERESTING_U32))
        elif kind == "duplicate" and size:
            i = draw(st.integers(0, size - 1))
            data[i:i] = data[i : draw(st.integers(i + 1, min(size, i + 64)))]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
#: Random JSON trees: every type in every place.
JSON_TREES = st.recursive(
    JSON_SCALARS,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5),
    max_leaves=25,
)


_BOMB_DEPTHS = st.integers(1, 120_000)


def nesting_bomb(depth: st.SearchStrategy[int] = _BOMB_DEPTHS) -> st.SearchStrategy[str]:
    """JSON text nested ``depth`` levels deep (``[[[…]]]``, ``{"a":{"a":…}}``), closed or not."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        n = draw(depth)
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"a":[', "]}")]))
        tail = draw(st.sampled_from(["", "1", "null"]))
        return opener * n + tail + (closer * n if draw(st.booleans()) else "")

    return build()


#: JSON texts that stress the decoder rather than the schema: nesting bombs, integers with
#: more digits than Python converts, huge strings, non-finite constants, odd encodings.
HOSTILE_JSON_TEXT = st.one_of(
    nesting_bomb(),
    st.integers(4000, 20_000).map(lambda n: "9" * n),
    st.integers(4000, 20_000).map(lambda n: "[" + "1" * n + "]"),
    st.integers(0, 1_500_000).map(lambda n: '"' + "x" * n + '"'),
    st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "[NaN]",
            '{"a": Infinity}',
            "1e999",
            "-0",
            "\ufeff{}",
            "{}\x00",
            '"\\ud800"',
            '{"a": "\\udfff"}',
            "",
            " ",
            "{",
            "}",
            "[",
            '{"a":1,"a":2}',
        ]
    ),
)


def tree_paths(tree: Any) -> Iterator[tuple[Any, Any]]:
    """Every ``(container, key)`` of a JSON tree, for in-place mutation."""
    stack = [tree]
    while stack:
        node = stack.pop()
        keys: Any = (
            list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else ()
        )
        for key in keys:
            yield node, key
            child = node[key]
            if isinstance(child, dict | list):
                stack.append(child)


@st.composite
def mutated_tree(
    draw: st.DrawFn, tree: Any, max_steps: int = 4, values: st.SearchStrategy[Any] = JSON_TREES
) -> Any:
    """A deep copy of ``tree`` with a few nodes replaced by random JSON (wrong types
    included), deleted, duplicated or wrapped in a list."""
    tree = copy.deepcopy(tree)
    for _ in range(draw(st.integers(1, max_steps))):
        paths = list(tree_paths(tree))
        if not paths:
            break
        container, key = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "wrap", "duplicate"]))
        if action == "replace":
            container[key] = draw(values)
        elif action == "delete":
            if isinstance(container, dict):
                del container[key]
            else:
                container.pop(key)
        elif action == "wrap":
            container[key] = [container[key]]
        elif isinstance(container, list):
            container.insert(key, copy.deepcopy(container[key]))
        else:
            container[draw(st.text(max_size=8))] = copy.deepcopy(container[key])
    return tree


# --------------------------------------------------------------------------- invariants


def strings_in(tree: Any) -> Iterator[str]:
    """Every string (keys included) in a tree of dicts, lists and scalars."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)


def has_control_chars(text: str) -> bool:
    """True when ``text`` holds a C0/C1 control character (what cleaning must remove)."""
    return any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in text)


def check_observation(obs: Any) -> dict[str, Any]:
    """What every collector's observation must be, whatever it read: convertible to the
    inventory's device and to strict JSON (the scan's ``--json``, the portal), with no
    control character in any string. Returns the device's dict."""
    import json

    from agent.model import Device

    doc = Device.from_observation(obs).to_dict()
    json.dumps(doc, allow_nan=False)
    bad = [s for s in strings_in(doc) if has_control_chars(s)]
    assert not bad, f"control characters reached the observation: {bad[:3]!r}"
    return doc
