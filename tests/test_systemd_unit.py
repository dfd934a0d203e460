"""The systemd unit, sysusers file and udev rule in systemd/, checked by systemd's own tools.

* ``systemd-analyze verify`` must print nothing. It insists that ExecStart='s binary exists, and
  the shipped unit names the installed location, /opt/roomsync/bin/roomsync, which a test
  machine does not have. So the test verifies a copy in a temporary directory whose ExecStart=
  names this checkout's ``roomsync`` instead, and first asserts that this is the *only* line
  that differs from the shipped file. (``--root=`` is no way out: it would need a whole unit
  tree under that root.)
* ``systemd-analyze security --offline=true`` rates the shipped file itself; the exposure it
  prints must be at most 2.0.
* ``systemd-sysusers --root=TMP`` really creates the user and group, in TMP/etc.
* ``udevadm verify`` exists only from systemd 253 on (Debian 12 has 252): on an older systemd that
  part is skipped, saying so, in CI too (tests.shared.not_applicable). The rule is also parsed
  here and must match only vendor 046d's USB device nodes.

Run scripts/bootstrap first: it installs the ``systemd`` package that brings these tools.
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared import not_applicable, require_tool

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "roomsync-agent.service"
RULES = REPO / "systemd" / "70-roomsync.rules"
SYSUSERS = REPO / "systemd" / "roomsync.sysusers.conf"
INSTALLED_EXEC = "/opt/roomsync/bin/roomsync"
MAX_EXPOSURE = 2.0
SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
#: The first systemd whose udevadm has ``verify``.
UDEVADM_VERIFY_SINCE = 253


def _tool(name: str) -> str:
    return require_tool(name, "systemd", path=SYSTEM_PATH)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "SYSTEMD_COLORS": "0",
            "SYSTEMD_PAGER": "cat",
        },
    )


def _directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; repeated keys are kept."""
    out: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def _values(section: str, key: str) -> list[str]:
    return [v for s, k, v in _directives(UNIT.read_text()) if s == section and k == key]


def _one(section: str, key: str) -> str:
    values = _values(section, key)
    assert len(values) == 1, f"[{section}] {key}= appears {len(values)} times: {values}"
    return values[0]


# ------------------------------------------------------------------------------------ unit text


def test_unit_has_the_required_directives() -> None:
    assert _one("Service", "Type") == "notify"
    assert _one("Service", "NotifyAccess") == "main"
    assert _one("Service", "WatchdogSec") == "30s"
    assert _one("Service", "ExecStart") == f"{INSTALLED_EXEC} run"
    assert _one("Service", "ExecReload") == "/bin/sh -c 'kill -s HUP \"$$MAINPID\"'"  # no procps needed
    assert _one("Service", "Restart") == "on-failure"
    assert "2" in _one("Service", "RestartPreventExitStatus").split()
    assert _one("Service", "TimeoutStopSec") == "15s"
    # Room for the API's largest connection cap and the sources beside it (issue [13/16]).
    from agent.config import ApiConfig

    cap = ApiConfig.model_fields["max_connections"].metadata
    largest = next(m.le for m in cap if getattr(m, "le", None) is not None)
    assert int(_one("Service", "LimitNOFILE")) >= 4 * largest
    assert _one("Unit", "StartLimitIntervalSec") == "10min"
    assert _one("Unit", "StartLimitBurst") == "5"
    assert _one("Service", "User") == "roomsync"
    assert _one("Service", "Group") == "roomsync"
    assert _one("Service", "StateDirectory") == "roomsync"
    assert _one("Service", "StateDirectoryMode") == "0700"
    assert _one("Service", "ConfigurationDirectory") == "roomsync"
    assert _one("Service", "DevicePolicy") == "closed"
    assert _values("Service", "DeviceAllow") == [
        "char-usb_device rw",
        "char-video4linux rw",
        "char-hidraw rw",
    ]
    assert _one("Service", "RestrictAddressFamilies").split() == [
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    ]
    assert _one("Service", "CapabilityBoundingSet") == ""
    assert _one("Service", "AmbientCapabilities") == ""
    assert _values("Service", "SystemCallFilter")[0] == "@system-service"
    assert _one("Service", "SystemCallArchitectures") == "native"
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert _one("Service", key) == "yes", key
    assert _one("Service", "ProtectSystem") == "strict"
    assert _one("Service", "UMask") == "0077"
    assert _one("Install", "WantedBy") == "multi-user.target"


def test_unit_does_not_hide_usb_from_the_agent() -> None:
    # PrivateDevices= would replace /dev with a minimal tree without /dev/bus/usb.
    assert _values("Service", "PrivateDevices") == []
    assert _values("Service", "DynamicUser") == []  # the udev rule needs a static group


