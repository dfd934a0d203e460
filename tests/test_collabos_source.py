"""The CollabOS source against the device stand-in (real TLS on loopback addresses): trust
before any password, the sign-in and its token, rate limits, faults, and what is read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.catalog import load_catalog
from agent.collectors.collabos_api import READS, SIGNIN
from agent.discovery import ScanContext, SourceResult
from agent.discovery.collabos import (
    CollabosHost,
    CollabosSource,
    DeviceSession,
    DeviceState,
    RateWindow,
    retry_after,
    token_lifetime,
)
from agent.model import SerialSource, Severity
from agent.pins import PinStore
from agent.readonly import ReadOnlyViolation
from agent.store import Store
from tests.collabos_standin import (
    INSIGHTS_ROOM,
    PERIPHERALS,
    CertAuthority,
    CollabosDevice,
    CollabosStandIn,
    rally_bar_mini,
    roommate,
)

PASSWORD = "s3cret-Pa55"
ALLOWED = {("POST", SIGNIN), *(("GET", path) for path in READS)}
CATALOG = load_catalog()


@pytest.fixture
def mini(tmp_path: Path) -> Iterator[CollabosDevice]:
    device = rally_bar_mini("127.0.0.21", tmp_path / "mini", password=PASSWORD)
    with CollabosStandIn(device):
        yield device


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "collabos-password"
    path.write_text(PASSWORD + "\n")
    return path


def source(tmp_path: Path, password_file: Path, *hosts: object, **options: object) -> CollabosSource:
    made = CollabosSource(hosts, password_file=password_file, state_dir=tmp_path / "state", **options)  # type: ignore[arg-type]
    return made


def run(src: CollabosSource) -> SourceResult:
    return asyncio.run(src.run(ScanContext(CATALOG, datetime.now(UTC))))


def sent(device: CollabosDevice) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in device.requests]


def pins(tmp_path: Path) -> PinStore:
    return PinStore(Store.open(tmp_path / "state"), "collabos")


# --------------------------------------------------------------------------- reading


def test_a_rally_bar_mini_with_its_tap_ip_sight_and_mic_pod(tmp_path, mini, password_file):
    src = source(tmp_path, password_file, {"host": mini.address, "room": "oslo-4-12"})
    result = run(src)
    assert result.errors == [] and result.messages == []
    bar, tap = result.observations
    assert (bar.product, bar.serial, bar.serial_source) == (
        "Rally Bar Mini",
        "2232LZ51E7A8",
        SerialSource.COLLABOS_API,
    )
    assert bar.serial_label_grade and bar.firmware == mini.collabos_version and bar.address == mini.address
    assert bar.attributes["host"] == mini.system_name and len(bar.attributes["mac_addresses"]) == 2
    assert (bar.attributes["device_configuration"], bar.attributes["service_provider"]) == ("DEVICE", "MTR")
    assert bar.attributes["insights_room"]["occupancyCount"] == mini.insights_room["occupancyCount"]
    assert bar.state == "idle"
    children = {c.product: c for c in bar.children}
    assert set(children) == {"Sight", "Rally Mic Pod"}
    assert children["Sight"].firmware == mini.peripherals["sights"][0]["firmwareVersion"]
    assert children["Rally Mic Pod"].firmware == mini.peripherals["usbDevices"][0]["audioFirmwareVersion"]
    tap_facts = mini.peripherals["ipControllers"][0]
    assert (tap.product, tap.serial, tap.firmware) == (
        "Tap IP",
        tap_facts["serialNumber"],
        tap_facts["firmwareVersion"],
    )
    assert tap.address == tap_facts["ipAddress"] and tap.attributes["paired_with"] == bar.address
    assert bar.room == tap.room == "oslo-4-12"
    # First contact: a read without credentials, then the sign-in, then the four reads.
    assert sent(mini) == [("GET", "/api/v1/device"), ("POST", SIGNIN), *(("GET", p) for p in READS)]
    assert mini.requests[0].status == 401 and not mini.requests[0].had_password
    assert mini.passwords_received == 1
    assert pins(tmp_path).get(mini.address).spki_sha256 == mini.spki_sha256


def test_the_token_is_kept_for_its_lifetime_and_replaced_once_when_refused(tmp_path, mini, password_file):
    mini.calls_per_minute = None
    src = source(tmp_path, password_file, mini.address, calls_per_minute=100)
    assert run(src).errors == []
    mini.clear()
    assert run(src).errors == []
    assert sent(mini) == [("GET", p) for p in READS] and mini.signins == 0
    mini.clear()
    mini.inject("expire-token", path=PERIPHERALS)  # the token expires mid-scan
    result = run(src)
    assert result.errors == [] and len(result.observations) == 2
    assert mini.signins == 1 and sent(mini).count(("GET", PERIPHERALS)) == 2


def test_a_token_refused_twice_is_one_error_not_a_storm(tmp_path, mini, password_file):
    src = source(tmp_path, password_file, mini.address)
    mini.inject("body-401", path="/api/v1/device", count=3)  # the check without a token, then twice
    result = run(src)
    [error] = result.errors
    assert error.target == mini.address and "refused (401" in error.message and "new token" in error.message
    assert mini.signins == 2 and result.observations == []
    assert mini.passwords_received == 2


def test_the_token_lifetime_comes_from_the_jwt_when_shorter():
    import base64
    import json

    def jwt(claims: dict[str, object]) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return f"e30.{payload}.sig"

    assert token_lifetime(jwt({"iat": 100, "exp": 400})) == 300
    assert token_lifetime(jwt({"iat": 100, "exp": 100_000})) == 900
    assert token_lifetime(jwt({"iat": 100})) == 900
    assert token_lifetime("not a jwt") == 900


def test_a_reload_keeps_the_tokens_and_rate_windows_of_devices_still_listed(tmp_path, mini, password_file):
    before = source(tmp_path, password_file, mini.address, "127.0.0.99")
    assert [e.target for e in run(before).errors] == ["127.0.0.99"]
    mini.clear()
    after = source(tmp_path, password_file, mini.address)
    after.adopt(before)
    assert run(after).errors == [] and mini.signins == 0  # the token came along
    assert set(after.devices) == {mini.address}
    assert after.devices[mini.address].calls is before.devices[mini.address].calls
    other_user = source(tmp_path, password_file, mini.address, user="auditor")
    other_user.adopt(after)
    assert other_user.devices[mini.address].token is None  # another user signs in anew


# --------------------------------------------------------------------------- trust


def test_a_changed_certificate_is_refused_before_anything_is_sent(tmp_path, mini, password_file):
    src = source(tmp_path, password_file, mini.address)
    assert run(src).errors == []
    pinned = mini.spki_sha256
    mini.rotate_certificate()
    mini.clear()
    fresh = source(tmp_path, password_file, mini.address)  # no token held: it would sign in
    refused = run(fresh)
    [error] = refused.errors
    assert refused.unreached == [mini.address] and refused.complete  # not gone: refused
    assert error.target == mini.address
    assert (
        f"pinned sha256:{pinned}" in error.message and f"presented sha256:{mini.spki_sha256}" in error.message
    )
    assert f"roomsync trust collabos {mini.address} --accept-new" in error.message
    assert mini.requests == [] and mini.passwords_received == 0
    # Also with a token held: nothing goes to the new certificate.
    [error] = run(src).errors
    assert "certificate changed" in error.message and mini.requests == []
    store = pins(tmp_path)
    store.accept(mini.address, mini.spki_sha256, mini.cert_sha256, datetime.now(UTC))
    store.store.close()
    assert run(fresh).errors == [] and mini.passwords_received == 1


def renew(device: CollabosDevice, directory: Path) -> None:
    """Serve a new certificate for the device's own key (a renewal: the pin still holds)."""
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from tools.portal_standin import TlsFiles

    key = serialization.load_pem_private_key(device.tls.key.read_bytes(), None)
    old = device.certificate
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    path = directory / "renewed-cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    device.use_tls(TlsFiles(path, device.tls.key, path))


