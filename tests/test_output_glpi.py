"""The GLPI output (``agent/uploader/outputs.py`` ``GlpiOutput``/``GlpiTransport``) delivering
its outbox queue to the GLPI stand-in (tools/glpi_standin.py: GLPI's transport rules and its
JSON Schema, enforced): a stored site's documents all arrive, validate and carry every serial
and firmware; only what changed is sent again; each compression; basic authentication and
HTTPS with a test CA; and every fault — inventory disabled (403), 500, an HTML page, a
``status: error`` body, a reply cut short, a reset, a document GLPI's schema refuses — gets
the outcome docs/glpi.md gives, losing nothing and never showing the password."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.store import Store
from agent.uploader.delivery import Delivery, RunResult
from agent.uploader.glpi import GlpiHost, glpi_documents
from agent.uploader.outbox import Outbox
from agent.uploader.outputs import GlpiOutput, glpi_agent_uuid, make_outbox
from agent.uploader.protocol import AgentInfo
from agent.uploader.snapshot import SnapshotContext, verdicts_for
from tests.test_glpi import CATALOG, NOW, ROOMS, TODAY, assert_carried, entitlements, site, site_readings
from tools.glpi_standin import GlpiStandIn
from tools.portal_standin import CertAuthority

AGENT = "5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5"
HOST = GlpiHost("fjord-pc", os_name="Debian GNU/Linux", os_version="12")
CONTEXT = SnapshotContext(CATALOG, ROOMS, entitlements(site()), today=TODAY)
PASSWORD = "glpi-pw-5521"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state") as opened:
        sources = {d.sources[0] for d in site_readings() if d.sources}
        opened.record_scan(site_readings(), list(ROOMS), NOW, sources_run=sources)
        yield opened


@pytest.fixture
def glpi() -> Iterator[GlpiStandIn]:
    with GlpiStandIn() as server:
        yield server


def output(glpi: GlpiStandIn, **changes: Any) -> GlpiOutput:
    fields: dict[str, Any] = {
        "url": glpi.url + "/front/inventory.php",
        "timeout": 3.0,
        "backoff_cap": 0.05,
        "host": HOST,
    }
    fields.update(changes)
    return GlpiOutput(**fields)


def queued(store: Store, out: GlpiOutput, **kwargs: Any) -> Outbox:
    outbox = make_outbox(store, out, agent_id=AGENT, version="test", hostname="fjord-pc")
    assert out.queue(outbox, store, CONTEXT, NOW, **kwargs)
    return outbox


def deliver(outbox: Outbox, out: GlpiOutput, seconds: float = 5.0) -> RunResult:
    delivery = Delivery(outbox, out.transport(outbox.agent, user_agent="roomsync/test"))
    return asyncio.run(delivery.run(deadline=time.monotonic() + seconds))


def expected(store: Store) -> list[Any]:
    devices = store.devices()
    return glpi_documents(
        devices, ROOMS, verdicts_for(devices, CONTEXT, TODAY), agent_id=AGENT, host=HOST, version="test"
    )


def test_a_stored_site_arrives_whole_valid_and_carrying_every_serial_and_firmware(
    store: Store, glpi: GlpiStandIn
) -> None:
    out = output(glpi)
    outbox = queued(store, out)
    docs = expected(store)
    assert len(outbox.messages()) == len(docs) >= 5
    result = deliver(outbox, out)
    assert (result.stopped_because, result.delivered, result.parked) == ("empty", len(docs), 0)
    # The stand-in validated each against GLPI's schema; they are the documents built.
    assert sorted(glpi.documents, key=lambda d: d["deviceid"]) == sorted(
        (d.data for d in docs), key=lambda d: d["deviceid"]
    )
    assert_carried(store.devices(), docs)
    assert glpi.agent_ids == [glpi_agent_uuid(AGENT)] == [AGENT]
    assert {r.content_type for r in glpi.requests} == {"application/x-compress-zlib"}
    assert outbox.stats().empty and outbox.stats().state.state == "ok"


def test_only_what_changed_is_sent_again_and_everything_on_the_schedule(
    store: Store, glpi: GlpiStandIn
) -> None:
    out = output(glpi)
    outbox = queued(store, out)
    deliver(outbox, out)
    sent = len(glpi.documents)
    assert not out.queue(outbox, store, CONTEXT, NOW + timedelta(hours=1))  # nothing changed
    # One unit's firmware changes: its document alone goes.
    readings = site_readings()
    bar = next(d for d in readings if d.product == "Rally Bar" and d.firmware)
    bar.firmware = "9.9.9"
    later = NOW + timedelta(hours=2)
    store.record_scan(readings, list(ROOMS), later, sources_run={d.sources[0] for d in readings if d.sources})
    assert out.queue(outbox, store, CONTEXT, later)
    assert deliver(outbox, out).delivered == 1 and len(glpi.documents) == sent + 1
    assert "9.9.9" in str(glpi.documents[-1])
    # The resend interval passed: every document again.
    assert out.queue(outbox, store, CONTEXT, NOW + timedelta(hours=25))
    assert deliver(outbox, out).delivered == sent


@pytest.mark.parametrize(
    ("compression", "content_type"), [("gzip", "application/x-compress-gzip"), ("none", "application/json")]
)
def test_each_compression_is_what_glpi_reads(
    compression: str, content_type: str, store: Store, glpi: GlpiStandIn
) -> None:
    out = output(glpi, compression=compression)
    outbox = queued(store, out)
    assert deliver(outbox, out).parked == 0 and outbox.stats().empty
    assert {r.content_type for r in glpi.requests} == {content_type}
    assert len(glpi.documents) == len(expected(store))


def test_basic_authentication_and_a_wrong_password_pauses_without_showing_it(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "glpi-password"
    with GlpiStandIn(username="roomsync", password=PASSWORD) as glpi:
        secret.write_text("not-the-" + PASSWORD + "\n")
        out = output(glpi, username="roomsync", password_file=secret)
        outbox = queued(store, out)
        paused = deliver(outbox, out)
        assert paused.stopped_because == "paused" and paused.delivered == 0
        state = outbox.stats().state
        assert state.state == "unhealthy" and "password" in (state.reason or "")
        secret.write_text(PASSWORD + "\n")  # fixed: the next run reads it again
        assert deliver(outbox, out).delivered == len(expected(store))
        assert {r.headers.get("Authorization") for r in glpi.requests} == {"Basic <redacted>"}
        assert glpi.requests[0].status == 401
    captured = capsys.readouterr()
    for text in (paused.last_problem or "", state.reason or "", captured.out, captured.err):
        assert PASSWORD not in text


def test_https_verifies_with_the_test_ca_and_never_another(store: Store, tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path / "ca")
    with GlpiStandIn(tls=ca.server_tls()) as glpi:
        other = CertAuthority(tmp_path / "other", name="another CA")
        bad = output(glpi, ca_file=other.path)
        outbox = queued(store, bad)
        # A run whose deadline has passed makes exactly one try, with the output's whole
        # timeout (3 s): with retries until a deadline, the try the deadline cut short would
        # report the deadline's timeout instead of the refusal.
        refused = deliver(outbox, bad, seconds=0)
        assert refused.delivered == 0 and "TLS" in (refused.last_problem or ""), refused
        assert len(refused.attempts) == 1 and not glpi.requests, refused
        good = output(glpi, ca_file=ca.path)
        assert deliver(outbox, good).delivered == len(expected(store))


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        (500, "retry"),
        (503, "retry"),
        ("html", "retry"),
        ("cut", "retry"),
        ("reset", "retry"),
        ("status-error", "park"),
        (400, "park"),
    ],
)
def test_each_fault_gets_its_outcome_and_loses_nothing(
    fault: str | int, outcome: str, store: Store, glpi: GlpiStandIn
) -> None:
    out = output(glpi)
    outbox = queued(store, out)
    total = len(outbox.messages())
    glpi.inject(fault)
    result = deliver(outbox, out)
    first = result.attempts[0]
    assert str(first.outcome) == outcome, first.detail
    if outcome == "retry":
        assert result.retries == 1 and result.delivered == total and outbox.stats().empty
    else:
        assert result.parked == 1 and result.delivered == total - 1
        [parked] = outbox.messages()
        assert parked.state == "parked" and parked.last_error
    assert len(glpi.documents) == result.delivered  # a fault recorded nothing


def test_inventory_disabled_pauses_and_a_document_glpi_refuses_is_parked(
    store: Store, glpi: GlpiStandIn
) -> None:
    out = output(glpi)
    outbox = queued(store, out)
    glpi.enabled = False
    paused = deliver(outbox, out)
    assert paused.stopped_because == "paused" and "disabled" in (paused.last_problem or "")
    assert outbox.stats().state.state == "unhealthy" and len(outbox.messages()) == len(expected(store))
    glpi.enabled = True
    assert deliver(outbox, out).delivered == len(expected(store))
    # A document GLPI's schema refuses (GLPI answers 500): parked, not retried for ever.
    outbox.queue_documents([("bad", "d1", zlib.compress(b'{"deviceid":"bad","content":{}}'))], NOW)
    result = deliver(outbox, out)
    assert result.parked == 1 and result.retries == 0
    assert "does not validate" in (result.last_problem or "")


def test_the_password_is_masked_alone_and_as_basic_credentials_in_what_glpi_echoes(tmp_path: Path) -> None:
    """An error page that echoes the request's headers shows ``Authorization: Basic …``: the
    base64 credentials are masked as the password itself is, before the text is cut."""
    import base64

    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    out = GlpiOutput(url="http://127.0.0.1:1/front/inventory.php", username="roomsync", password_file=secret)
    transport = out.transport(AgentInfo(id=AGENT, version="t", hostname="h"), user_agent="t")
    credentials = base64.b64encode(f"roomsync:{PASSWORD}".encode()).decode()
    page = f"<html>Bad gateway. Your request: Authorization: Basic {credentials} pw={PASSWORD}</html>"

    async def verdict() -> tuple[Any, str]:
        await transport.open()  # reads the password
        try:
            return transport._verdict(502, f"Bad {PASSWORD}", "text/html", page)  # type: ignore[attr-defined, no-any-return]
        finally:
            await transport.close()

    outcome, detail = asyncio.run(verdict())
    assert str(outcome) == "retry" and detail.startswith("HTTP 502")
    assert credentials not in detail and PASSWORD not in detail and "Basic ********" in detail
