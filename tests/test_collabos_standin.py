"""The CollabOS device stand-in (``tests/collabos_standin.py``) keeps the documented side of the
Device Management API: sign-in and bearer JWTs, the four reads, rate limits, insights by
version, the disabled API, loose types, every injectable fault, and a certificate of its own
per device that can change under a running server. Clients are aiohttp over real HTTPS on
127.0.0.0/8, pinning each device's certificate (``aiohttp.Fingerprint``), or verifying with a
test CA: never without verification."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.collabos_standin import (
    DEVICE,
    INSIGHTS_DEVICE,
    INSIGHTS_ROOM,
    PERIPHERALS,
    READS,
    SIGNIN,
    CertAuthority,
    CollabosDevice,
    CollabosStandIn,
    rally_bar,
    rally_bar_mini,
    roommate,
)
from tools.portal_standin import client_context

PASSWORD = "s3cret"
MINI_HOST, BAR_HOST, ROOMMATE_HOST = "127.0.0.2", "127.0.0.3", "127.0.0.4"


class Reply:
    def __init__(self, status: int, body: bytes, headers: Any) -> None:
        self.status, self.body, self.headers = status, body, headers

    @property
    def doc(self) -> Any:
        return json.loads(self.body)


async def call(
    device: CollabosDevice,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    ssl: Any = None,
    timeout: float = 5.0,
) -> Reply:
    """One request on a new connection (a new session: a new TLS handshake)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.request(
            method,
            device.url + path,
            json=body,
            headers=headers,
            ssl=device.fingerprint if ssl is None else ssl,
        ) as response,
    ):
        return Reply(response.status, await response.read(), response.headers)


