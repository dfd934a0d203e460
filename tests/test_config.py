"""Configuration: the example file, clear errors, environment overrides, masked secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigError, load_config, resolve_state_dir

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "agent.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ=env or {})
    return exc.value.problems


def test_example_config_is_valid_and_documents_every_key() -> None:
    loaded = load_config(EXAMPLE, environ={})
    cfg = loaded.config
    assert cfg.room is not None and cfg.room.id == "oslo-4-12" and cfg.room.seat_count == 8
    assert cfg.sources.usb.enabled and not cfg.sources.snmp.enabled
    text = EXAMPLE.read_text()

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            yield prefix + name
            ann = field.annotation
            sub = getattr(ann, "model_fields", None)
            if sub is None:
                for arg in getattr(ann, "__args__", ()):
                    if getattr(arg, "model_fields", None):
                        ann, sub = arg, arg.model_fields
            if sub is not None:
                yield from keys(ann, prefix + name + ".")

    from agent.config import AgentConfig

    for dotted in keys(AgentConfig):
        leaf = dotted.rsplit(".", 1)[-1]
        assert leaf in text, f"{dotted} is not documented in {EXAMPLE.name}"


def test_no_file_gives_builtin_defaults(tmp_path: Path) -> None:
    loaded = load_config(None, environ={"CONFIGURATION_DIRECTORY": str(tmp_path)})
    assert loaded.path is None
    assert loaded.requested == tmp_path / "agent.toml"
    assert loaded.config.room is None
    assert loaded.config.sources.usb.sysfs_root == Path("/sys")
    assert loaded.config.api.listen == "127.0.0.1:8765"


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.toml") == [f"{tmp_path / 'nope.toml'}: no such file"]
    assert problems(None, {"ROOMSYNC_CONFIG": str(tmp_path / "x.toml")})[0].endswith("no such file")


def test_errors_name_file_key_path_and_expectation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[room]
id = "bad id with spaces"
seat_count = -3

[sources.usb]
enabeld = true

[sources.snmp]
port = 70000
timeout = "soon"
""",
    )
    lines = problems(path)
    text = "\n".join(lines)
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert f"{path}: room.id: String should match pattern" in text
    assert f"{path}: room.seat_count: Input should be greater than or equal to 0 (got -3)" in text
    assert f"{path}: sources.usb.enabeld: unknown key" in text
    assert f"{path}: sources.snmp.port: Input should be less than or equal to 65535" in text
    assert f"{path}: sources.snmp.timeout: Input should be a valid number" in text
    assert len(lines) == 5


def test_missing_required_key_and_cross_field_rule(tmp_path: Path) -> None:
    text = "\n".join(problems(write(tmp_path, '[room]\nname = "Fjord"\n[sources.snmp]\nversion = "3"\n')))
    assert "room.id: required key is missing" in text
    assert 'sources.snmp: Value error, version = "3" needs a [sources.snmp.v3] table' in text


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[room\nid = 1", "TOML syntax error"),
        ("room = 5\n", "room: Input should be a valid dictionary"),
        (b"\xff\xfe[room]", "not UTF-8"),
    ],
)
def test_malformed_files(tmp_path: Path, content: str | bytes, expected: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert expected in "\n".join(problems(path))


def test_toml_syntax_error_says_where(tmp_path: Path) -> None:
    [line] = problems(write(tmp_path, '[room]\nid = "a"\nname = \n'))
    assert "line 3" in line


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    assert "is a directory" in problems(tmp_path)[0]


def test_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, '[room]\nid = "a"\n')
    loaded = load_config(
        path,
        environ={
            "ROOMSYNC_ROOM__NAME": "Fjord",
            "ROOMSYNC_ROOM__SEAT_COUNT": "12",
            "ROOMSYNC_SOURCES__USB__ENABLED": "false",
            "ROOMSYNC_SOURCES__SNMP__TARGETS": '["10.0.0.0/24", "printer:1161"]',
            "ROOMSYNC_CONFIG": "ignored when a path is given",
            "OTHER": "x",
        },
    )
    cfg = loaded.config
    assert (cfg.room.id, cfg.room.name, cfg.room.seat_count) == ("a", "Fjord", 12)
    assert cfg.sources.usb.enabled is False
    assert cfg.sources.snmp.targets == ["10.0.0.0/24", "printer:1161"]
    assert set(loaded.env_overrides) == {
        "ROOMSYNC_ROOM__NAME",
        "ROOMSYNC_ROOM__SEAT_COUNT",
        "ROOMSYNC_SOURCES__USB__ENABLED",
        "ROOMSYNC_SOURCES__SNMP__TARGETS",
    }


