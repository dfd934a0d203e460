"""A read-only SNMP client on one shared pysnmp engine (asyncio).

Requests go through the engine's RFC 3412 ``sendPdu`` primitive with an explicit transport
address, instead of pysnmp's high-level API. The high-level API writes an SNMP-TARGET-MIB
row for every address it talks to; measured here, that costs ~4.5 ms of CPU per address
(1.15 s for a /24, ~18 s for a /20), which would make a sweep's time grow with silent
addresses. Going one level down keeps the engine (message processing, USM security, v3
engine discovery, timers) and drops the per-address configuration.

Only GET and GETBULK are ever sent: reading never changes a device. Every PDU passes
:func:`~agent.collectors.snmp.gate.check_snmp_request` in :meth:`SnmpClient.request`, the one
place that sends.

Deadlines are the client's own, per request, on the monotonic clock (``loop.call_at``): pysnmp
expires requests on its 0.1 s timer ticks, which overshot the timeout by up to a tick and more
under load. The engine is given a later expiry as a backstop only; at the client's deadline
the engine's state for the request is released and the request fails (or is sent again).

pysnmp's engine modules are imported when a client is made, so code that only needs the
errors or the credentials (the v2c sweep, the configuration) does not load them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pysnmp.proto import errind
from pysnmp.proto.api import v2c

from agent.collectors.snmp.gate import Oid, check_snmp_request

__all__ = ["Oid", "SnmpClient", "SnmpError", "SnmpTimeout", "check_snmp_request"]

#: pysnmp's names (in ``pysnmp.entity.config``) for the USM protocols the configuration offers.
AUTH_PROTOCOLS = {
    "SHA": "USM_AUTH_HMAC96_SHA",
    "SHA224": "USM_AUTH_HMAC128_SHA224",
    "SHA256": "USM_AUTH_HMAC192_SHA256",
    "SHA384": "USM_AUTH_HMAC256_SHA384",
    "SHA512": "USM_AUTH_HMAC384_SHA512",
}
PRIV_PROTOCOLS = {
    "AES": "USM_PRIV_CFB128_AES",
    "AES192": "USM_PRIV_CFB192_AES",
    "AES256": "USM_PRIV_CFB256_AES",
}
#: pysnmp's own expiry comes this many ticks after the client's deadline: a backstop only.
_BACKSTOP_TICKS = 10
#: v3 engine discovery answers (unknown engine id, not in time window) are not failures:
#: the request is sent again with what was learnt, at most this many times.
DISCOVERY_ROUNDS = 4
_SECURITY_NAME = "roomsync"


class SnmpError(Exception):
    """One request failed; the message says why in an operator's words."""


class SnmpTimeout(SnmpError):
    """No answer within the timeout and retries (a silent address, or a wrong v2c community:
    SNMPv2c agents drop requests with an unknown community without a word)."""


class SnmpAuthError(SnmpError):
    """An SNMPv3 agent answered but refused our credentials."""


@dataclass(frozen=True, slots=True)
class V2cCredentials:
    community: str = field(repr=False)

    def __repr__(self) -> str:
        return "V2cCredentials(community=***)"


@dataclass(frozen=True, slots=True)
class V3Credentials:
    user: str
    auth_key: str = field(repr=False)
    priv_key: str = field(repr=False)
    auth_protocol: str = "SHA256"
    priv_protocol: str = "AES"
    context_name: str = ""

    def __repr__(self) -> str:
        return (
            f"V3Credentials(user={self.user!r}, auth={self.auth_protocol}, "
            f"priv={self.priv_protocol}, keys=***)"
        )


Credentials = V2cCredentials | V3Credentials