def unb64(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def not_json(body: bytes, error: type[Exception]) -> bool:
    try:
        json.loads(body)
    except error:
        return True
    return False


async def signin(device: CollabosDevice, password: str = PASSWORD) -> Reply:
    return await call(device, "POST", SIGNIN, body={"username": "admin", "password": password})


async def token_of(device: CollabosDevice) -> str:
    reply = await signin(device)
    assert reply.status == 200, reply.body
    return str(reply.doc["result"]["auth_token"])


async def served_cert_sha256(device: CollabosDevice) -> str:
    """The SHA-256 of the certificate the device serves now, read off a handshake that a
    deliberately wrong pin refuses (aiohttp reports what it got)."""
    with pytest.raises(aiohttp.ServerFingerprintMismatch) as caught:
        await call(device, "GET", DEVICE, ssl=aiohttp.Fingerprint(bytes(32)))
    return caught.value.got.hex()


@pytest.fixture
def mini(tmp_path: Path) -> CollabosDevice:
    return rally_bar_mini(MINI_HOST, tmp_path / "mini")


@pytest.fixture
def standin(mini: CollabosDevice) -> Iterator[CollabosStandIn]:
    with CollabosStandIn(mini) as devices:
        yield devices


# --------------------------------------------------------------------------- sign-in and reads


async def test_signin_gives_a_jwt_that_reads_every_documented_path(
    standin: CollabosStandIn, mini: CollabosDevice
) -> None:
    reply = await signin(mini)
    assert (reply.status, reply.doc["code"], reply.doc["message"]) == (200, 200, "")
    token = reply.doc["result"]["auth_token"]
    header, payload, signature = token.split(".")
    claims = unb64(payload)
    assert unb64(header) == {"alg": "HS256", "typ": "JWT"}
    assert claims["exp"] - claims["iat"] == 900 and signature
    answers = {path: await call(mini, "GET", path, token=token) for path in READS}
    assert {p: (r.status, r.doc["code"]) for p, r in answers.items()} == {p: (200, 200) for p in READS}
    device = answers[DEVICE].doc["result"]
    assert (device["modelName"], device["serialNumber"], device["systemName"]) == (
        "VR0020",
        "2232LZ51E7A8",
        "RallyBarMini-E7A8",
    )
    assert (device["collabOSVersion"], device["deviceConfiguration"], device["serviceProvider"]) == (
        "1.15.2",
        "DEVICE",
        "MTR",
    )
    peripherals = answers[PERIPHERALS].doc["result"]
    assert [t["serialNumber"] for t in peripherals["ipControllers"]] == ["2246FDA0B4C8"]
    assert peripherals["ipControllers"][0]["ipAddress"] == "127.0.0.99"
    assert len(peripherals["sights"]) == 1 and peripherals["usbControllers"] == []
    assert peripherals["usbDevices"][0]["vid"] == "0x046d"
    assert answers[INSIGHTS_DEVICE].doc["result"]["deviceState"] == "IDLE"
    assert {"occupancyCount", "temperature", "humidity", "co2"} <= set(answers[INSIGHTS_ROOM].doc["result"])
    # one sign-in, one password, one token; nothing secret kept or shown
    assert (mini.signins, mini.passwords_received, mini.tokens_issued) == (1, 1, 1)
    records = mini.requests
    assert [(r.method, r.path, r.status, r.had_password) for r in records] == [
        ("POST", SIGNIN, 200, True),
        *((("GET", p, 200, False)) for p in READS),
    ]
    assert all(r.headers["Authorization"] == "Bearer <redacted>" for r in records[1:])
    assert records[0].device == mini.address and records[0].at <= records[-1].at
    for text in (repr(records), repr(mini), repr(standin), repr(mini.pending_faults)):
        assert PASSWORD not in text and token not in text


async def test_wrong_credentials_are_401_or_a_body_401_on_some_firmware(
    standin: CollabosStandIn, mini: CollabosDevice
) -> None:
    wrong = await signin(mini, "guess")
    assert (wrong.status, wrong.doc) == (401, {"code": 401, "message": "Invalid Credentials", "result": None})
    other_user = await call(mini, "POST", SIGNIN, body={"username": "root", "password": PASSWORD})
    assert other_user.status == 401
    assert (await call(mini, "POST", SIGNIN, body=["admin"])).status == 400
    mini.auth_http_status = 200
    firmware = await signin(mini, "guess")
    assert (firmware.status, firmware.doc["code"], firmware.doc["result"]) == (200, 401, None)
    assert (mini.signins, mini.passwords_received, mini.tokens_issued) == (4, 3, 0)


async def test_reads_need_a_bearer_token_this_device_signed(
    standin: CollabosStandIn, mini: CollabosDevice
) -> None:
    token = await token_of(mini)
    header, payload, signature = token.split(".")
    claims = unb64(payload)
    longer = base64.urlsafe_b64encode(json.dumps({**claims, "exp": claims["exp"] + 9999}).encode())
    forged = f"{header}.{longer.rstrip(b'=').decode()}.{signature}"
    for bad in (None, "", "not-a-jwt", forged, f"{header}.{payload}.{'A' * len(signature)}"):
        reply = await call(mini, "GET", DEVICE, token=bad)
        assert (reply.status, reply.doc["code"], reply.doc["result"]) == (401, 401, None), bad
    async with aiohttp.ClientSession() as session:
        basic = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
        async with session.get(mini.url + DEVICE, headers=basic, ssl=mini.fingerprint) as response:
            assert response.status == 401
    assert mini.requests[-1].had_password and PASSWORD not in repr(mini.requests)
    assert (await call(mini, "GET", DEVICE, token=token)).status == 200


async def test_tokens_expire_after_their_lifetime_and_on_the_fault(
    standin: CollabosStandIn, mini: CollabosDevice
) -> None:
    mini.token_lifetime = 1
    short = await token_of(mini)
    assert (await call(mini, "GET", DEVICE, token=short)).status == 200
    await asyncio.sleep(1.1)
    assert (await call(mini, "GET", DEVICE, token=short)).status == 401
    mini.token_lifetime = 900
    token = await token_of(mini)
    mini.inject("expire-token", path=PERIPHERALS)
    assert (await call(mini, "GET", DEVICE, token=token)).status == 200  # the fault waits for its path
    expired = await call(mini, "GET", PERIPHERALS, token=token)
    assert (expired.status, expired.doc["code"]) == (401, 401)
    assert (mini.requests[-1].fault, mini.requests[-1].status) == ("expire-token", 401)
    assert (await call(mini, "GET", DEVICE, token=token)).status == 401  # it stays expired
    fresh = await token_of(mini)
    assert (await call(mini, "GET", DEVICE, token=fresh)).status == 200
    mini.inject("expire-token")
    assert (await signin(mini)).status == 200  # a sign-in needs no token: handled normally


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "params", "status", "check"),
    [
        ("429", {"retry_after": 7}, 429, lambda r: r.doc["code"] == 429 and r.headers["Retry-After"] == "7"),
        ("429", {"retry_after": None}, 429, lambda r: "Retry-After" not in r.headers),
        ("body-401", {}, 200, lambda r: r.doc == {"code": 401, "message": "Unauthorized", "result": None}),
        ("body-500", {}, 200, lambda r: r.doc == {"code": 500, "message": "Internal Error", "result": None}),
        ("http-500", {}, 500, lambda r: r.doc["code"] == 500),
        ("garbage", {}, 200, lambda r: not_json(r.body, ValueError)),
        (
            "huge",
            {},
            200,
            lambda r: len(r.body) > 2 * 1024 * 1024 and r.doc["result"]["serialNumber"] == "2232LZ51E7A8",
        ),
        ("deep", {}, 200, lambda r: not_json(r.body, RecursionError)),
    ],
)
async def test_a_fault_answers_instead_of_the_device(
    standin: CollabosStandIn,
    mini: CollabosDevice,
    fault: str,
    params: dict[str, Any],
    status: int,
    check: Any,
) -> None:
    token = await token_of(mini)
    mini.inject(fault, **params)
    assert mini.pending_faults == [fault]
    reply = await call(mini, "GET", DEVICE, token=token)
    assert reply.status == status and check(reply)
    assert (mini.requests[-1].fault, mini.requests[-1].status, mini.pending_faults) == (fault, status, [])
    assert (await call(mini, "GET", DEVICE, token=token)).status == 200  # used once


