"""SNMP discovery against real agents on loopback: net-snmp ``snmpd`` (v2c and v3
authPriv, ENTITY-MIB rows through ``override``), ``snmpsim`` (20 devices in 127.0.2.0/24,
the other 234 addresses silent) and a deliberately broken agent for walk faults."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from agent.catalog import load_catalog
from agent.collectors.snmp.client import SnmpClient, V2cCredentials, V3Credentials
from agent.discovery import ScanContext
from agent.discovery.snmp import SnmpSource, walk_columns
from agent.discovery.targets import check_targets, parse_targets
from agent.model import SerialSource, Transport
from tests.peers_snmp import SimDevice, Snmpd, SnmpSim, entity_rows
from tests.snmp_rogue import RogueAgent, backwards, endless, no_table

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ENTITY_SERIAL = (1, 3, 6, 1, 2, 1, 47, 1, 1, 1, 1, 11)


def ctx() -> ScanContext:
    return ScanContext(load_catalog(), NOW)


def run(source: SnmpSource):
    return asyncio.run(source.run(ctx()))


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory: pytest.TempPathFactory):
    rows = entity_rows(
        "2313FD1N08Z2",
        "VR0019",
        "Logitech",
        name="Rally Bar",
        firmware="1.9.556",
        hardware="rev B",
        software="CollabOS 1.9",
    )
    rows[11][2] = "SUB-MODULE-1"
    rows[7][2] = "camera module"
    rows[9][2] = "3.4.5"
    with Snmpd(
        tmp_path_factory.mktemp("snmpd"),
        sys_descr="Logitech CollabOS device",
        sys_name="RallyBar-1L5V32",
        entity=rows,
        v3_user="roomsync",
        extra_config=[
            'createUser sha512user SHA-512 "authpass-512" AES "privpass-512"',
            "rouser sha512user priv",
        ],
    ) as agent:
        yield agent


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory):
    devices = []
    for i in range(1, 21):
        address = f"127.0.2.{i * 12}"
        if i % 4 == 0:  # a printer the catalog does not know
            devices.append(
                SimDevice.make(
                    address,
                    sys_descr=f"Ubiquiti UniFi switch {i}",
                    sys_object_id="1.3.6.1.4.1.41112.1.6",
                    entity=entity_rows(f"UBNT{i:04d}", "US-8-60W", "Ubiquiti"),
                )
            )
        else:
            devices.append(
                SimDevice.make(
                    address,
                    sys_descr="Logitech Rally Bar",
                    sys_name=f"RallyBar-{i:06d}",
                    entity=entity_rows(f"2313FD{i:06d}", "VR0019", firmware=f"1.9.{i}"),
                )
            )
    # Binary and non-UTF-8 values: a serial with invalid UTF-8, a sysDescr that is binary.
    devices[0].records["1.3.6.1.2.1.47.1.1.1.1.11.1"] = ("4x", "32333133ff4644")
    devices[1].records["1.3.6.1.2.1.1.1.0"] = ("4x", "00010203fffe0a0b")
    with SnmpSim(tmp_path_factory.mktemp("snmpsim"), devices) as server:
        yield server


# --------------------------------------------------------------------------- targets


def test_targets_forms_and_order():
    targets = parse_targets(
        ["10.0.0.5", "10.0.0.6:1161", "[::1]:1162", "::1", "10.0.1.0/30", "printer.example", "10.0.0.5"]
    )
    assert [(t.host, t.port, t.swept) for t in targets] == [
        ("10.0.0.5", 161, False),
        ("10.0.0.6", 1161, False),
        ("::1", 1162, False),
        ("::1", 161, False),
        ("10.0.1.1", 161, True),
        ("10.0.1.2", 161, True),
        ("printer.example", 161, False),
    ]
    assert [t.address for t in targets[:3]] == ["10.0.0.5", "10.0.0.6:1161", "[::1]:1162"]


def test_targets_range_with_port_and_single_address_wins_over_range():
    targets = parse_targets(["127.0.2.0/30:1161", "127.0.2.1:1161"])
    assert [(t.host, t.swept) for t in targets] == [("127.0.2.1", False), ("127.0.2.2", True)]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("10.0.0.0/8", "at most"),
        ("10.0.0.1:0", "port"),
        ("10.0.0.1:99999", "port"),
        ("bad host!", "neither"),
        ("", "empty"),
        ("[::1", "]"),
        ("10.0.0.300/24", "does not appear"),
    ],
)
def test_bad_targets_are_refused_with_every_problem(spec, words):
    with pytest.raises(ValueError) as info:
        parse_targets([spec, "also bad!"])
    text = str(info.value)
    assert words in text and "also bad!" in text
    assert len(check_targets([spec, "also bad!"])) == 2


# --------------------------------------------------------------------------- snmpd


def test_v2c_identity_from_entity_mib(snmpd):
    result = run(SnmpSource([f"127.0.0.1:{snmpd.port}"], V2cCredentials("public"), timeout=1))
    assert result.errors == []
    [obs] = result.observations
    assert obs.transport is Transport.SNMP and obs.address == f"127.0.0.1:{snmpd.port}"
    assert obs.product == "Rally Bar"  # VR0019 reported as the ENTITY-MIB model
    assert obs.serial == "2313FD1N08Z2" and obs.serial_source is SerialSource.SNMP_ENTITY
    assert obs.serial_label_grade
    assert (obs.firmware, obs.firmware_source) == ("1.9.556", "snmp-entity-firmware")
    assert obs.components == {"hardware": "rev B", "firmware": "1.9.556", "software": "CollabOS 1.9"}
    assert obs.vendor == "Logitech" and obs.model == "VR0019"
    assert obs.attributes["description"] == "Logitech CollabOS device"
    assert obs.attributes["sys_name"] == "RallyBar-1L5V32"
    assert obs.attributes["entities"][0]["serial"] == "SUB-MODULE-1"


def test_v3_auth_priv(snmpd):
    creds = V3Credentials(
        "roomsync", auth_key="authpass-123", priv_key="privpass-456", auth_protocol="SHA", priv_protocol="AES"
    )
    result = run(SnmpSource([f"127.0.0.1:{snmpd.port}"], creds, timeout=1))
    assert result.errors == []
    assert [o.serial for o in result.observations] == ["2313FD1N08Z2"]


def test_v3_sha2_auth(snmpd):
    creds = V3Credentials(
        "sha512user",
        auth_key="authpass-512",
        priv_key="privpass-512",
        auth_protocol="SHA512",
        priv_protocol="AES",
    )
    result = run(SnmpSource([f"127.0.0.1:{snmpd.port}"], creds, timeout=1))
    assert result.errors == []
    assert [o.serial for o in result.observations] == ["2313FD1N08Z2"]
    wrong = run(
        SnmpSource(
            [f"127.0.0.1:{snmpd.port}"],
            V3Credentials(
                "sha512user", auth_key="authpass-512", priv_key="privpass-512", auth_protocol="SHA256"
            ),
            timeout=0.5,
        )
    )
    assert "wrong auth key or auth protocol" in wrong.errors[0].message


def test_v3_keys_from_files_through_the_configuration(snmpd, tmp_path):
    from agent.config import SnmpSourceConfig

    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "snmp-auth").write_text("authpass-123\n")
    (creds / "snmp-priv").write_text("privpass-456\n")
    settings = SnmpSourceConfig.model_validate(
        {
            "enabled": True,
            "targets": [f"127.0.0.1:{snmpd.port}"],
            "version": "3",
            "timeout": 1,
            "v3": {
                "user": "roomsync",
                "auth_protocol": "SHA",
                "auth_key_file": "snmp-auth",
                "priv_key_file": "snmp-priv",
            },
        }
    )
    source = SnmpSource.from_config(settings, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert "authpass" not in repr(source.credentials)
    assert [o.serial for o in run(source).observations] == ["2313FD1N08Z2"]
    missing = SnmpSource.from_config(settings, environ={})
    [error] = run(missing).errors
    assert "SNMPv3 auth key file snmp-auth does not exist" in error.message


@pytest.mark.parametrize(
    "auth, priv, user, words",
    [
        ("wrong-auth-key", "privpass-456", "roomsync", "wrong auth key"),
        ("authpass-123", "wrong-priv-key", "roomsync", "privacy key"),
        ("authpass-123", "privpass-456", "nobody", "user is not known"),
    ],
)
def test_v3_wrong_credentials_are_one_clear_error(snmpd, auth, priv, user, words):
    creds = V3Credentials(user, auth_key=auth, priv_key=priv, auth_protocol="SHA")
    result = run(SnmpSource([f"127.0.0.1:{snmpd.port}"], creds, timeout=0.5))
    assert result.observations == []
    [error] = result.errors
    assert error.target == f"127.0.0.1:{snmpd.port}"
    assert words in error.message
    assert auth not in error.message and priv not in error.message


def test_v3_sweep_has_per_probe_deadlines(snmpd):
    """SNMPv3 goes through the engine: paced, and each request's deadline is the client's
    own (not pysnmp's 0.1 s ticks), so silent addresses end one timeout after the last send."""
    creds = V3Credentials(
        "roomsync", auth_key="authpass-123", priv_key="privpass-456", auth_protocol="SHA", priv_protocol="AES"
    )
    source = SnmpSource(
        [f"127.0.0.1:{snmpd.port}", f"127.0.3.0/27:{snmpd.port}"], creds, timeout=0.5, max_pps=200
    )
    result = run(source)
    assert [o.serial for o in result.observations] == ["2313FD1N08Z2"] and result.errors == []
    stats = source.last_stats
    assert stats is not None and stats.silent == 30 and stats.last_send is not None
    assert stats.first_send is not None
    assert 0.9 <= (stats.last_send - stats.first_send) / (30 / 200) <= 1.5
    assert 0.5 - 0.01 <= stats.seconds - stats.last_send <= 0.5 + 0.3


def test_wrong_community_on_a_named_target_is_an_error(snmpd):
    started = time.monotonic()
    result = run(SnmpSource([f"127.0.0.1:{snmpd.port}"], V2cCredentials("not-the-community"), timeout=0.5))
    assert result.observations == []
    [error] = result.errors
    assert "wrong v2c community" in error.message and "not-the-community" not in error.message
    assert time.monotonic() - started < 5


def test_host_name_target_is_resolved(snmpd):
    result = run(SnmpSource([f"localhost:{snmpd.port}"], V2cCredentials("public"), timeout=1))
    assert [o.address for o in result.observations] == [f"localhost:{snmpd.port}"]


# --------------------------------------------------------------------------- snmpsim sweep


def test_sweep_finds_every_responder_and_reports_others(sim):
    progress: list[tuple[int, int, int]] = []
    source = SnmpSource(
        ["127.0.2.0/24"],
        V2cCredentials("public"),
        port=sim.port,
        timeout=1,
        concurrency=256,
        progress=lambda *a: progress.append(a),
    )
    started = time.monotonic()
    result = run(source)
    elapsed = time.monotonic() - started
    assert result.errors == []  # silent addresses of a range are not errors
    assert len(result.observations) == 20
    assert source.last_stats is not None
    stats = source.last_stats
    assert (stats.addresses, stats.responders, stats.silent) == (254, 20, 234)
    by_addr = {o.address: o for o in result.observations}
    bar = by_addr[f"127.0.2.36:{sim.port}"]
    assert (bar.product, bar.serial, bar.firmware) == ("Rally Bar", "2313FD000003", "1.9.3")
    other = by_addr[f"127.0.2.48:{sim.port}"]
    assert other.product is None  # reported as "other"
    assert other.vendor == "Ubiquiti" and other.attributes["description"] == "Ubiquiti UniFi switch 4"
    assert other.serial == "UBNT0004"
    assert progress[-1] == (254, 254, 20)
    assert [p[0] for p in progress] == sorted(p[0] for p in progress)
    # Silent addresses are waited on in parallel: about one timeout, not 234 of them; and
    # the sweep ends within 0.3 s of the last probe's deadline (walks included).
    assert elapsed < 1 + 3.0, elapsed
    assert stats.last_send is not None and 1.0 - 0.01 <= stats.seconds - stats.last_send <= 1.0 + 0.3
    assert stats.requests >= 254 and stats.ignored == 0


def test_binary_and_non_utf8_values_are_repaired_and_noted(sim):
    source = SnmpSource(["127.0.2.12", "127.0.2.24"], V2cCredentials("public"), port=sim.port, timeout=1)
    result = run(source)
    by_addr = {o.address: o for o in result.observations}
    bad_serial = by_addr[f"127.0.2.12:{sim.port}"]
    assert bad_serial.serial is not None and not bad_serial.serial_label_grade
    assert any(i.code == "snmp-value-not-utf8" for i in bad_serial.health)
    binary = by_addr[f"127.0.2.24:{sim.port}"]
    assert binary.attributes["description"] == "0x00010203fffe0a0b"
    assert any(i.code == "snmp-value-binary" for i in binary.health)


def test_packets_per_second_cap_spreads_the_sweep(sim):
    source = SnmpSource(["127.0.2.0/28"], V2cCredentials("public"), port=sim.port, timeout=0.3, max_pps=20)
    started = time.monotonic()
    result = run(source)
    # 14 first transmissions at 20 per second cannot all leave in less than 13 intervals.
    assert time.monotonic() - started >= 13 / 20
    assert [o.address for o in result.observations] == [f"127.0.2.12:{sim.port}"]
    stats = source.last_stats
    assert stats is not None and stats.first_send is not None and stats.last_send is not None
    assert 0.9 <= (stats.last_send - stats.first_send) / (13 / 20) <= 1.2


# --------------------------------------------------------------------------- broken agents


async def _walk(port: int, **kw):
    async with SnmpClient(V2cCredentials("public"), timeout=0.5) as client:
        return await walk_columns(client, ("127.0.0.1", port), {11: ENTITY_SERIAL}, **kw)


def test_endless_walk_is_capped():
    with RogueAgent(responder=endless) as agent:
        cells, problems = asyncio.run(_walk(agent.port, max_rows=100))
    assert len(cells[11]) == 100
    assert problems == ["column .11: more than 100 rows; truncated"]
    assert agent.requests <= 100 // 16 + 3


def test_non_increasing_walk_is_detected():
    with RogueAgent(responder=backwards) as agent:
        cells, problems = asyncio.run(_walk(agent.port))
    assert len(cells[11]) == 1
    assert "non-increasing" in problems[0]
    assert agent.requests <= 3


def test_broken_walk_still_reports_the_unit_with_a_note():
    with RogueAgent(responder=backwards) as agent:
        result = run(SnmpSource([f"127.0.0.1:{agent.port}"], V2cCredentials("public"), timeout=0.5))
    [obs] = result.observations
    assert obs.product is None and obs.attributes["description"] == "rogue agent"
    assert any(i.code == "snmp-entity-incomplete" and "non-increasing" in i.message for i in obs.health)


def test_slow_agent_within_timeout_is_read_and_beyond_it_is_an_error():
    with RogueAgent(delay=0.3, responder=no_table) as agent:
        ok = run(SnmpSource([f"127.0.0.1:{agent.port}"], V2cCredentials("public"), timeout=2))
        late = run(SnmpSource([f"127.0.0.1:{agent.port}"], V2cCredentials("public"), timeout=0.1))
    assert [o.attributes["sys_name"] for o in ok.observations] == ["rogue"]
    assert late.observations == [] and "no answer" in late.errors[0].message


def test_one_bad_target_does_not_stop_the_others(snmpd):
    with RogueAgent(responder=backwards) as agent:
        result = run(
            SnmpSource(
                [f"127.0.0.1:{snmpd.port}", f"127.0.0.1:{agent.port}", "127.0.0.9:9"],
                V2cCredentials("public"),
                timeout=0.5,
            )
        )
    assert sorted(o.attributes["sys_name"] for o in result.observations) == ["RallyBar-1L5V32", "rogue"]
    assert [e.target for e in result.errors] == ["127.0.0.9:9"]
