"""MdnsSource against real mDNS publishers in other processes, on loopback only.

One zeroconf publisher (tests/peers_mdns.py) serves the whole module: a Rally Bar known by its
CollabOS host name only, a bar with model / serial / firmware TXT keys, a printer on a type that
is not browsed by default, a device with binary, oversized and secret TXT values, instances
named in Chinese, Cyrillic and emoji, plus hand-built packets zeroconf would not send: a PTR
record whose service is gone (no SRV/TXT answer) and an instance name that is not UTF-8.
Every zeroconf instance here, publishers and the code under test, is pinned to 127.0.0.1 and
IPv4. Names carry the session's RUN_TOKEN, and assertions filter on it, because another test
run on this machine may publish on loopback at the same time.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.catalog import Catalog, load_catalog
from agent.collectors.mdns_service import ResolvedService
from agent.config import MdnsSourceConfig
from agent.discovery import ScanContext, SourceResult
from agent.discovery.mdns import MdnsSource, normalize_service_type
from agent.inventory import devices_from_observations
from agent.model import Observation, ScanError, SerialSource, Transport
from tests.peers_mdns import (
    RUN_TOKEN,
    AvahiPublisher,
    AvahiService,
    Publisher,
    PublisherError,
    Service,
    avahi_unavailable,
    full_service,
    phantom,
)
from tests.shared import missing

T = RUN_TOKEN
LOOPBACK = ["127.0.0.1"]
NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
#: Scans that must find the publisher's services get 2 s: a responder holds back an answer it
#: multicast less than a second ago (RFC 6762 §6), as after the previous test's scan.
TIMEOUT = 2.0
#: Generous bound on what a run may take beyond its timeout (closing zeroconf, collecting).
SLACK = 2.0
HTTPS, HTTP, IPP = "_https._tcp.local.", "_http._tcp.local.", "_ipp._tcp.local."
BASE_TYPES = [HTTPS, HTTP]

BAR_HOST = f"RallyBar-{T}.local."
SYNCED_HOST = f"room-{T}.local."
PRINTER_HOST = f"printer-{T}.local."
ODD_HOST = f"odd-{T}.local."
SCRIPT_NAMES = {
    f"会议室 {T}": f"huiyishi-{T}.local.",
    f"Переговорная {T}": f"peregovornaya-{T}.local.",
    f"🎥 Huddle ☕ {T}": f"huddle-{T}.local.",
}
GONE, GONE_TOO = f"Gone {T}", f"Gone too {T}"

SERVICES = [
    Service(HTTPS, f"Rally Bar {T}", BAR_HOST, 443),
    Service(HTTP, f"Rally Bar {T}", BAR_HOST, 80),
    Service(
        HTTPS,
        f"Board room {T}",
        SYNCED_HOST,
        8443,
        {"model": "VR0019", "serial": "2313FD1N08Z2", "fw": "1.9.556"},
    ),
    Service(
        IPP,
        f"Office printer {T}",
        PRINTER_HOST,
        631,
        {"ty": "HP LaserJet 400 M401dn", "rp": "ipp/print", "txtvers": "1"},
    ),
    Service(
        HTTP,
        f"Odd device {T}",
        ODD_HOST,
        8080,
        {"blob": bytes(range(256))[:200], "long": "z" * 250, "password": "hunter2", "flag": None},
    ),
    *(Service(HTTP, instance, host, 80) for instance, host in SCRIPT_NAMES.items()),
]
RAW = [
    phantom(HTTPS, GONE),
    phantom(HTTP, GONE_TOO),
    full_service(
        HTTPS,
        b"Broken \xff\xfe " + T.encode(),
        f"broken-{T}.local.",
        "127.0.0.1",
        9443,
        [b"fw=2.0", b"note=caf\xe9"],
    ),
]


@dataclass
class Run:
    result: SourceResult
    seconds: float

    def mine(self) -> list[Observation]:
        """Observations of this session's peers (other runs may publish on loopback)."""
        return [o for o in self.result.observations if T in (o.attributes.get("host") or "")]

    def by_host(self, host: str) -> Observation:
        found = [o for o in self.result.observations if o.attributes.get("host") == host]
        assert len(found) == 1, [o.attributes.get("host") for o in self.result.observations]
        return found[0]

    def hosts(self) -> set[str]:
        return {o.attributes["host"] for o in self.mine()}