def test_a_renewed_certificate_with_the_pinned_key_is_read_and_remembered(tmp_path, mini, password_file):
    src = source(tmp_path, password_file, mini.address)
    assert run(src).errors == []
    spki, cert = mini.spki_sha256, mini.cert_sha256
    renew(mini, tmp_path)
    assert mini.spki_sha256 == spki and mini.cert_sha256 != cert
    mini.clear()
    assert run(src).errors == []
    assert sent(mini) == [("GET", p) for p in READS]  # no sign-in, nothing refused
    pin = pins(tmp_path).get(mini.address)
    assert (pin.spki_sha256, pin.cert_sha256, pin.how) == (spki, mini.cert_sha256, "first-contact")


def test_a_host_that_is_not_the_api_gets_no_password_and_no_pin(tmp_path, password_file):
    web = CollabosDevice("127.0.0.22", tmp_path / "web", password=PASSWORD, api_enabled=False)
    with CollabosStandIn(web):
        [error] = run(source(tmp_path, password_file, web.address)).errors
    assert "does not answer as the CollabOS Device Management API" in error.message
    assert "no password was sent" in error.message and "HTTP 404" in error.message
    assert sent(web) == [("GET", "/api/v1/device")] and web.passwords_received == 0
    assert pins(tmp_path).get(web.address) is None


