"""Secrets from files and systemd credentials: clear errors that never show the secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.secretfile import MAX_SECRET_BYTES, SecretFileError, read_secret
from tests.shared import not_applicable


def test_reads_one_line_without_its_newline(tmp_path: Path):
    f = tmp_path / "key"
    f.write_text("s3cret-value\n")
    assert read_secret(f, environ={}) == "s3cret-value"


def test_relative_name_is_looked_up_in_credentials_directory(tmp_path: Path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "snmp-auth").write_text("from-systemd\r\n")
    assert read_secret("snmp-auth", environ={"CREDENTIALS_DIRECTORY": str(creds)}) == "from-systemd"


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"two\nlines\n", "more than one line"),
        (b"\xff\xfe-binary", "not UTF-8"),
        (b"x" * (MAX_SECRET_BYTES + 1), "larger than"),
    ],
)
def test_bad_secret_files_are_clear_errors_without_content(tmp_path: Path, content: bytes, words: str):
    f = tmp_path / "key"
    f.write_bytes(content)
    with pytest.raises(SecretFileError) as info:
        read_secret(f, "SNMPv3 auth key", environ={})
    assert words in str(info.value) and "SNMPv3 auth key file" in str(info.value)
    assert "two" not in str(info.value) and "binary" not in str(info.value)  # never the content


def test_missing_directory_and_unreadable(tmp_path: Path):
    with pytest.raises(SecretFileError, match="does not exist"):
        read_secret(tmp_path / "absent", environ={})
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret(tmp_path, environ={})
    if os.geteuid() == 0:
        not_applicable(
            "root reads any file, and CI runs as root: the unreadable-file case needs an unprivileged user"
        )
    f = tmp_path / "key"
    f.write_text("x\n")
    f.chmod(0)
    with pytest.raises(SecretFileError, match="not readable"):
        read_secret(f, environ={})