def scan(source: MdnsSource) -> Run:
    started = time.perf_counter()
    result = asyncio.run(source.run(ScanContext(load_catalog(), NOW)))
    return Run(result, time.perf_counter() - started)


@pytest.fixture(scope="module")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Publisher]:
    with Publisher(SERVICES, RAW, workdir=tmp_path_factory.mktemp("mdns")) as peer:
        yield peer


@pytest.fixture(scope="module")
def full_run(publisher: Publisher) -> Run:
    """One scan of the default types plus _ipp._tcp (as `--mdns-type _ipp._tcp` adds it)."""
    return scan(MdnsSource([*BASE_TYPES, "_ipp._tcp"], LOOPBACK, TIMEOUT))


# --------------------------------------------------------------------------- found and identified


def test_a_collabos_host_is_one_rally_bar_observation(full_run: Run) -> None:
    bar = full_run.by_host(BAR_HOST)
    assert bar.product == "Rally Bar" and bar.model == "VR0019" and bar.vendor == "Logitech"
    assert bar.attributes["identified_by"] == "host-name"
    assert bar.transport is Transport.MDNS and bar.source == "mdns"
    assert bar.address == "127.0.0.1"
    assert bar.attributes["addresses"] == ["127.0.0.1"]
    # _http._tcp and _https._tcp of the same host are one unit.
    assert sorted((s["service_type"], s["port"]) for s in bar.attributes["services"]) == [
        (HTTP, 80),
        (HTTPS, 443),
    ]
    assert bar.serial is None and bar.health == []


def test_txt_model_serial_and_firmware(full_run: Run) -> None:
    unit = full_run.by_host(SYNCED_HOST)
    assert unit.product == "Rally Bar" and unit.attributes["identified_by"] == "model"
    assert unit.serial == "2313FD1N08Z2" and unit.serial_source is SerialSource.MDNS_TXT
    assert unit.serial_label_grade is True
    assert unit.firmware == "1.9.556" and unit.firmware_source == "mdns-txt"
    assert unit.attributes["port"] == 8443
    assert unit.attributes["instance"] == f"Board room {T}"


def test_an_extra_type_finds_the_printer_as_an_unknown_device(full_run: Run) -> None:
    printer = full_run.by_host(PRINTER_HOST)
    assert printer.product is None and printer.vendor == "HP"
    assert printer.model == "HP LaserJet 400 M401dn"
    assert printer.attributes["service_type"] == IPP and printer.attributes["port"] == 631
    assert printer.attributes["txt"] == {"ty": "HP LaserJet 400 M401dn", "rp": "ipp/print", "txtvers": "1"}
    assert printer.serial_label_grade is False


def test_binary_oversized_and_secret_txt_values(full_run: Run) -> None:
    odd = full_run.by_host(ODD_HOST)
    txt = odd.attributes["txt"]
    assert txt["blob"].startswith("<binary 200 bytes: 000102") and txt["blob"].endswith("…>")
    assert txt["long"].endswith("…<truncated, 250 bytes>")
    assert txt["password"] == "********" and txt["flag"] is True
    assert "hunter2" not in json.dumps(odd.attributes)
    notes = [i for i in odd.health if i.code == "mdns-data"]
    assert len(notes) == 1 and "'blob' is binary" in notes[0].message and "'long' was cut" in notes[0].message


def test_instance_names_in_any_script(full_run: Run) -> None:
    for instance, host in SCRIPT_NAMES.items():
        unit = full_run.by_host(host)
        assert unit.attributes["instance"] == instance
        assert unit.health == []


def test_an_instance_name_that_is_not_utf8_is_repaired_and_noted(full_run: Run) -> None:
    unit = full_run.by_host(f"broken-{T}.local.")
    assert unit.attributes["instance"] == f"Broken \ufffd\ufffd {T}"
    assert unit.firmware == "2.0" and unit.attributes["port"] == 9443
    [note] = [i.message for i in unit.health if i.code == "mdns-data"]
    assert "instance name was not valid UTF-8" in note and "TXT 'note' is binary" in note