def test_with_a_ca_file_the_chain_and_name_are_verified_and_nothing_is_pinned(tmp_path, password_file):
    ca = CertAuthority(tmp_path / "ca")
    device = rally_bar_mini("127.0.0.23", tmp_path / "d", password=PASSWORD)
    device.use_tls(ca.server_tls(hosts=(device.host,)))
    other_ca = CertAuthority(tmp_path / "other-ca", name="another CA")
    with CollabosStandIn(device):
        result = run(source(tmp_path, password_file, device.address, ca_file=ca.path))
        assert result.errors == [] and result.observations[0].serial == "2232LZ51E7A8"
        assert pins(tmp_path).all() == []
        device.clear()
        [error] = run(source(tmp_path, password_file, device.address, ca_file=other_ca.path)).errors
    assert "does not verify with ca_file" in error.message and device.requests == []
    missing = run(source(tmp_path, password_file, device.address, ca_file=tmp_path / "nope.pem"))
    assert "ca_file" in missing.errors[0].message and "cannot be used" in missing.errors[0].message


# --------------------------------------------------------------------------- credentials


def test_a_wrong_password_is_one_error_naming_the_host_and_is_not_retried(tmp_path, mini, password_file):
    password_file.write_text("wrong-password\n")
    src = source(tmp_path, password_file, mini.address)
    [error] = run(src).errors
    assert (
        error.target == mini.address
        and "sign-in as admin refused (401: Invalid Credentials)" in error.message
    )
    assert "wrong-password" not in error.message and PASSWORD not in error.message
    assert mini.signins == 1
    mini.clear()
    [error] = run(src).errors  # the next run does not try the same password again
    assert "not tried again" in error.message and mini.requests == []
    password_file.write_text(PASSWORD + "\n")  # the operator fixed it: tried at once
    assert run(src).errors == [] and mini.signins == 1


def test_a_sign_in_refused_in_the_body_of_an_http_200_is_refused_too(tmp_path, password_file):
    device = rally_bar_mini("127.0.0.24", tmp_path / "d", password="other", auth_http_status=200)
    with CollabosStandIn(device):
        [error] = run(source(tmp_path, password_file, device.address)).errors
    assert "refused (401: Invalid Credentials)" in error.message


def test_no_password_file_means_no_contact(tmp_path, mini):
    src = CollabosSource([mini.address], state_dir=tmp_path / "state")
    [error] = run(src).errors
    assert "no password file is configured" in error.message and mini.requests == []
    missing = CollabosSource([mini.address], state_dir=tmp_path / "state", password_file=tmp_path / "none")
    [error] = run(missing).errors
    assert "does not exist" in error.message and mini.passwords_received == 0