def test_environment_errors_name_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, '[room]\nid = "a"\n')
    [line] = problems(path, {"ROOMSYNC_ROOM__SEAT_COUNT": "many"})
    assert line.startswith("environment ROOMSYNC_ROOM__SEAT_COUNT: room.seat_count:")
    [line] = problems(path, {"ROOMSYNC_ROOM__ID__X": "1"})
    assert "environment ROOMSYNC_ROOM__ID__X: room.id is not a table" in line
    [line] = problems(path, {"ROOMSYNC_SOURCES__SNMP__TARGETS": "[oops"})
    assert "looks like JSON but is not valid" in line


def test_state_dir_resolution() -> None:
    cfg = load_config(None, environ={"CONFIGURATION_DIRECTORY": "/nonexistent"}).config
    assert resolve_state_dir(cfg, "/x", environ={}) == Path("/x")
    systemd = {"STATE_DIRECTORY": "/var/lib/roomsync"}
    assert resolve_state_dir(cfg, environ=systemd) == Path("/var/lib/roomsync")
    assert resolve_state_dir(cfg, environ={"INVOCATION_ID": "abc"}) == Path("/var/lib/roomsync")
    assert resolve_state_dir(cfg, environ={"HOME": "/srv/ada"}) == Path("/srv/ada/.local/state/roomsync")
    assert resolve_state_dir(cfg, environ={"XDG_STATE_HOME": "/s"}) == Path("/s/roomsync")


def test_check_config_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[room]\nid = "a"\n[sources.snmp]\ncommunity = "s3cret-community"\n')
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "s3cret-community" not in out
    assert 'community = "**********"' in out
    assert f"# configuration file: {path} (valid)" in out
    assert main(["check-config", "--config", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["sources"]["snmp"]["community"] == "**********"
    assert data["file"] == str(path)


def test_check_config_invalid_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[room]\nid = 5\n[sources.snmp]\ncommunity = "leakme"\nport = "x"\n')
    assert main(["check-config", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "invalid configuration" in err and "room.id" in err and "sources.snmp.port" in err
    assert "Traceback" not in err


def test_secret_values_are_not_echoed_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "[sources.snmp]\ncommunity = 12345678\n")
    [line] = problems(path)
    assert "sources.snmp.community" in line and "12345678" not in line


@pytest.mark.parametrize("listen", ["0.0.0.0:8765", "[::]:8765", "192.0.2.10:8765"])
def test_check_config_refuses_what_run_refuses_an_api_open_to_the_network_without_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'[api]\nlisten = "{listen}"\n')
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "reachable from the network" in err and "token_file" in err
    token = tmp_path / "api.token"
    token.write_text("a-token\n")
    path.write_text(f'[api]\nlisten = "{listen}"\ntoken_file = "{token}"\n')
    assert main(["check-config", "--config", str(path)]) == 0


def test_a_typo_in_an_environment_variables_key_is_blamed_on_that_variable(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[sources.usb]\nenabled = true\n")
    with pytest.raises(ConfigError) as problem:
        load_config(path, environ={"ROOMSYNC_SOURCES__USBB__SYSFS_ROOT": "/sys"})
    [line] = problem.value.problems
    assert line.startswith("environment ROOMSYNC_SOURCES__USBB__SYSFS_ROOT: sources.usbb: unknown key"), line
    assert str(path) not in line


def test_an_empty_environment_variable_is_unset(tmp_path: Path) -> None:
    from agent.config import resolve_state_dir

    loaded = load_config(None, environ={"ROOMSYNC_STATE_DIR": "", "ROOMSYNC_SOURCES__SNMP__TIMEOUT": "  "})
    assert loaded.config.state_dir is None and loaded.env_overrides == ()
    where = resolve_state_dir(loaded.config, environ={"HOME": str(tmp_path)})
    assert where == tmp_path / ".local" / "state" / "roomsync"  # not the current directory