def test_credentials_are_loaded_and_a_missing_one_does_not_fail_the_unit() -> None:
    loads = dict(v.split(":", 1) for v in _values("Service", "LoadCredential"))
    assert loads == {
        "portal-token": "roomsync.portal-token",
        "api-token": "roomsync.api-token",
        "snmp-community": "roomsync.snmp-community",
        "snmp-auth-key": "roomsync.snmp-auth-key",
        "snmp-priv-key": "roomsync.snmp-priv-key",
        "ssh-key": "roomsync.ssh-key",
        "collabos-password": "roomsync.collabos-password",
    }
    # A bare name is looked up in the credential stores and skipped when absent; an absolute
    # path that does not exist would fail the unit with 243/CREDENTIALS.
    assert not any(source.startswith("/") for source in loads.values())


def test_directive_parser_sees_repeats_and_sections() -> None:
    text = "[Unit]\nA=1\n# c\n[Service]\nA=2\nA=\\\n  3\n; c\nB=\n"
    assert _directives(text) == [
        ("Unit", "A", "1"),
        ("Service", "A", "2"),
        ("Service", "A", "3"),
        ("Service", "B", ""),
    ]


# ------------------------------------------------------------------------- systemd-analyze


def _roomsync_executable() -> str:
    exe = shutil.which("roomsync", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail(f"no roomsync console script beside {sys.executable}: run scripts/bootstrap")
    return exe


def _verifiable_copy(tmp_path: Path) -> Path:
    shipped = UNIT.read_text()
    exe = _roomsync_executable()
    copy = re.sub(
        rf"^ExecStart={re.escape(INSTALLED_EXEC)}(?= |$)", f"ExecStart={exe}", shipped, count=1, flags=re.M
    )
    changed = [
        line
        for line in difflib.ndiff(shipped.splitlines(), copy.splitlines())
        if line.startswith(("- ", "+ "))
    ]
    assert changed == [f"- ExecStart={INSTALLED_EXEC} run", f"+ ExecStart={exe} run"], changed
    path = tmp_path / UNIT.name
    path.write_text(copy)
    return path


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    result = _run([analyze, "verify", str(_verifiable_copy(tmp_path))])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_check_does_catch_mistakes(tmp_path: Path) -> None:
    # The check above relies on verify *printing* problems it only warns about.
    analyze = _tool("systemd-analyze")
    path = _verifiable_copy(tmp_path)
    path.write_text(
        path.read_text().replace("UMask=0077", "UMask=0077\nProtectSytem=strict\nRestrictRealtime=maybe")
    )
    result = _run([analyze, "verify", str(path)])
    output = result.stdout + result.stderr
    assert "ProtectSytem" in output and "maybe" in output, output


EXPOSURE_RE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")


def _exposure(output: str, unit: str) -> float:
    match = EXPOSURE_RE.search(output)
    if match is None or match.group(1) != unit:
        raise AssertionError(f"no 'Overall exposure level for {unit}' line in:\n{output}")
    return float(match.group(2))


def test_exposure_parser_fails_without_the_line() -> None:
    assert _exposure("→ Overall exposure level for a.service: 1.3 OK :-)", "a.service") == 1.3
    with pytest.raises(AssertionError):
        _exposure("Failed to load unit\n", "a.service")
    with pytest.raises(AssertionError):
        _exposure("→ Overall exposure level for other.service: 1.0 OK", "a.service")


def test_systemd_analyze_security_exposure() -> None:
    analyze = _tool("systemd-analyze")
    result = _run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)])
    output = result.stdout + result.stderr
    exposure = _exposure(output, UNIT.name)
    assert exposure <= MAX_EXPOSURE, output


# ------------------------------------------------------------------------------- sysusers