async def test_deep_fault_nests_ten_thousand_levels(standin: CollabosStandIn, mini: CollabosDevice) -> None:
    mini.inject("deep")
    body = (await call(mini, "GET", DEVICE)).body
    assert body.count(b'{"a": ') == 10_000 and body.endswith(b"0" + b"}" * 10_001)


async def test_faults_are_used_first_in_first_out_per_path_and_count(
    standin: CollabosStandIn, mini: CollabosDevice
) -> None:
    token = await token_of(mini)
    mini.inject("body-500", path=PERIPHERALS, count=2)
    mini.inject("http-500")
    assert mini.pending_faults == ["body-500", "body-500", "http-500"]
    assert (await call(mini, "GET", DEVICE, token=token)).status == 500  # the first that matches
    assert [(await call(mini, "GET", PERIPHERALS, token=token)).doc["code"] for _ in range(3)] == [
        500,
        500,
        200,
    ]
    with pytest.raises(ValueError, match="unknown fault"):
        mini.inject("503")
    with pytest.raises(TypeError, match="seconds"):
        mini.inject("slow", retry_after=1)


async def test_slow_fault_and_latency_delay_the_reply(standin: CollabosStandIn, mini: CollabosDevice) -> None:
    token = await token_of(mini)
    mini.inject("slow", seconds=0.4)
    started = time.monotonic()
    assert (await call(mini, "GET", DEVICE, token=token)).status == 200
    assert time.monotonic() - started >= 0.4
    mini.latency, mini.path_latency = 0.1, {INSIGHTS_ROOM: 0.3}
    started = time.monotonic()
    assert (await call(mini, "GET", INSIGHTS_ROOM, token=token)).status == 200
    assert time.monotonic() - started >= 0.4
    with pytest.raises(asyncio.TimeoutError):
        await call(mini, "GET", INSIGHTS_ROOM, token=token, timeout=0.2)


