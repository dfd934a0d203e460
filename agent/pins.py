"""Certificate pins: the public key each device presented when the agent first reached it.

CollabOS devices serve their Device Management API with a self-signed certificate of their
own, which no CA vouches for. Instead of turning verification off (as every public client
does), the agent pins the certificate's public key at first contact, in the store, before it
sends any password, and from then on refuses a device whose key changed until the operator
accepts the new one (``roomsync trust collabos HOST --accept-new``), as SSH does with
``known_hosts``.

A pin is the hex SHA-256 of the certificate's DER ``SubjectPublicKeyInfo`` (what HPKP and
``openssl … | openssl pkey -pubin -outform der | openssl dgst -sha256`` compute), so a device
that renews its certificate with the same key keeps its pin. Beside it the SHA-256 of the
whole certificate last seen with that key is kept: a connection can be bound to it directly
(one TLS handshake per read); when the device presents another certificate, its key is
compared with the pin before anything is sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from agent.store import Store, utc_text

How = Literal["first-contact", "accepted"]


class PinError(Exception):
    """A certificate cannot be read (it is not DER X.509)."""


def spki_sha256(der_certificate: bytes) -> str:
    """The hex SHA-256 of the public key (``SubjectPublicKeyInfo``) of a DER certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        certificate = x509.load_der_x509_certificate(der_certificate)
        spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError) as exc:
        raise PinError(f"the certificate cannot be read: {exc}") from None
    return hashlib.sha256(spki).hexdigest()


def certificate_sha256(der_certificate: bytes) -> str:
    """The hex SHA-256 of a whole DER certificate (what TLS fingerprint checks compare)."""
    return hashlib.sha256(der_certificate).hexdigest()


def shown(pin: str) -> str:
    """A pin as the operator reads it: ``sha256:`` and the hex digest."""
    return f"sha256:{pin}"


@dataclass(frozen=True, slots=True)
class Pin:
    service: str
    host: str
    spki_sha256: str
    cert_sha256: str | None
    pinned_at: str
    how: How

    def to_dict(self) -> dict[str, str | None]:
        return {
            "service": self.service,
            "host": self.host,
            "spki_sha256": self.spki_sha256,
            "cert_sha256": self.cert_sha256,
            "pinned_at": self.pinned_at,
            "how": self.how,
        }


_COLUMNS = "service, host, spki_sha256, cert_sha256, pinned_at, how"


class PinStore:
    """The pins of one service (``collabos``) in an open :class:`~agent.store.Store`."""

    def __init__(self, store: Store, service: str) -> None:
        self.store = store
        self.service = service

    def get(self, host: str) -> Pin | None:
        rows = self.store.read(
            f"SELECT {_COLUMNS} FROM tls_pins WHERE service = ? AND host = ?",
            (self.service, host),
        )
        return Pin(*rows[0]) if rows else None

    def all(self) -> list[Pin]:
        rows = self.store.read(
            f"SELECT {_COLUMNS} FROM tls_pins WHERE service = ? ORDER BY host",
            (self.service,),
        )
        return [Pin(*row) for row in rows]

    def pin_first(self, host: str, spki: str, cert: str, now: datetime) -> Pin:
        """Pin ``spki`` (seen with certificate ``cert``) for ``host`` unless a pin is there
        already; the pin that holds after the call (another process may have pinned first:
        then that one)."""
        with self.store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO tls_pins (service, host, spki_sha256, cert_sha256, pinned_at, how) "
                "VALUES (?, ?, ?, ?, ?, 'first-contact')",
                (self.service, host, spki, cert, utc_text(now)),
            )
        pin = self.get(host)
        assert pin is not None
        return pin

    def accept(self, host: str, spki: str, cert: str | None, now: datetime) -> Pin:
        """Replace ``host``'s pin with ``spki`` (the operator accepted a new certificate)."""
        with self.store.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO tls_pins (service, host, spki_sha256, cert_sha256, pinned_at, how) "
                "VALUES (?, ?, ?, ?, ?, 'accepted')",
                (self.service, host, spki, cert, utc_text(now)),
            )
        pin = self.get(host)
        assert pin is not None
        return pin

    def renewed(self, host: str, spki: str, cert: str) -> bool:
        """Record that ``host`` now presents certificate ``cert`` with its pinned key ``spki``
        (a renewal); whether the pin still holds that key (nothing changes otherwise)."""
        with self.store.transaction() as db:
            cursor = db.execute(
                "UPDATE tls_pins SET cert_sha256 = ? WHERE service = ? AND host = ? AND spki_sha256 = ?",
                (cert, self.service, host, spki),
            )
            return cursor.rowcount > 0

    def forget(self, host: str) -> bool:
        """Remove ``host``'s pin; whether there was one."""
        with self.store.transaction() as db:
            cursor = db.execute("DELETE FROM tls_pins WHERE service = ? AND host = ?", (self.service, host))
            return cursor.rowcount > 0