def test_a_service_gone_before_its_resolve_is_one_error_and_the_scan_goes_on(full_run: Run) -> None:
    mine = [e for e in full_run.result.errors if T in e.target]
    assert sorted((e.source, e.target) for e in mine) == [
        ("mdns", f"{GONE}.{HTTPS}"),
        ("mdns", f"{GONE_TOO}.{HTTP}"),
    ]
    assert all("did not answer the resolve" in e.message for e in mine)
    # Every other host of the publisher was observed.
    assert full_run.hosts() == {
        BAR_HOST,
        SYNCED_HOST,
        PRINTER_HOST,
        ODD_HOST,
        f"broken-{T}.local.",
        *SCRIPT_NAMES.values(),
    }


def test_the_run_respects_its_timeout(full_run: Run) -> None:
    # The gone service's resolve waits until the deadline: the run still ends in time.
    assert TIMEOUT <= full_run.seconds < TIMEOUT + SLACK, full_run.seconds


@pytest.fixture(scope="module")
def side_runs(publisher: Publisher) -> dict[str, Run]:
    """Three scans at once (three zeroconf instances in one process): the default types only;
    one resolve slot; at most three instances."""
    sources = {
        "default-types": MdnsSource(BASE_TYPES, LOOPBACK, TIMEOUT),
        "one-slot": MdnsSource(BASE_TYPES, LOOPBACK, TIMEOUT, concurrency=1),
        "three": MdnsSource(BASE_TYPES, LOOPBACK, TIMEOUT, max_instances=3),
    }

    async def together() -> list[SourceResult]:
        ctx = ScanContext(load_catalog(), NOW)
        return await asyncio.gather(*(s.run(ctx) for s in sources.values()))

    started = time.perf_counter()
    results = asyncio.run(together())
    seconds = time.perf_counter() - started
    return {name: Run(result, seconds) for name, result in zip(sources, results, strict=True)}


def test_one_resolve_slot_held_by_a_silent_service(side_runs: dict[str, Run]) -> None:
    run = side_runs["one-slot"]
    # One slot, held until the deadline by a service that never answers; every real service
    # still resolves (its records came with the PTR answer, into zeroconf's cache) …
    assert run.hosts() == {BAR_HOST, SYNCED_HOST, ODD_HOST, f"broken-{T}.local.", *SCRIPT_NAMES.values()}
    # … and the other service that needs queries says it never got a slot.
    messages = sorted(e.message for e in run.result.errors if T in e.target)
    assert len(messages) == 2
    assert messages[-1] == "not resolved: the run ended while it waited for one of the 1 resolve slots"
    assert run.seconds < TIMEOUT + SLACK


def test_instances_beyond_the_limit_are_counted_not_resolved(side_runs: dict[str, Run]) -> None:
    result = side_runs["three"].result
    resolved = sum(len(o.attributes["services"]) for o in result.observations) + len(result.errors)
    assert resolved == 3
    [message] = result.messages
    assert message.startswith("more than 3 service instances answered; ")


def test_a_cancelled_run_closes_zeroconf(publisher: Publisher) -> None:
    """The scan pipeline cancels a source at its own deadline: no task or socket is left."""

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def cancelled() -> list[asyncio.Task[object]]:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                MdnsSource(BASE_TYPES, LOOPBACK, 5.0).run(ScanContext(load_catalog(), NOW)), 0.5
            )
        await asyncio.sleep(0.05)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    before = open_fds()
    started = time.perf_counter()
    assert asyncio.run(cancelled()) == []
    assert time.perf_counter() - started < 0.5 + SLACK
    assert open_fds() == before


def test_without_the_extra_type_the_printer_is_not_found(side_runs: dict[str, Run]) -> None:
    run = side_runs["default-types"]
    assert BAR_HOST in run.hosts() and PRINTER_HOST not in run.hosts()


def test_devices_from_mdns_observations_serialise_to_json(side_runs: dict[str, Run]) -> None:
    devices = devices_from_observations(side_runs["default-types"].mine(), None)
    assert {d.product for d in devices} == {"Rally Bar", "Unknown device"}
    payload = json.loads(json.dumps([d.to_dict() for d in devices]))
    bar = next(d for d in payload if d["attributes"]["host"] == BAR_HOST)
    assert bar["transport"] == "mdns" and bar["address"] == "127.0.0.1"
    assert bar["identity"] == "mdns:127.0.0.1" and bar["room"] is None


# --------------------------------------------------------------------------- vanishing, nothing, bad setup