def test_sysusers_creates_the_system_user_and_group(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    result = _run([sysusers, f"--root={tmp_path}", str(SYSUSERS)])
    assert result.returncode == 0, result.stdout + result.stderr
    passwd = [line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()]
    group = [line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()]
    assert [p[0] for p in passwd] == ["roomsync"]
    assert [g[0] for g in group] == ["roomsync"]
    _, _, uid, gid, _, home, shell = passwd[0]
    assert 0 < int(uid) < 1000, "a system user"
    assert gid == group[0][2], "its primary group is roomsync"
    assert shell.endswith("/nologin")
    assert home == "/"


# ------------------------------------------------------------------------------- udev rule

TOKEN_RE = re.compile(r'\s*([A-Z_]+(?:\{[^}]*\})?)\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(?:,|$)')


def _udev_rules(text: str) -> list[list[tuple[str, str, str]]]:
    rules = []
    for line in text.replace("\\\n", "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens, pos = [], 0
        while pos < len(line):
            match = TOKEN_RE.match(line, pos)
            assert match, f"cannot parse {line[pos:]!r}"
            tokens.append((match.group(1), match.group(2), match.group(3)))
            pos = match.end()
        rules.append(tokens)
    return rules


def _matches(rule: list[tuple[str, str, str]], device: dict[str, str]) -> bool:
    return all(device.get(key) == value for key, op, value in rule if op == "==")


def test_udev_rule_gives_group_roomsync_logitech_usb_devices_only() -> None:
    rules = _udev_rules(RULES.read_text())
    assert len(rules) == 3
    rule = rules[0]
    assert {t for t in rule if t[1] in ("==", "!=")} == {
        ("SUBSYSTEM", "==", "usb"),
        ("ENV{DEVTYPE}", "==", "usb_device"),
        ("ATTR{idVendor}", "==", "046d"),
    }
    assert {t for t in rule if t[1] not in ("==", "!=")} == {
        ("GROUP", "=", "roomsync"),
        ("MODE", "=", "0660"),
    }
    bar = {"SUBSYSTEM": "usb", "ENV{DEVTYPE}": "usb_device", "ATTR{idVendor}": "046d"}
    assert _matches(rule, bar)
    assert not _matches(rule, {**bar, "ENV{DEVTYPE}": "usb_interface"})
    assert not _matches(rule, {**bar, "ATTR{idVendor}": "1d6b"})
    assert not _matches(rule, {**bar, "SUBSYSTEM": "hidraw"})


def test_udev_rule_gives_logitech_hidraw_and_video_nodes_only() -> None:
    _, hidraw, video = _udev_rules(RULES.read_text())
    # Vendor and product on one device: the two HID functions read, nothing else of Logitech's.
    assert hidraw == [
        ("SUBSYSTEM", "==", "hidraw"),
        ("ATTRS{idVendor}", "==", "046d"),
        ("ATTRS{idProduct}", "==", "0885|0872"),
        ("GROUP", "=", "roomsync"),
        ("MODE", "=", "0660"),
    ]
    # The video group keeps its nodes (conferencing software): roomsync is added by an ACL.
    assert video == [
        ("ACTION", "!=", "remove"),
        ("SUBSYSTEM", "==", "video4linux"),
        ("ATTRS{idVendor}", "==", "046d"),
        ("ATTRS{idProduct}", "==", "08e2|0866|0876"),
        ("RUN", "+=", "/bin/setfacl -m g:roomsync:rw $devnode"),
    ]
    for rule, subsystem, products in (
        (hidraw, "hidraw", ("0885", "0872")),
        (video, "video4linux", ("08e2", "0866", "0876")),
    ):
        allowed = {t[2] for t in rule if t[0] == "ATTRS{idProduct}"}
        assert allowed == {"|".join(products)}
        node = {"SUBSYSTEM": subsystem, "ATTRS{idVendor}": "046d", "ATTRS{idProduct}": "|".join(products)}
        assert _matches(rule, node)
        assert not _matches(rule, {**node, "ATTRS{idVendor}": "0bda"})  # another vendor's camera
        assert not _matches(rule, {**node, "ATTRS{idProduct}": "c52b"})  # a Unifying receiver
        assert not _matches(rule, {**node, "SUBSYSTEM": "sound"})


def test_udev_parser_rejects_what_it_does_not_understand() -> None:
    with pytest.raises(AssertionError):
        _udev_rules('SUBSYSTEM=="usb" GROUP="x"\n')  # missing comma
    assert _udev_rules('# c\nA=="1", \\\n B="2"\n') == [[("A", "==", "1"), ("B", "=", "2")]]


def test_one_group_name_across_unit_rule_and_sysusers() -> None:
    rule_group = next(v for k, _, v in _udev_rules(RULES.read_text())[0] if k == "GROUP")
    sysusers_names = [
        line.split()[1]
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rule_group == _one("Service", "Group") == _one("Service", "User")
    assert sysusers_names == [rule_group]


def _systemd_version() -> int | None:
    analyze = shutil.which("systemd-analyze") or shutil.which("systemd-analyze", path=SYSTEM_PATH)
    found = re.match(r"systemd (\d+)", _run([analyze, "--version"]).stdout) if analyze else None
    return int(found.group(1)) if found else None


def test_udevadm_verify_accepts_the_rule() -> None:
    version = _systemd_version()
    if version is not None and version < UDEVADM_VERIFY_SINCE:
        not_applicable(
            f"'udevadm verify' exists from systemd {UDEVADM_VERIFY_SINCE} on and this machine has "
            f"systemd {version} (Debian 12 ships 252); the rule is checked by the parser above"
        )
    udevadm = require_tool("udevadm", "udev", path=SYSTEM_PATH)
    helptext = _run([udevadm, "verify", "--help"])
    if helptext.returncode != 0:
        not_applicable(f"this udevadm has no 'verify' command (systemd >= {UDEVADM_VERIFY_SINCE})")
    argv = [udevadm, "verify"]
    if "--resolve-names" in helptext.stdout:
        argv.append("--resolve-names=never")  # the roomsync group need not exist here
    result = _run([*argv, str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
