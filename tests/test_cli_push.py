"""``roomsync push``, ``roomsync outbox`` and ``roomsync export --format json`` as an operator
runs them (subprocesses, real SQLite, the real portal stand-in on loopback)."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.uploader.protocol import InventoryMessage, parse_message
from tests.sysfs import add_device
from tools.portal_standin import PortalStandIn

TOKEN = f"tok-{secrets.token_hex(16)}"
SERIALS = ["2301SC0005E2", "2313FD1N08Z2"]


def roomsync(site: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(site / "agent.toml")],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def push(
    site: Path, portal: PortalStandIn | str, *args: str, token_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    url = portal if isinstance(portal, str) else portal.url
    return roomsync(
        site,
        "push",
        "--once",
        "--portal-url",
        url,
        "--token-file",
        str(token_file or site / "portal.token"),
        *args,
    )


def outbox(site: Path) -> dict[str, Any]:
    shown = roomsync(site, "outbox", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Two units on a fake USB bus, a configuration, a token file, and one stored scan."""
    add_device(tmp_path / "sys", "2-1.1", 0x046D, 0x089B, serial="2313FD1N08Z2", product="Logi Rally Bar")
    add_device(tmp_path / "sys", "2-2", 0x046D, 0x08E2, serial="2301SC0005E2", product="Logi Scribe")
    (tmp_path / "agent.toml").write_text(
        f'state_dir = "{tmp_path / "state"}"\n[room]\nid = "oslo-4-12"\nname = "Fjord"\n'
        "[portal]\ntimeout = 5\nbackoff_cap = 1\n"
    )
    (tmp_path / "portal.token").write_text(TOKEN + "\n")
    scanned = roomsync(tmp_path, "scan", "--sysfs-root", str(tmp_path / "sys"), "--json")
    assert scanned.returncode == 0, scanned.stderr
    assert len(json.loads(scanned.stdout)["events"]) == 2
    return tmp_path


@pytest.fixture
def portal() -> Iterator[PortalStandIn]:
    with PortalStandIn(TOKEN) as running:
        yield running


def without_volatile(message: InventoryMessage) -> dict[str, Any]:
    return message.model_dump(mode="json", by_alias=True, exclude={"sequence", "generated_at"})


def test_push_delivers_the_stored_scan_and_export_is_what_it_sends(site: Path, portal: PortalStandIn):
    before = outbox(site)
    assert (before["pending"], before["parked"], before["empty"]) == (2, 0, False)
    assert [m["kind"] for m in before["messages"]] == ["events", "inventory"]
    assert before["portal"]["state"] == "unknown"

    exported = roomsync(site, "export", "--format", "json")
    assert exported.returncode == 0, exported.stderr
    snapshot = parse_message(exported.stdout)
    assert isinstance(snapshot, InventoryMessage)
    assert snapshot.agent.id == before["agent_id"]

    pushed = push(site, portal)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "delivered 2 message(s) (2 event(s))" in pushed.stdout and "outbox empty" in pushed.stdout
    assert sorted((str(e.type), e.serial) for e in portal.events) == [
        ("device.added", serial) for serial in SERIALS
    ]
    latest = portal.latest_inventory
    assert latest is not None
    assert sorted(d.serial or "" for p in latest.places for d in p.devices) == SERIALS
    assert without_volatile(snapshot) == without_volatile(latest)  # export shows what push sends
    assert snapshot.sequence > latest.sequence  # a later one would supersede it
    assert [m.idempotency_key for m in portal.messages] == [m["idempotency_key"] for m in before["messages"]]

    after = outbox(site)
    assert (after["pending"], after["parked"], after["empty"]) == (0, 0, True)
    assert after["portal"]["state"] == "ok" and after["portal"]["last_success"]
    again = push(site, portal)
    assert again.returncode == 0 and "delivered 0 message(s)" in again.stdout
    assert len(portal.requests) == 2


def test_push_gives_up_at_the_deadline_with_exit_1(site: Path, portal: PortalStandIn):
    portal.inject(503, times=1000, retry_after=1)
    started = time.monotonic()
    pushed = push(site, portal, "--deadline", "2")
    assert time.monotonic() - started < 8
    assert pushed.returncode == 1, pushed.stdout + pushed.stderr
    assert "gave up at the deadline: HTTP 503" in pushed.stdout
    assert "outbox: 2 pending" in pushed.stdout and "portal retrying" in pushed.stdout
    assert 1 <= len(portal.requests) <= 4 and portal.messages == []
    shown = outbox(site)
    assert shown["pending"] == 2 and shown["portal"]["state"] == "retrying"
    assert shown["messages"][0]["attempts"] == len(portal.requests)
    assert shown["messages"][0]["last_status"] == 503