_AUTH_ERRORS: dict[type[Exception], str] = {
    errind.WrongDigest: "SNMPv3 authentication failed: wrong auth key or auth protocol",
    errind.UnknownUserName: "SNMPv3 user is not known to the agent",
    errind.DecryptionError: "SNMPv3 decryption failed: wrong privacy key or privacy protocol",
    errind.UnsupportedSecurityLevel: "the agent does not allow this SNMPv3 security level for the user",
    errind.AuthenticationFailure: "SNMPv3 authentication failed",
    errind.NotInTimeWindow: "SNMPv3 time window could not be synchronised with the agent",
    errind.UnknownEngineID: "SNMPv3 engine discovery did not complete",
}


def explain(indication: object, *, v3: bool = False) -> SnmpError:
    """An exception in an operator's words for a pysnmp error indication."""
    if isinstance(indication, errind.RequestTimedOut):
        if v3:
            return SnmpTimeout("no answer (host down, SNMP disabled or filtered)")
        return SnmpTimeout("no answer (host down, SNMP disabled, filtered, or a wrong v2c community)")
    for kind, message in _AUTH_ERRORS.items():
        if isinstance(indication, kind):
            return SnmpAuthError(message)
    if isinstance(indication, errind.EncryptionError):
        return SnmpError("SNMPv3 privacy needs the 'cryptography' package (ciphering not available)")
    return SnmpError(f"SNMP error: {indication}")


@dataclass(slots=True, eq=False)
class _Pending:
    future: asyncio.Future[Any]
    address: tuple[str, int]
    pdu: Any
    retries_left: int
    discovery_rounds: int = 0
    #: The engine's handle of the attempt in flight, and that attempt's deadline timer.
    handle: int | None = None
    timer: asyncio.TimerHandle | None = None


