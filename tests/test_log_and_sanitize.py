"""Logging (JSON lines, masked secrets) and cleaning of device strings."""

from __future__ import annotations

import io
import json
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.log import configure, get_logger, use_json
from agent.sanitize import clean_serial, clean_text, is_placeholder_serial


def test_json_lines_with_stable_keys_and_masked_secrets() -> None:
    stream = io.StringIO()
    configure("info", "json", stream)
    get_logger().info(
        "snmp.sweep.done",
        hosts=254,
        responders=20,
        community="public",
        token="abc123",
        token_file="/etc/roomsync/portal.token",
        headers={"Authorization": "Bearer abc123"},
        hosts_list=[{"host": "10.1.2.3", "password": "abc123"}, ("x", {"auth_key": "abc123"})],
    )
    get_logger().debug("hidden.at.info")
    [line] = stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "snmp.sweep.done" and event["hosts"] == 254 and event["level"] == "info"
    assert event["community"] == event["token"] == "********"
    assert event["headers"]["Authorization"] == "********"
    assert event["token_file"] == "/etc/roomsync/portal.token"  # a path is not a secret
    assert event["hosts_list"][0] == {"host": "10.1.2.3", "password": "********"}  # inside lists too
    assert "abc123" not in line


def test_console_on_terminal_json_under_systemd() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert use_json("auto", Tty(), environ={}) is False
    assert use_json("auto", Tty(), environ={"INVOCATION_ID": "x"}) is True
    assert use_json("auto", io.StringIO(), environ={}) is True
    assert use_json("console", io.StringIO(), environ={"JOURNAL_STREAM": "1:2"}) is False
    stream = Tty()
    configure("info", "auto", stream)
    get_logger().info("usb.scan.done", devices=3)
    assert "usb.scan.done" in stream.getvalue() and not stream.getvalue().startswith("{")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=600), st.text(max_size=600)), st.integers(1, 200))
def test_clean_text_always_printable_and_bounded(raw: bytes | str, max_len: int) -> None:
    result = clean_text(raw, max_len=max_len)
    if result.value is not None:
        assert 0 < len(result.value) <= max_len
        assert result.value == result.value.strip()
        assert not any(unicodedata.category(c)[0] == "C" for c in result.value)


def test_joiners_are_kept_other_format_characters_dropped() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert clean_text(f"Room {family}").value == f"Room {family}"
    assert clean_text("می\u200cخواهم").value == "می\u200cخواهم"  # Persian ZWNJ
    dropped = clean_text("ab\u200bcd\u202e")  # zero-width space, right-to-left override
    assert dropped.value == "abcd" and "control-chars" in dropped.problems


def test_placeholders() -> None:
    for value in ("0000000000", "FFFFFFFF", "To be filled by O.E.M.", "Default string", "", None):
        assert is_placeholder_serial(value), value
    for value in ("2313FD1N08Z2", "476C95B2", "G6N0CV123456"):
        assert not is_placeholder_serial(value), value
    assert clean_serial(b"  2313FD1N08Z2\x00\x00\n").value == "2313FD1N08Z2"
    assert clean_serial(b"System Serial Number").problems[-1] == "placeholder"