# --------------------------------------------------------------------------- rate limits


def test_a_short_429_is_waited_out_and_a_long_one_leaves_the_device_alone(tmp_path, mini, password_file):
    src = source(tmp_path, password_file, mini.address)
    mini.inject("429", path=PERIPHERALS, retry_after=1)
    started = time.monotonic()
    assert run(src).errors == []
    assert time.monotonic() - started >= 1.0
    mini.clear()
    mini.inject("429", path=PERIPHERALS, retry_after=600)
    [error] = run(src).errors
    assert "asked to wait 600 s (HTTP 429)" in error.message
    mini.clear()
    [error] = run(src).errors
    assert "left alone (HTTP 429)" in error.message and mini.requests == []


def test_the_agent_keeps_within_the_documented_call_rate_itself(tmp_path, password_file):
    device = rally_bar_mini("127.0.0.25", tmp_path / "d", password=PASSWORD)
    with CollabosStandIn(device):
        src = source(tmp_path, password_file, device.address, host_deadline=2.0)
        assert run(src).errors == []  # 5 calls: the check and the 4 reads (and the sign-in)
        assert run(src).errors == []  # 4 more: 9
        [error] = run(src).errors  # 4 more would be 13: it waits only within the deadline
    assert "allows 10 calls a minute" in error.message
    assert all(r.status != 429 for r in device.requests)
    assert len([r for r in device.requests if r.path != SIGNIN]) <= 10


def test_the_rate_window_and_retry_after():
    clock = [0.0]
    window = RateWindow(2, 60.0, clock=lambda: clock[0])
    asyncio.run(window.acquire(100, "calls"))
    asyncio.run(window.acquire(100, "calls"))
    assert window.wait_needed() == 60.0
    clock[0] = 60.0
    assert window.wait_needed() == 0.0
    assert retry_after("5") == 5 and retry_after(None) == 60 and retry_after("soon") == 60
    assert retry_after("99999999") == 60 and retry_after("0") == 1
    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
    assert retry_after("Wed, 02 Dec 2026 12:00:30 GMT", now) == 30


# --------------------------------------------------------------------------- bad replies


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("garbage", "not JSON"),
        ("huge", "more than 1048576; not read"),
        ("deep", "nests deeper than 16"),
        ("body-500", "code 500"),
        ("http-500", "HTTP 500"),
        ("reset", "the connection broke before the reply: Connection reset by peer"),
    ],
)
def test_a_bad_reply_is_one_clear_error(tmp_path, mini, password_file, fault, said):
    src = source(tmp_path, password_file, mini.address)
    assert run(src).errors == []  # signed in: the next run reads with the token
    mini.inject(fault, path="/api/v1/device")
    [error] = run(src).errors
    assert said in error.message, error.message
    assert PASSWORD not in error.message


def test_loose_types_are_read(tmp_path, password_file):
    device = rally_bar_mini("127.0.0.26", tmp_path / "d", password=PASSWORD, loose_types=True)
    with CollabosStandIn(device):
        result = run(source(tmp_path, password_file, device.address))
    assert result.errors == []
    bar = result.observations[0]
    assert bar.serial == "2232LZ51E7A8" and {c.product for c in bar.children} == {"Sight", "Rally Mic Pod"}
    [pod] = [c for c in bar.children if c.product == "Rally Mic Pod"]
    assert pod.vendor_id == 0x046D


def test_a_hanging_device_fails_alone_within_its_deadline(tmp_path, password_file):
    hanging = rally_bar_mini("127.0.0.27", tmp_path / "h", password=PASSWORD)
    fine = roommate("127.0.0.28", tmp_path / "f", password=PASSWORD)
    hanging.inject("hang", path=PERIPHERALS)
    with CollabosStandIn(hanging, fine):
        src = source(tmp_path, password_file, hanging.address, fine.address, host_deadline=2.0, timeout=30.0)
        started = time.monotonic()
        result = run(src)
        took = time.monotonic() - started
    [error] = result.errors
    assert error.target == hanging.address and "no answer in time" in error.message
    assert [o.product for o in result.observations] == ["RoomMate"]
    assert took < 10