class SnmpClient:
    """GET and GETBULK to any address through one engine. Create and use it inside the
    running event loop; always :meth:`close` it (or use ``async with``)."""

    def __init__(self, credentials: Credentials, *, timeout: float = 1.0, retries: int = 0) -> None:
        from pysnmp.entity import config, engine

        self.credentials = credentials
        self.timeout = timeout
        self.retries = retries
        self.engine = engine.SnmpEngine()
        self._domains: dict[int, tuple[int, ...]] = {}
        self._inflight: set[_Pending] = set()
        self._add_transport(4)
        self._add_transport(6)
        if isinstance(credentials, V3Credentials):
            config.add_v3_user(
                self.engine,
                credentials.user,
                getattr(config, AUTH_PROTOCOLS[credentials.auth_protocol]),
                credentials.auth_key,
                getattr(config, PRIV_PROTOCOLS[credentials.priv_protocol]),
                credentials.priv_key,
            )
            self._security = (3, 3, credentials.user, 3)  # securityLevel authPriv
            self._context_name = credentials.context_name
            self._context_engine_id = None
        else:
            config.add_v1_system(self.engine, _SECURITY_NAME, credentials.community)
            self._security = (1, 2, _SECURITY_NAME, 1)  # securityLevel noAuthNoPriv
            self._context_name = ""
            # v1/v2c responses are matched against the community table's context, which
            # is this engine's own id (v3 discovers the agent's instead: None).
            self._context_engine_id = self.engine.snmpEngineID
        mib = self.engine.get_mib_builder()
        self._admin_string = mib.import_symbols("SNMP-FRAMEWORK-MIB", "SnmpAdminString")[0]
        self.requests_sent = 0
        self._varbind_lists: dict[tuple[Oid, ...], Any] = {}

    def _add_transport(self, family: int) -> None:
        from pysnmp.carrier.asyncio.dgram import udp, udp6
        from pysnmp.entity import config

        module = udp if family == 4 else udp6
        transport = (module.UdpAsyncioTransport if family == 4 else module.Udp6AsyncioTransport)()
        try:
            config.add_transport(self.engine, module.DOMAIN_NAME, transport.open_client_mode())
        except Exception:
            if family == 4:
                raise
            return
        self._domains[family] = module.DOMAIN_NAME

    async def __aenter__(self) -> SnmpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for pending in self._inflight:
            if pending.timer is not None:
                pending.timer.cancel()
        self._inflight.clear()
        self.engine.close_dispatcher()

    # ------------------------------------------------------------------ requests

    async def get(self, address: tuple[str, int], oids: Sequence[Oid]) -> list[tuple[Oid, Any]]:
        """GET ``oids`` from ``address``; values as pysnmp objects (``NoSuchObject`` etc.
        included). Raises :class:`SnmpError`."""
        pdu = v2c.GetRequestPDU()
        v2c.apiPDU.set_defaults(pdu)
        # One varbind list shared by every GET of the same objects: nothing mutates a
        # request's varbinds, and building them is most of a request's memory (~6 KB of
        # pyasn1 objects each, measured), which a sweep holds for every address in flight.
        pdu.setComponentByPosition(3, self._varbind_list(tuple(oids)))
        response = await self.request(address, pdu)
        return [(tuple(name), value) for name, value in v2c.apiPDU.get_varbinds(response)]

    def _varbind_list(self, oids: tuple[Oid, ...]) -> Any:
        shared = self._varbind_lists.get(oids)
        if shared is None:
            template = v2c.GetRequestPDU()
            v2c.apiPDU.set_defaults(template)
            v2c.apiPDU.set_varbinds(template, [(v2c.ObjectIdentifier(o), v2c.null) for o in oids])
            shared = self._varbind_lists[oids] = v2c.apiPDU.get_varbind_list(template)
        return shared

    async def get_bulk(
        self, address: tuple[str, int], oids: Sequence[Oid], max_repetitions: int
    ) -> list[list[tuple[Oid, Any]]]:
        """One GETBULK (no non-repeaters): the table of rows, each a list of one varbind
        per requested column."""
        pdu = v2c.GetBulkRequestPDU()
        v2c.apiBulkPDU.set_defaults(pdu)
        v2c.apiBulkPDU.set_non_repeaters(pdu, 0)
        v2c.apiBulkPDU.set_max_repetitions(pdu, max_repetitions)
        v2c.apiBulkPDU.set_varbinds(pdu, [(v2c.ObjectIdentifier(o), v2c.null) for o in oids])
        response = await self.request(address, pdu)
        table = v2c.apiBulkPDU.get_varbind_table(pdu, response)
        return [[(tuple(name), value) for name, value in row] for row in table]

    async def request(self, address: tuple[str, int], pdu: Any) -> Any:
        """Send ``pdu`` and wait for the response PDU (error-status checked)."""
        check_snmp_request(pdu)
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), address, pdu, self.retries)
        self._inflight.add(pending)
        try:
            self._send(pending)
            response = await pending.future
        finally:
            self._inflight.discard(pending)
            if pending.timer is not None:
                pending.timer.cancel()
        status = int(v2c.apiPDU.get_error_status(response))
        if status:
            raise SnmpError(error_status_text(status, int(v2c.apiPDU.get_error_index(response))))
        return response

    def _send(self, pending: _Pending) -> None:
        family = 6 if ":" in pending.address[0] else 4
        domain = self._domains.get(family)
        if domain is None:
            pending.future.set_exception(SnmpError(f"no IPv{family} transport on this host"))
            return
        mp_model, sec_model, sec_name, sec_level = self._security
        # The engine's tables hold names as SnmpAdminString: look them up in that type.
        sec_name = self._admin_string(sec_name)
        dispatcher = self.engine.transport_dispatcher
        ticks = self.timeout / dispatcher.get_timer_resolution() + _BACKSTOP_TICKS
        self.requests_sent += 1
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        try:
            pending.handle = self.engine.message_dispatcher.send_pdu(
                self.engine,
                domain,
                pending.address,
                mp_model,
                sec_model,
                sec_name,
                sec_level,
                self._context_engine_id,
                self._admin_string(self._context_name),
                1,
                pending.pdu,
                True,
                ticks,
                self._on_response,
                pending,
            )
        except Exception as exc:
            indication = getattr(exc, "get", lambda _k: None)("errorIndication") or exc
            if not pending.future.done():
                pending.future.set_exception(explain(indication))
            return
        loop = asyncio.get_running_loop()
        pending.timer = loop.call_at(time.monotonic() + self.timeout, self._deadline, pending, pending.handle)

    def _deadline(self, pending: _Pending, handle: int) -> None:
        """The client's deadline for one attempt: drop the engine's state for it, then handle
        it as the engine would a timeout (send again, or fail)."""
        pending.timer = None
        if pending.future.done() or pending.handle != handle:
            return
        pending.handle = None
        with contextlib.suppress(Exception):  # already released by the engine: nothing to drop
            self.engine.message_dispatcher.release_state_information(self.engine, handle, self._security[0])
        self._failed(pending, errind.requestTimedOut)

    def _on_response(
        self,
        _engine: Any,
        _mp: Any,
        _sm: Any,
        _sn: Any,
        _sl: Any,
        _ce: Any,
        _cn: Any,
        _pv: Any,
        pdu: Any,
        status: Any,
        handle: Any,
        pending: _Pending,
    ) -> None:
        if pending.future.done() or handle != pending.handle:
            return  # an attempt the client has given up on
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        pending.handle = None
        if status:
            self._failed(pending, status["errorIndication"])
            return
        if v2c.apiPDU.get_request_id(pdu) != v2c.apiPDU.get_request_id(pending.pdu):
            pending.future.set_exception(SnmpError("response does not match the request (request-id)"))
            return
        pending.future.set_result(pdu)

    def _failed(self, pending: _Pending, indication: Any) -> None:
        """An attempt ended without a response: go on with discovery, retry, or fail."""
        if (
            isinstance(indication, (errind.NotInTimeWindow, errind.UnknownEngineID))
            and pending.discovery_rounds < DISCOVERY_ROUNDS
        ):
            pending.discovery_rounds += 1
            self._send(pending)
            return
        if isinstance(indication, errind.RequestTimedOut):
            if pending.retries_left > 0:
                pending.retries_left -= 1
                self._send(pending)
                return
            if pending.discovery_rounds:
                # It answered v3 discovery, then not the encrypted request: agents drop
                # what they cannot decrypt (net-snmp does, silently).
                pending.future.set_exception(
                    SnmpAuthError(
                        "the agent answered SNMPv3 discovery but not the request: most likely a "
                        "wrong privacy key or privacy protocol"
                    )
                )
                return
        pending.future.set_exception(explain(indication, v3=isinstance(self.credentials, V3Credentials)))


