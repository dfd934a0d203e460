"""Publishing to an MQTT broker (issue [14/16], part 3): one connection, MQTT 5, a message
counted as delivered only once the broker acknowledged it (QoS 1: ``PUBACK``).

This is the connection only; the output (its topics, payloads and queue) is
:class:`agent.uploader.outputs.MqttTransport` and docs/mqtt.md.

* ``mqtt://HOST[:1883]`` or ``mqtts://HOST[:8883]``. TLS is always verified: the system's
  trust store, or ``ca_file``; the host name is checked. There is no setting that turns
  verification off.
* ``username`` and a password (read by the caller from its file) when given; the password is
  never logged or put in an error.
* Every wait is bounded by ``timeout``: connecting (TCP, TLS, ``CONNACK``) and each
  ``PUBACK``. A refused connection (bad user or password, not authorised) is
  :class:`MqttRefused`, anything else that did not deliver :class:`MqttError`, each with one
  clear line.

paho-mqtt (2.x, pure Python) does the protocol; its network loop runs in a thread of its own
(``loop_start``), so the calls here block the caller only: the daemon will call them from a
worker thread, never on its event loop.
"""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["MqttError", "MqttPublisher", "MqttRefused", "MqttRejected", "MqttTarget"]

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
#: ``CONNACK`` reason codes that retrying with the same settings cannot help (MQTT 5,
#: 3.2.2.2): unsupported protocol version, client id not valid, bad user name or password,
#: not authorised, banned, bad authentication method. Any other refusal (server unavailable,
#: busy, quota or connection rate exceeded…) is worth retrying.
REFUSED_FOR_GOOD = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})
#: ``PUBACK`` reason codes that say the message itself will never be taken (payload format
#: invalid, packet too large); not authorised and a bad topic name are the settings'
#: (:attr:`MqttRejected.settings`); the others (quota exceeded, unspecified…) may pass later.
MESSAGE_REFUSED = frozenset({0x95, 0x99})
SETTINGS_REFUSED = frozenset({0x87, 0x90})


class MqttError(Exception):
    """Nothing was delivered: the broker could not be reached, or did not acknowledge."""


class MqttRefused(MqttError):
    """The broker refused the connection for a reason retrying with the same settings cannot
    help (:data:`REFUSED_FOR_GOOD`: bad user or password, not authorised…)."""


class MqttRejected(MqttError):
    """The broker answered a ``PUBLISH`` with a ``PUBACK`` that refuses it (a reason code of
    0x80 or more): not delivered. ``code`` is that reason code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message_refused(self) -> bool:
        """Whether the message itself can never be taken (payload format, size)."""
        return self.code in MESSAGE_REFUSED

    @property
    def settings(self) -> bool:
        """Whether the settings are refused (not authorised to publish there, a bad topic)."""
        return self.code in SETTINGS_REFUSED


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """Where and as whom to connect."""

    host: str
    port: int
    tls: bool
    client_id: str
    username: str | None = None
    ca_file: Path | None = None

    @classmethod
    def of(
        cls, url: str, client_id: str, *, username: str | None = None, ca_file: Path | None = None
    ) -> MqttTarget:
        """From ``mqtt://host[:port]`` or ``mqtts://host[:port]``; ``ValueError`` otherwise."""
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        if parts.username or parts.password or parts.path not in ("", "/") or parts.query:
            raise ValueError(
                f"{url!r}: only a host and a port (the user and password are settings of their own)"
            )
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
        if ca_file is not None and parts.scheme != "mqtts":
            raise ValueError(f"{url!r}: a ca_file needs mqtts://")
        return cls(parts.hostname, port, parts.scheme == "mqtts", client_id, username, ca_file)

    @property
    def where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class MqttPublisher:
    """One connection to the broker of ``target``, opened by :meth:`connect` (or ``with``)."""

    def __init__(
        self,
        target: MqttTarget,
        *,
        password: str | None = None,
        timeout: float = 10.0,
        keepalive: int = 30,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        """``will``: (topic, payload) the broker publishes, retained with QoS 1, if this
        connection ends without a goodbye (the agent's ``offline`` status)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.target = target
        self.timeout = timeout
        self._connected = threading.Event()
        self._refusal: str | None = None
        self._refusal_code = 0
        self._lost: str | None = None
        #: PUBACKs that refused their message: reason (text, code) by message id.
        self._refused: dict[int, tuple[str, int]] = {}
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=target.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        if target.tls:
            context = ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)
            context.check_hostname = True
            context.verify_mode = ssl.CERT_REQUIRED
            client.tls_set_context(context)
        if target.username is not None:
            client.username_pw_set(target.username, password)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_timeout = timeout  # the TCP connect (and TLS handshake) too
        self._keepalive = keepalive
        self._client = client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refusal, self._refusal_code = str(reason), int(reason.value)
        self._connected.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        # Called before paho marks the message published: the refusal is known by then.
        if reason is not None and reason.is_failure:
            self._refused[mid] = (str(reason), int(reason.value))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._lost = str(reason)
        self._connected.set()

    def connect(self, timeout: float | None = None) -> MqttPublisher:
        """Connect and wait for ``CONNACK`` within ``timeout`` (else the publisher's)."""
        where = self.target.where
        wait = self.timeout if timeout is None else min(self.timeout, timeout)
        try:
            self._client.connect(self.target.host, self.target.port, keepalive=self._keepalive)
        except ssl.SSLError as exc:
            raise MqttError(f"{where}: TLS failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise MqttError(f"{where}: cannot connect: {exc.strerror or exc}") from None
        self._client.loop_start()
        if not self._connected.wait(wait):
            self.close()
            raise MqttError(f"{where}: no CONNACK within {wait:g} s")
        if self._refusal is not None:
            self.close()
            refused = MqttRefused if self._refusal_code in REFUSED_FOR_GOOD else MqttError
            raise refused(f"{where} refused the connection: {self._refusal}")
        if self._lost is not None:
            self.close()
            raise MqttError(f"{where} closed the connection: {self._lost}")
        return self

    @property
    def connected(self) -> bool:
        """Whether the connection is up (it is never re-made: a lost one needs a new
        publisher)."""
        return self._lost is None and self._refusal is None and bool(self._client.is_connected())

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any],
        *,
        retain: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish with QoS 1 and return once the broker acknowledged it (``PUBACK``) within
        ``timeout`` (else the publisher's); :class:`MqttRejected` when that ``PUBACK``
        refused it."""
        if isinstance(payload, dict):
            payload = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        wait = self.timeout if timeout is None else min(self.timeout, timeout)
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(wait)
        except (RuntimeError, ValueError) as exc:  # not queued: the connection is gone
            raise MqttError(f"{self.target.where}: {topic}: not sent: {exc}") from None
        if not info.is_published():
            raise MqttError(f"{self.target.where}: {topic}: no PUBACK within {wait:g} s")
        refused = self._refused.pop(info.mid, None)
        if refused is not None:
            raise MqttRejected(
                f"{self.target.where}: {topic}: the broker refused it: {refused[0]}", refused[1]
            )

    def close(self) -> None:
        """A clean goodbye (the broker then does not publish the will) and the loop stopped."""
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    def __enter__(self) -> MqttPublisher:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