async def test_reset_closes_the_connection_without_a_reply(
    standin: CollabosStandIn, mini: CollabosDevice
) -> None:
    mini.inject("reset", path=SIGNIN)
    with pytest.raises(aiohttp.ClientError):
        await signin(mini)
    record = mini.requests[-1]
    assert (record.fault, record.status, record.had_password) == ("reset", None, True)
    assert (await signin(mini)).status == 200


async def test_stop_returns_promptly_while_a_request_hangs(tmp_path: Path) -> None:
    bar = rally_bar_mini(MINI_HOST, tmp_path)
    standin = CollabosStandIn(bar).start()
    try:
        bar.inject("hang")
        pending = asyncio.ensure_future(call(bar, "GET", DEVICE, timeout=30))
        while not bar.requests:
            await asyncio.sleep(0.01)
        assert (bar.requests[0].fault, bar.requests[0].status, pending.done()) == ("hang", None, False)
        started = time.monotonic()
        standin.stop()
        assert time.monotonic() - started < 2
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(pending, 5)
    finally:
        standin.stop()


# --------------------------------------------------------------------------- rate limits


async def test_rate_limits_answer_429_with_retry_after(
    standin: CollabosStandIn, mini: CollabosDevice
) -> None:
    token = await token_of(mini)  # the first of 5 sign-ins
    assert [(await call(mini, "GET", DEVICE, token=token)).status for _ in range(11)] == [200] * 10 + [429]
    limited = await call(mini, "GET", PERIPHERALS, token=token)
    assert limited.doc == {"code": 429, "message": "Too Many Requests", "result": None}
    assert 55 <= int(limited.headers["Retry-After"]) <= 60
    assert [(await signin(mini)).status for _ in range(5)] == [200] * 4 + [429]
    assert mini.signins == 6 and mini.tokens_issued == 5  # refused sign-ins are counted, not answered


async def test_rate_window_slides_and_none_disables(standin: CollabosStandIn, mini: CollabosDevice) -> None:
    mini.calls_per_minute, mini.signin_per_minute, mini.rate_window = 2, 1, 0.5
    token = await token_of(mini)
    assert (await signin(mini)).status == 429
    assert [(await call(mini, "GET", DEVICE, token=token)).status for _ in range(3)] == [200, 200, 429]
    assert (await call(mini, "GET", DEVICE, token=token)).headers["Retry-After"] == "1"
    await asyncio.sleep(0.55)
    assert (await call(mini, "GET", DEVICE, token=token)).status == 200
    mini.calls_per_minute = None
    assert {(await call(mini, "GET", DEVICE, token=token)).status for _ in range(12)} == {200}


# --------------------------------------------------------------------------- TLS


async def test_each_device_has_its_own_self_signed_certificate(
    standin: CollabosStandIn, mini: CollabosDevice
) -> None:
    cert = mini.certificate
    assert await served_cert_sha256(mini) == mini.cert_sha256
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == [MINI_HOST]
    assert names.get_values_for_type(x509.DNSName) == ["RallyBarMini-E7A8"]
    assert cert.issuer == cert.subject and mini.ca_file == mini.tls.cert
    assert mini.spki_sha256 != mini.cert_sha256 and len(bytes.fromhex(mini.spki_sha256)) == 32
    key = mini.tls.key.read_bytes()
    assert serialization.load_pem_private_key(key, None).public_key() == cert.public_key()