def test_a_goodbye_during_the_resolve_is_one_error(tmp_path: Path) -> None:
    gone = f"Leaving {T}"
    with Publisher(raw=[phantom(HTTPS, gone)], workdir=tmp_path) as peer:

        async def scan_and_withdraw() -> SourceResult:
            task = asyncio.create_task(
                MdnsSource([HTTPS], LOOPBACK, 1.5).run(ScanContext(load_catalog(), NOW))
            )
            await asyncio.sleep(0.5)  # the PTR is seen (every 0.2 s), its resolve is pending
            peer.goodbye()
            return await task

        result = asyncio.run(scan_and_withdraw())
    # (The module's publisher is up too: its gone service is an error line of its own.)
    mine = [e for e in result.errors if gone in e.target]
    assert [(e.target, e.message) for e in mine] == [
        (f"{gone}.{HTTPS}", "withdrawn (mDNS goodbye) before it could be resolved")
    ]
    assert not [o for o in result.observations if gone in str(o.attributes.get("instance"))]


def test_nothing_found_is_an_empty_result_with_a_message() -> None:
    nobody = f"_rsnone{T.lower()}._tcp.local."
    run = scan(MdnsSource([nobody], LOOPBACK, 1.0))
    assert run.result.observations == [] and run.result.errors == []
    assert run.result.messages == [f"no mDNS services found in 1 s on 127.0.0.1 (types: {nobody})"]
    assert 1.0 <= run.seconds < 1.0 + SLACK


@pytest.mark.parametrize("interface", ["198.51.100.7", "fd00::99"])  # addresses this host lacks
def test_an_unusable_interface_is_one_error(interface: str) -> None:
    started = time.perf_counter()
    run = scan(MdnsSource([HTTPS], [interface], 1.0))
    assert [(e.source, e.target) for e in run.result.errors] == [("mdns", interface)]
    assert run.result.errors[0].message.startswith(f"cannot use mDNS on {interface}: ")
    assert run.result.observations == []
    assert time.perf_counter() - started < 1.0 + SLACK


def test_a_host_that_breaks_the_collector_is_one_error() -> None:
    """Defence in depth: a collector failure on one host (here: catalog data that breaks on
    one host name) is an error line for that host; the other host is still observed."""

    class BrokenForOneHost(Catalog):
        def match_host_name(self, host: str | None) -> Any:
            if host and host.startswith("bad"):
                raise ValueError("broken pattern")
            return super().match_host_name(host)

    shipped = load_catalog()
    catalog = BrokenForOneHost(
        list(shipped.products.values()), shipped.default_warranty_years, shipped.vendors, shipped.mdns_keys
    )
    services = [
        ResolvedService(HTTPS, f"a.{HTTPS}", "bad-1.local.", ("192.0.2.1",), 443),
        ResolvedService(HTTPS, f"b.{HTTPS}", BAR_HOST, ("192.0.2.2",), 443),
    ]
    errors: list[ScanError] = []
    observations = MdnsSource([HTTPS])._observe(services, ScanContext(catalog, NOW), errors)
    assert [o.product for o in observations] == ["Rally Bar"]
    assert [(e.source, e.target, e.message) for e in errors] == [
        ("mdns", "bad-1.local.", "cannot read its data: ValueError")
    ]


# --------------------------------------------------------------------------- construction


def test_service_types_are_normalised_and_deduplicated() -> None:
    source = MdnsSource(
        ["_https._tcp", "_https._tcp.local", "_HTTP._tcp.local.", "_https._tcp.local.", "_http._tcp"], None, 2
    )
    assert source.service_types == ["_https._tcp.local.", "_HTTP._tcp.local."]
    assert source.interfaces is None and source.where == "all IPv4 interfaces"


@pytest.mark.parametrize("bad", ["https", "_https._sctp.local.", "_https._tcp.example.com.", "", "_a b._tcp"])
def test_a_bad_service_type_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a DNS-SD service type"):
        normalize_service_type(bad)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        MdnsSource([], LOOPBACK, 1)
    with pytest.raises(ValueError):
        MdnsSource([HTTPS], ["not-an-address"], 1)
    with pytest.raises(ValueError):
        MdnsSource([HTTPS], LOOPBACK, 0)