def test_slow_or_missing_insights_do_not_fail_the_device(tmp_path, password_file):
    slow = rally_bar_mini("127.0.0.29", tmp_path / "s", password=PASSWORD, path_latency={INSIGHTS_ROOM: 5.0})
    old = rally_bar_mini("127.0.0.30", tmp_path / "o", password=PASSWORD, collabos_version="1.12.3")
    with CollabosStandIn(slow, old):
        result = run(source(tmp_path, password_file, slow.address, old.address, insights_timeout=0.5))
    assert result.errors == []
    assert sorted(result.messages) == sorted(
        [
            f"{slow.address}: no room insights: no reply within 0.5 s",
            f"{old.address}: no device insights: GET /api/v1/insights/device: HTTP 404, code 404: Not Found",
            f"{old.address}: no room insights: GET /api/v1/insights/room: HTTP 404, code 404: Not Found",
        ]
    )
    bars = {o.address: o for o in result.observations if o.product == "Rally Bar Mini"}
    assert "insights_room" not in bars[slow.address].attributes
    assert bars[old.address].firmware == "1.12.3"
    assert not any(i.severity is Severity.WARNING for o in result.observations for i in o.health)


# --------------------------------------------------------------------------- the gate


def test_nothing_but_the_documented_requests_can_leave(tmp_path, mini):
    async def attempt() -> list[str]:
        import aiohttp

        refused = []
        session = DeviceSession(
            CollabosHost.of(mini.address),
            mini.fingerprint,
            DeviceState(),
            timeout=5,
            deadline=time.monotonic() + 30,
        )
        try:
            for method, path, body in [
                ("PUT", "/api/v1/device", None),
                ("DELETE", "/api/v1/device", None),
                ("POST", "/api/v1/device", None),
                ("GET", "/api/v1/device?reboot=true", None),
                ("GET", "/api/v1/settings", None),
                ("POST", SIGNIN, {"username": "admin", "password": "x", "mode": "HOST"}),
                ("GET", "/api/v1/peripherals", {"a": "b"}),
            ]:
                try:
                    await session.request(method, path, body=body)
                except ReadOnlyViolation as exc:
                    refused.append(str(exc))
            await session.request("GET", "/api/v1/device")  # a documented read goes
        finally:
            await session.close()
        assert isinstance(session.session, aiohttp.ClientSession)
        return refused

    refused = asyncio.run(attempt())
    assert len(refused) == 7
    assert sent(mini) == [("GET", "/api/v1/device")]


def test_every_request_a_full_read_sends_is_a_documented_one(tmp_path, mini, password_file):
    mini.calls_per_minute = None
    src = source(tmp_path, password_file, mini.address, calls_per_minute=100)
    mini.inject("expire-token", path="/api/v1/insights/device")
    for _ in range(2):
        assert run(src).errors == []
    assert set(sent(mini)) <= ALLOWED and mini.signins == 2


# --------------------------------------------------------------------------- review findings


def test_waiting_for_a_place_does_not_count_against_a_devices_deadline(tmp_path, password_file):
    devices = [
        rally_bar_mini(f"127.0.0.{50 + i}", tmp_path / f"d{i}", password=PASSWORD, latency=0.15)
        for i in range(3)
    ]
    with CollabosStandIn(*devices):
        src = source(tmp_path, password_file, *(d.address for d in devices), concurrency=1, host_deadline=2.5)
        result = run(src)
    assert result.errors == [] and len(result.observations) == 6  # each took ~1 s, one after another