async def test_rotate_certificate_changes_what_new_connections_get(
    standin: CollabosStandIn, mini: CollabosDevice
) -> None:
    old_pin, old_cert, old_spki = mini.fingerprint, mini.cert_sha256, mini.spki_sha256
    assert (await call(mini, "GET", DEVICE)).status == 401  # the pin holds
    mini.rotate_certificate()
    assert mini.cert_sha256 != old_cert and mini.spki_sha256 != old_spki
    with pytest.raises(aiohttp.ServerFingerprintMismatch):
        await call(mini, "GET", DEVICE, ssl=old_pin)
    assert await served_cert_sha256(mini) == mini.cert_sha256
    assert (await signin(mini)).status == 200  # the new pin


async def test_a_certificate_from_a_test_ca_verifies_by_ca_file(
    standin: CollabosStandIn, mini: CollabosDevice, tmp_path: Path
) -> None:
    ca = CertAuthority(tmp_path / "ca")
    mini.use_tls(ca.server_tls(hosts=(mini.host, mini.system_name or "")))
    reply = await call(
        mini, "POST", SIGNIN, body={"username": "admin", "password": PASSWORD}, ssl=client_context(ca.path)
    )
    assert reply.status == 200 and mini.ca_file == ca.path
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await call(mini, "GET", DEVICE, ssl=client_context(CertAuthority(tmp_path / "other").path))


# --------------------------------------------------------------------------- what the device is


async def test_a_disabled_api_and_undocumented_requests_are_404_html(
    standin: CollabosStandIn, mini: CollabosDevice
) -> None:
    token = await token_of(mini)
    undocumented = [
        ("GET", "/api/v1/device/"),
        ("POST", DEVICE),
        ("GET", SIGNIN),
        ("DELETE", "/api/v1/device"),
        ("GET", "/api/v1/settings?password=s3cret&x=1"),
        ("GET", "/"),
    ]
    for method, path in undocumented:
        reply = await call(mini, method, path, token=token)
        assert (reply.status, reply.headers["Content-Type"].split(";")[0]) == (404, "text/html"), path
        assert b"<html>" in reply.body
    records = mini.requests[-len(undocumented) :]
    assert [(r.method, r.path, r.status) for r in records] == [
        (m, p.partition("?")[0], 404) for m, p in undocumented
    ]
    assert records[4].query == "password=<redacted>&x=1" and records[4].had_password
    mini.api_enabled = False
    for method, path in [("POST", SIGNIN), *(("GET", p) for p in READS)]:
        reply = await call(mini, method, path, token=token, body={"username": "admin", "password": PASSWORD})
        assert (reply.status, reply.headers["Content-Type"].split(";")[0]) == (404, "text/html")
    assert [r.status for r in mini.requests[-5:]] == [404] * 5


async def test_loose_types_send_strings(standin: CollabosStandIn, mini: CollabosDevice) -> None:
    mini.loose_types = True
    token = await token_of(mini)
    peripherals = (await call(mini, "GET", PERIPHERALS, token=token)).doc
    pod = peripherals["result"]["usbDevices"][0]
    assert (pod["vid"], pod["pid"], pod["id"], pod["isAudioDevice"]) == ("1133", str(0x08C8), "1", "true")
    assert peripherals["result"]["sights"][0]["cameraConnected"] == "true" and peripherals["code"] == 200
    room = (await call(mini, "GET", INSIGHTS_ROOM, token=token)).doc["result"]
    assert (room["occupancyCount"], room["temperature"]) == ("0", "21.5")
    assert (await call(mini, "GET", INSIGHTS_DEVICE, token=token)).doc["result"]["micMuted"] == "false"


