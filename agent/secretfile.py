"""Reading secrets (SNMP keys and communities, portal and API tokens) from files.

A secret is never taken from the command line in production (it would show in ``ps`` and
shell history) and never logged. Under systemd, ``LoadCredential=`` puts secrets in
``$CREDENTIALS_DIRECTORY``: a bare name is looked up there first.

A path written in the configuration file has been resolved already when it gets here
(:func:`agent.config.load_config`: a bare name is a credential when
:func:`credential_path` finds one, else a file beside the configuration file); the lookup at
read time serves the paths the environment and the command line give.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

MAX_SECRET_BYTES = 64 * 1024


class SecretFileError(Exception):
    """A secret file is missing, unreadable, empty or absurd. The message names the file,
    never its content."""


def resolve_secret_path(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Path:
    """``path`` itself when absolute; else under ``$CREDENTIALS_DIRECTORY`` when that holds
    it (systemd credentials), else relative to the working directory."""
    p = Path(path)
    if p.is_absolute():
        return p
    return _in_credentials(p, environ) or p


def credential_path(name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """The systemd credential ``name`` in ``$CREDENTIALS_DIRECTORY``, or ``None`` when there
    is no such directory or no credential by that name. Only a bare file name (no ``/``, not
    ``.`` or ``..``) can name one: a credential ID is a file name."""
    if not name or "/" in name or name in (".", ".."):
        return None
    return _in_credentials(Path(name), environ)


def _in_credentials(relative: Path, environ: Mapping[str, str] | None) -> Path | None:
    env = os.environ if environ is None else environ
    creds = env.get("CREDENTIALS_DIRECTORY")
    if not creds:
        return None
    candidate = Path(creds) / relative
    try:
        return candidate if candidate.exists() else None
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return None


def read_secret(
    path: str | os.PathLike[str], what: str = "secret", environ: Mapping[str, str] | None = None
) -> str:
    """The secret in ``path``: its text without the trailing newline. Raises
    :class:`SecretFileError`."""
    p = resolve_secret_path(path, environ)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{what} file {p} is not a regular file")
        if st.st_size > MAX_SECRET_BYTES:
            raise SecretFileError(f"{what} file {p} is larger than {MAX_SECRET_BYTES} bytes")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SecretFileError(f"{what} file {p} does not exist") from None
    except PermissionError:
        raise SecretFileError(f"{what} file {p} is not readable by this user") from None
    except OSError as exc:
        raise SecretFileError(f"{what} file {p} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(f"{what} file {p} is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text.strip():
        raise SecretFileError(f"{what} file {p} is empty")
    if "\n" in text:
        raise SecretFileError(f"{what} file {p} holds more than one line")
    return text
