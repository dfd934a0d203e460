"""The command line's output helpers: a list printed an item at a time, a table a line at a
time, exactly as the whole-list helpers print them."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agent.cli.common import print_json, print_json_items, print_table, table

_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


def printed(call: Any, *args: Any) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        call(*args)
    return out.getvalue()


@given(items=st.lists(_json, max_size=5))
def test_items_print_as_the_whole_list_does(items: list[Any]) -> None:
    assert printed(print_json_items, iter(items)) == printed(print_json, items)


@given(rows=st.lists(st.lists(_text, min_size=3, max_size=3), max_size=6))
def test_a_table_prints_as_it_is_made_whole(rows: list[list[str]]) -> None:
    headers = ["STATUS", "SERIAL", "REASON"]
    assert printed(print_table, headers, lambda: iter(rows)) == table(headers, rows) + "\n"