async def test_insights_are_404_below_collabos_1_13(tmp_path: Path) -> None:
    old = rally_bar(BAR_HOST, tmp_path / "old", collabos_version="1.12.4")
    mid = rally_bar_mini(MINI_HOST, tmp_path / "mid", collabos_version="1.13.210")
    mate = roommate(ROOMMATE_HOST, tmp_path / "mate")
    with CollabosStandIn(old, mid, mate):
        token = await token_of(old)
        for path in (INSIGHTS_DEVICE, INSIGHTS_ROOM):
            reply = await call(old, "GET", path, token=token)
            assert (reply.status, reply.doc) == (404, {"code": 404, "message": "Not Found", "result": None})
        assert (await call(old, "GET", DEVICE, token=token)).doc["result"]["modelName"] == "VR0019"
        room = (await call(mid, "GET", INSIGHTS_ROOM, token=await token_of(mid))).doc["result"]
        assert room == {"occupancyCount": 0}  # no environmental data before 1.15
        token = await token_of(mate)
        assert (await call(mate, "GET", INSIGHTS_ROOM, token=token)).doc["result"] == {}  # no camera
        mate_peripherals = (await call(mate, "GET", PERIPHERALS, token=token)).doc["result"]
        assert len(mate_peripherals["usbControllers"]) == 1 and mate_peripherals["ipControllers"] == []
        assert (await call(mate, "GET", DEVICE, token=token)).doc["result"]["systemName"] == "RoomMate-2A61"


async def test_two_devices_on_two_loopback_addresses_at_once(tmp_path: Path) -> None:
    mini = rally_bar_mini(MINI_HOST, tmp_path / "mini")
    bar = rally_bar(BAR_HOST, tmp_path / "bar", password="other")
    with CollabosStandIn(mini, bar) as standin:
        assert mini.cert_sha256 != bar.cert_sha256 and mini.address.startswith("127.0.0.2:")
        assert standin.url(bar) == f"https://{bar.address}" and bar.host == BAR_HOST
        mini_reply, bar_reply = await asyncio.gather(
            signin(mini), call(bar, "POST", SIGNIN, body={"username": "admin", "password": "other"})
        )
        mini_token, bar_token = (r.doc["result"]["auth_token"] for r in (mini_reply, bar_reply))
        assert (await call(bar, "GET", DEVICE, token=mini_token)).status == 401  # not its token
        assert (await call(bar, "GET", DEVICE, token=bar_token)).status == 200
        with pytest.raises(aiohttp.ServerFingerprintMismatch):
            await call(bar, "GET", DEVICE, ssl=mini.fingerprint)
        assert {r.device for r in standin.all_requests()} == {mini.address, bar.address}
        # the refused handshake never became a request
        assert standin.wait_for(lambda s: len(s.all_requests()) == 4, timeout=1)
        assert not standin.wait_for(lambda s: len(s.all_requests()) > 4, timeout=0.05)


async def test_add_a_device_while_running_and_restart_on_the_same_ports(tmp_path: Path) -> None:
    mini = rally_bar_mini(MINI_HOST, tmp_path / "mini")
    standin = CollabosStandIn(mini).start()
    try:
        late = standin.add(roommate(ROOMMATE_HOST, tmp_path / "late"))
        assert (await signin(late)).status == 200
        ports = (mini.port, late.port)
        standin.stop()
        with pytest.raises(aiohttp.ClientError):
            await signin(mini)
        standin.start()
        assert (mini.port, late.port) == ports and (await signin(mini)).status == 200
        assert late.signins == 1 and mini.signins == 1  # the records stayed
        assert await asyncio.to_thread(mini.wait_for, lambda d: d.tokens_issued == 1, 1)
        with pytest.raises(ValueError, match="served already"):
            standin.add(mini)
    finally:
        standin.stop()


def test_construction_needs_a_place_for_the_certificate_and_hides_the_password(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        CollabosDevice(MINI_HOST, password=PASSWORD)
    device = CollabosDevice(MINI_HOST, tmp_path, password=PASSWORD)
    assert PASSWORD not in repr(device) and device.peripherals["usbDevices"] == []
    with pytest.raises(RuntimeError, match="no port"):
        device.address  # noqa: B018