_ERROR_STATUS = {
    1: "tooBig",
    2: "noSuchName",
    3: "badValue",
    4: "readOnly",
    5: "genErr",
    6: "noAccess",
    7: "wrongType",
    8: "wrongLength",
    9: "wrongEncoding",
    10: "wrongValue",
    11: "noCreation",
    12: "inconsistentValue",
    13: "resourceUnavailable",
    14: "commitFailed",
    15: "undoFailed",
    16: "authorizationError",
    17: "notWritable",
    18: "inconsistentName",
}


def error_status_text(status: int, index: int) -> str:
    """An agent's error-status answer in words."""
    return f"agent answered error-status {status} ({_ERROR_STATUS.get(status, '?')}) at varbind {index}"


def is_exception_value(value: Any) -> bool:
    """``noSuchObject``, ``noSuchInstance`` or ``endOfMibView`` in place of a value."""
    return isinstance(value, (v2c.NoSuchObject, v2c.NoSuchInstance, v2c.EndOfMibView))


def parse_oid(text: str) -> Oid:
    parts = text.strip().lstrip(".").split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a numeric object id: {text!r}")
    return tuple(int(p) for p in parts)


def format_oid(oid: Iterable[int]) -> str:
    return ".".join(str(p) for p in oid)


def address_family(host: str) -> int:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 4