def test_from_config() -> None:
    settings = MdnsSourceConfig(enabled=True, service_types=[HTTPS], interfaces=["127.0.0.1"], timeout=2.5)
    source = MdnsSource.from_config(settings)
    assert (source.service_types, source.interfaces, source.timeout) == ([HTTPS], ["127.0.0.1"], 2.5)
    default = MdnsSource.from_config(MdnsSourceConfig())
    assert default.interfaces is None and default.service_types


def seconds_to_find(instance_name: str, service_type: str) -> float | None:
    """How long a fresh browser (QM questions, like MdnsSource) takes to see an instance."""
    from zeroconf import DNSQuestionType, IPVersion
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

    async def browse() -> float | None:
        started = time.perf_counter()
        found = asyncio.Event()
        aiozc = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)

        def on_change(zeroconf: object, service_type: str, name: str, state_change: object) -> None:
            if name == instance_name:
                found.set()

        browser = AsyncServiceBrowser(
            aiozc.zeroconf, [service_type], handlers=[on_change], question_type=DNSQuestionType.QM
        )
        try:
            await asyncio.wait_for(found.wait(), TIMEOUT)
            return time.perf_counter() - started
        except TimeoutError:
            return None
        finally:
            await browser.async_cancel()
            await aiozc.async_close()

    return asyncio.run(browse())


def test_how_fast_a_name_is_found_across_processes(publisher: Publisher) -> None:
    """Measures discovery across the two processes (printed with -s)."""
    seconds = seconds_to_find(f"Rally Bar {T}.{HTTPS}", HTTPS)
    print(
        f"zeroconf publisher ready after {publisher.startup_seconds:.2f} s; "
        f"a browser in this process saw its bar after {seconds} s"
    )
    assert seconds is not None


# --------------------------------------------------------------------------- avahi, a foreign publisher

AVAHI_HOST = f"RallyBarMini-{T}"
AVAHI_SERVICES = [
    AvahiService(
        f"会议室 Mini {T}",
        "_https._tcp",
        443,
        {"fw": "1.9.556", "sn": "2313FD1N08Z2", "blob": b"\x00\xffbinary"},
    ),
    AvahiService(f"Mini {T}", "_http._tcp", 80),
]


@pytest.fixture(scope="module")
def avahi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AvahiPublisher]:
    reason = avahi_unavailable()
    if reason:
        missing(f"avahi as a foreign mDNS publisher: {reason}")
    peer = AvahiPublisher(AVAHI_HOST, AVAHI_SERVICES, workdir=tmp_path_factory.mktemp("avahi"))
    try:
        peer.start()
    except PublisherError as exc:
        if "not permitted" in str(exc) or "Permission denied" in str(exc):
            missing(f"no private mount namespace for avahi-daemon here (CI runs as root): {exc}")
        raise
    try:
        yield peer
    finally:
        peer.stop()


def test_avahi_published_bar_is_one_identified_observation(avahi: AvahiPublisher) -> None:
    run = scan(MdnsSource(BASE_TYPES, LOOPBACK, TIMEOUT))
    unit = run.by_host(f"{AVAHI_HOST}.local.")
    assert unit.product == "Rally Bar Mini" and unit.attributes["identified_by"] == "host-name"
    assert unit.address == "127.0.0.1"
    assert sorted((s["service_type"], s["port"]) for s in unit.attributes["services"]) == [
        (HTTP, 80),
        (HTTPS, 443),
    ]
    https = next(s for s in unit.attributes["services"] if s["service_type"] == HTTPS)
    assert https["instance"] == f"会议室 Mini {T}"
    assert https["txt"]["blob"] == "<binary 8 bytes: 00ff62696e617279>"
    assert unit.serial == "2313FD1N08Z2" and unit.serial_label_grade is True
    assert unit.firmware == "1.9.556" and unit.firmware_source == "mdns-txt"
    assert [i.code for i in unit.health] == ["mdns-data"], unit.health  # the binary TXT value
    assert TIMEOUT <= run.seconds < TIMEOUT + SLACK


def test_how_fast_avahi_is_found(avahi: AvahiPublisher) -> None:
    seconds = seconds_to_find(f"Mini {T}.{HTTP}", HTTP)
    print(f"avahi-daemon ready after {avahi.startup_seconds:.2f} s; a browser saw it after {seconds} s")
    assert seconds is not None