def test_the_deadline_bounds_the_request_in_flight(site: Path, portal: PortalStandIn):
    """A portal that answers one byte every 10 s (the site's portal time-out is 5 s):
    ``--deadline 2`` ends the push after about 2 s, not at the time-out (it took 5.9 s when
    the request in flight had only the portal time-out)."""
    portal.inject("slow", times=10, interval=10.0)
    started = time.monotonic()
    pushed = push(site, portal, "--deadline", "2")
    took = time.monotonic() - started
    assert pushed.returncode == 1, pushed.stdout + pushed.stderr
    assert took < 4.5, f"the push took {took:.1f} s with --deadline 2"
    assert "gave up at the deadline" in pushed.stdout


def test_a_refused_token_exits_1_and_never_shows_the_token(site: Path, portal: PortalStandIn):
    wrong = f"tok-old-{secrets.token_hex(8)}"
    (site / "portal.token").write_text(wrong + "\n")
    pushed = push(site, portal)
    assert pushed.returncode == 1
    assert "delivery paused: HTTP 401" in pushed.stdout and "token" in pushed.stdout
    assert "portal unhealthy" in pushed.stdout
    for text in (pushed.stdout, pushed.stderr, json.dumps(outbox(site))):
        assert wrong not in text and TOKEN not in text
    assert outbox(site)["portal"]["state"] == "unhealthy"
    (site / "portal.token").write_text(TOKEN + "\n")
    fixed = push(site, portal)
    assert fixed.returncode == 0, fixed.stdout
    assert outbox(site)["portal"]["state"] == "ok"


def test_usage_errors_exit_2_with_a_clear_message(site: Path, portal: PortalStandIn):
    missing = push(site, portal, token_file=site / "no-such.token")
    assert missing.returncode == 2
    assert "portal token file" in missing.stderr and "no-such.token does not exist" in missing.stderr
    remote = push(site, "http://example.com")
    assert remote.returncode == 2 and "http:// is accepted only for a loopback address" in remote.stderr
    no_url = roomsync(site, "push", "--once", "--token-file", str(site / "portal.token"))
    assert no_url.returncode == 2 and "no portal URL" in no_url.stderr
    negative = push(site, portal, "--deadline", "-1")
    assert negative.returncode == 2 and "--deadline" in negative.stderr
    assert portal.requests == []
    assert outbox(site)["pending"] == 2  # nothing changed


def test_a_parked_message_is_shown_and_resent_with_retry_parked(site: Path, portal: PortalStandIn):
    portal.inject(400, path="/v1/events")
    pushed = push(site, portal, "--json")
    assert pushed.returncode == 1  # not empty: something is parked
    result = json.loads(pushed.stdout)
    assert (result["result"], result["delivered"], result["parked"]) == ("empty", 1, 1)
    assert result["outbox"]["parked"] == 1 and result["outbox"]["pending"] == 0
    shown = outbox(site)
    [parked] = shown["messages"]
    assert (parked["kind"], parked["state"], parked["last_status"]) == ("events", "parked", 400)
    assert "injected fault 400" in parked["last_error"]
    table = roomsync(site, "outbox")
    assert "parked" in table.stdout and "injected fault 400" in table.stdout
    assert "--retry-parked" in table.stdout

    again = push(site, portal)
    assert again.returncode == 1 and "parked messages were refused" in again.stdout
    assert [r.path for r in portal.requests] == ["/v1/events", "/v1/inventory"]  # not retried unasked

    retried = push(site, portal, "--retry-parked")
    assert retried.returncode == 0, retried.stdout
    assert [r.idempotency_key for r in portal.requests if r.path == "/v1/events"] == [
        parked["idempotency_key"]
    ] * 2
    assert sorted(e.serial or "" for e in portal.events) == SERIALS
    assert outbox(site)["empty"] is True


def test_the_reference_portal_runs_by_hand_and_shows_what_it_received(site: Path) -> None:
    """``python -m tools.portal_standin`` (docs/portal-api.md): a person trying ``roomsync push``
    runs it, pushes to it and reads what arrived; a wrong token is answered 401."""
    from tests.daemon_peer import free_tcp_port

    port = free_tcp_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.portal_standin",
            "--port",
            str(port),
            "--token-file",
            str(site / "portal.token"),
        ],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(f"portal stand-in listening on http://127.0.0.1:{port}"), (
            first + proc.stderr.read()
        )
        url = f"http://127.0.0.1:{port}"
        (site / "wrong.token").write_text("not-the-token\n")
        refused = push(site, url, token_file=site / "wrong.token")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        pushed = push(site, url)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "POST /v1/events -> 401" in out  # the first message queued, the events
    assert "POST /v1/inventory -> 202" in out and "POST /v1/events -> 202" in out
    assert "accepted roomsync.inventory.v1 from agent" in out and "1 rooms, 2 units" in out
    assert "accepted roomsync.events.v1" in out and "2 events (device.added)" in out
    assert TOKEN not in out + err


def test_the_reference_portal_refuses_bad_arguments(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tools.portal_standin", "--token-file", str(tmp_path / "missing")],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2 and "missing" in run.stderr