def test_a_run_ends_within_its_budget_and_what_it_could_not_start_is_held(tmp_path, password_file):
    devices = [
        rally_bar_mini(f"127.0.0.{60 + i}", tmp_path / f"d{i}", password=PASSWORD, latency=0.5)
        for i in range(3)
    ]
    with CollabosStandIn(*devices):
        src = source(tmp_path, password_file, *(d.address for d in devices), concurrency=1)
        src.run_budget = 2.0 + 5.0 + 2.0  # the margin, one device's minimum, and a little
        started = time.monotonic()
        result = run(src)
        took = time.monotonic() - started
    assert took < 9
    assert len(result.errors) >= 1 and all(
        "not read this run" in e.message or "no answer" in e.message for e in result.errors
    )
    assert sorted(result.unreached) == sorted(e.target for e in result.errors)  # held, not gone


def test_room_insights_past_the_deadline_keep_what_was_read(tmp_path, password_file):
    device = rally_bar_mini(
        "127.0.0.31", tmp_path / "d", password=PASSWORD, path_latency={INSIGHTS_ROOM: 30.0}
    )
    with CollabosStandIn(device):
        result = run(source(tmp_path, password_file, device.address, host_deadline=2.0, insights_timeout=60))
    assert result.errors == [] and result.observations[0].serial == "2232LZ51E7A8"
    assert any("room insights" in m for m in result.messages), result.messages


def test_a_password_or_token_a_device_echoes_is_cut_out():
    import json

    from agent.collectors.collabos_api import CollabosError, parse_reply

    secrets = ["Sup3r  Secret horse", "eyJhbGciOi.token.sig"]
    for code in (401, 500):
        said = f"bad: Sup3r  Secret horse and eyJhbGciOi.token.sig {'x' * 300}"
        body = json.dumps({"code": code, "message": said, "result": None}).encode()
        with pytest.raises(CollabosError) as caught:
            parse_reply(200, body, what="GET /api/v1/device", redact=secrets)
        text = str(caught.value)
        assert "Secret" not in text and "token.sig" not in text and "bad: *** and ***" in text


def test_a_token_is_not_sent_to_a_new_key_after_accept_new(tmp_path, mini, password_file):
    src = source(tmp_path, password_file, mini.address)
    assert run(src).errors == []
    mini.rotate_certificate()
    store = pins(tmp_path)
    store.accept(mini.address, mini.spki_sha256, mini.cert_sha256, datetime.now(UTC))
    store.store.close()
    mini.clear()
    assert run(src).errors == []
    assert sent(mini)[0] == ("POST", SIGNIN)  # a new sign-in, not the old device's token


def test_the_refusal_backoff_is_bounded_and_keyed_by_user_and_password(tmp_path, mini, password_file):
    password_file.write_text("wrong\n")
    src = source(tmp_path, password_file, mini.address)
    run(src)
    state = src.devices[mini.address]
    state.refusals, state.refused_until = 5000, 0.0  # years of refusals: no overflow
    [error] = run(src).errors
    assert "not tried again for 3600 s" in error.message
    other = source(tmp_path, password_file, mini.address, user="operator")
    other.adopt(src)
    mini.clear()
    [error] = run(other).errors
    assert "sign-in as operator refused" in error.message and mini.signins == 1


def test_a_token_refused_again_in_a_run_is_one_error_not_a_sign_in_per_read(tmp_path, mini, password_file):
    mini.calls_per_minute = None
    src = source(tmp_path, password_file, mini.address, calls_per_minute=100)
    assert run(src).errors == []
    mini.clear()
    mini.inject("body-401", path=PERIPHERALS)
    mini.inject("body-401", path="/api/v1/insights/device")
    result = run(src)
    assert mini.signins == 1  # the peripherals' refusal renewed it; the insights' did not again
    assert any("no device insights" in m for m in result.messages)


def test_a_device_nothing_answers_for_is_missed_not_held(tmp_path, password_file):
    result = run(source(tmp_path, password_file, "127.0.0.33:9", timeout=2))
    [error] = result.errors
    assert "cannot connect" in error.message and result.unreached == []
