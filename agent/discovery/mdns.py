"""mDNS / DNS-SD discovery with python-zeroconf's asyncio API.

One run opens one :class:`~zeroconf.asyncio.AsyncZeroconf`, browses every configured service
type at once with one :class:`~zeroconf.asyncio.AsyncServiceBrowser` for ``timeout`` seconds
and resolves each instance as soon as it appears (SRV → host name and port, TXT, A/AAAA →
addresses), at most ``concurrency`` at a time. Everything, browsing and resolving, happens
within ``timeout``: an instance gets ``resolve_timeout`` seconds to resolve, or less when the
run's deadline comes first. zeroconf is always closed before :meth:`MdnsSource.run` returns.
mDNS cannot tell when every responder has answered, so a run always takes the whole window.

Interfaces: with ``interfaces`` unset the agent uses zeroconf's default, every IPv4
interface of the host, which is what a room PC on the meeting-room LAN wants. Given
addresses pin zeroconf to those interfaces (IPv4, IPv6 or both, from the addresses given);
the tests always pin ``127.0.0.1`` so that nothing leaves the loopback interface.

Questions go out as QM (answers by multicast), not with zeroconf's default unicast-response
(QU) first query: a unicast answer is addressed to port 5353 of this host, where several mDNS
stacks may listen at once (avahi-daemon, a test's publisher), and the kernel hands a unicast
datagram to only one of them. The price: a responder holds back a multicast answer it sent
less than a second ago (RFC 6762 §6), so right after another browser asked, answers may come
up to about a second late. Keep ``timeout`` at 2 s or more (the default is 3 s).

Service types: no public source names the mDNS service types of CollabOS devices
(protocols.md, U), so they come from configuration; every type is normalised to the
fully qualified form (``_https._tcp`` → ``_https._tcp.local.``).

Bad input never stops a run; each problem is one line for its target:

* an instance whose resolve gets no SRV record in time (it left the network between the
  browse and the resolve, or its PTR record was stale) is one :class:`~agent.model.ScanError`
  (source ``mdns``, target = the service instance name): a unit that announced itself and
  then did not answer is worth an operator's look, unlike an informational message;
* an instance whose SRV record came but whose TXT or address did not is still observed
  (address = host name) with one informational health note saying what was missing;
* binary or oversized TXT values and undecodable names are shown cleaned and marked, with one
  informational health note per service (:mod:`agent.collectors.mdns_service`).

Identification and the shape of observations are the collector's business:
:mod:`agent.collectors.mdns_service` (one observation per host).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.collectors.mdns_service import ResolvedService, clean_name, group_by_host, observe_host
from agent.discovery import ScanContext, SourceResult
from agent.log import get_logger
from agent.model import Observation, ScanError

log = get_logger("agent.discovery.mdns")

#: Longest a single instance may take to resolve (bounded further by the run's deadline).
DEFAULT_RESOLVE_TIMEOUT = 3.0
#: Resolves in flight at once: each sends a few small queries, but a large LAN may show
#: hundreds of instances and the answers share one socket.
DEFAULT_CONCURRENCY = 32
#: Instances resolved per run at most; more is a misconfigured or hostile network.
MAX_INSTANCES = 2048
_SERVICE_TYPE = re.compile(r"^_[A-Za-z0-9-]{1,63}\._(tcp|udp)\.local\.$")


def normalize_service_type(text: str) -> str:
    """The fully qualified form of a DNS-SD service type: ``_https._tcp`` and
    ``_https._tcp.local`` become ``_https._tcp.local.``. Raises :class:`ValueError`."""
    value = text.strip()
    if not value.endswith("."):
        value += "."
    if not value.lower().endswith(".local."):
        value += "local."
    if not _SERVICE_TYPE.match(value):
        raise ValueError(f"{text!r} is not a DNS-SD service type (expected e.g. _https._tcp.local.)")
    return value


def _normalize_interfaces(interfaces: Iterable[Any] | None) -> list[str] | None:
    if interfaces is None:
        return None
    addresses = [str(ipaddress.ip_address(str(a).strip())) for a in interfaces]
    return addresses or None


class MdnsSource:
    """Services announced over multicast DNS: CollabOS devices (by host name and TXT
    records) and whatever else answers for the configured service types."""

    name = "mdns"

    def __init__(
        self,
        service_types: Iterable[str],
        interfaces: Iterable[Any] | None = None,
        timeout: float = 3.0,
        *,
        resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_instances: int = MAX_INSTANCES,
    ) -> None:
        """``service_types``: DNS-SD types to browse (short forms are completed, duplicates
        dropped); ``interfaces``: addresses of the host's interfaces to use (``None``: every
        IPv4 interface); ``timeout``: seconds for the whole run. Raises :class:`ValueError`
        for a bad type, address or number."""
        types: dict[str, str] = {}
        for text in service_types:
            value = normalize_service_type(text)
            types.setdefault(value.lower(), value)  # DNS names compare case-insensitively
        if not types:
            raise ValueError("at least one mDNS service type is needed")
        if not timeout > 0 or not resolve_timeout > 0 or concurrency < 1 or max_instances < 1:
            raise ValueError("timeout and resolve_timeout must be > 0, concurrency and max_instances >= 1")
        self.service_types = list(types.values())
        self.interfaces = _normalize_interfaces(interfaces)
        self.timeout = float(timeout)
        self.resolve_timeout = float(resolve_timeout)
        self.concurrency = concurrency
        self.max_instances = max_instances

    @classmethod
    def from_config(cls, settings: Any) -> MdnsSource:
        """From ``[sources.mdns]`` (:class:`agent.config.MdnsSourceConfig`)."""
        return cls(settings.service_types, settings.interfaces or None, settings.timeout)

    @property
    def where(self) -> str:
        """The interfaces in use, for messages and error targets."""
        return ", ".join(self.interfaces) if self.interfaces else "all IPv4 interfaces"

    async def run(self, ctx: ScanContext) -> SourceResult:
        started = time.perf_counter()
        result = SourceResult()
        try:
            outcome = await self.browse()
        except MdnsUnavailable as exc:
            result.errors.append(ScanError(self.name, self.where, str(exc)))
            return result
        result.observations = self._observe(outcome.services, ctx, result.errors)
        result.errors.extend(outcome.errors)
        if outcome.dropped:
            result.messages.append(
                f"more than {self.max_instances} service instances answered; "
                f"{outcome.dropped} more were not resolved"
            )
        if not outcome.services and not outcome.errors:
            result.messages.append(
                f"no mDNS services found in {self.timeout:g} s on {self.where} "
                f"(types: {', '.join(self.service_types)})"
            )
        log.info(
            "mdns.browse.done",
            seconds=round(time.perf_counter() - started, 3),
            services=len(outcome.services),
            hosts=len(result.observations),
            errors=len(outcome.errors),
            interfaces=self.where,
        )
        return result

    def _observe(
        self, services: list[ResolvedService], ctx: ScanContext, errors: list[ScanError]
    ) -> list[Observation]:
        """One observation per host; a host whose data breaks the collector is one error."""
        observations = []
        for group in group_by_host(services):
            try:
                observations.append(observe_host(group, ctx.catalog, ctx.now, source=self.name))
            except Exception as exc:  # one bad host must not cost the others
                log.exception("mdns.observe.failed", host=group[0].server)
                target = clean_name(group[0].server or group[0].name).value or "?"
                errors.append(ScanError(self.name, target, f"cannot read its data: {type(exc).__name__}"))
        return observations

    async def browse(self) -> BrowseOutcome:
        """Browse and resolve within ``timeout``; zeroconf is closed on every path.
        Raises :class:`MdnsUnavailable` when the interfaces cannot be used."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        aiozc = self._open()
        try:
            return await _BrowseRun(aiozc.zeroconf, self, deadline).run()
        finally:
            await aiozc.async_close()

    def _open(self) -> Any:
        """An AsyncZeroconf on the configured interfaces (opening sockets sends nothing)."""
        from zeroconf.asyncio import AsyncZeroconf

        try:
            return AsyncZeroconf(**self._zeroconf_options())
        # zeroconf raises OSError for an IPv4 address the host does not have (ENODEV) and
        # RuntimeError("No adapter found…") for such an IPv6 address.
        except (OSError, RuntimeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise MdnsUnavailable(f"cannot use mDNS on {self.where}: {reason}") from exc

    def _zeroconf_options(self) -> dict[str, Any]:
        from zeroconf import IPVersion

        if self.interfaces is None:
            return {}  # zeroconf's default: every IPv4 interface
        versions = {ipaddress.ip_address(a).version for a in self.interfaces}
        ip_version = (
            IPVersion.All if len(versions) > 1 else IPVersion.V4Only if versions == {4} else IPVersion.V6Only
        )
        return {"interfaces": list(self.interfaces), "ip_version": ip_version}


class MdnsUnavailable(Exception):
    """The configured interfaces cannot be used for mDNS (the whole run fails)."""


@dataclass(slots=True)
class BrowseOutcome:
    """What one browse found: resolved services and per-instance failures."""

    services: list[ResolvedService] = field(default_factory=list)
    errors: list[ScanError] = field(default_factory=list)
    #: Instances seen but not resolved because of ``max_instances``.
    dropped: int = 0


class _BrowseRun:
    """The state of one browse: a resolve task per instance, and goodbyes seen."""

    def __init__(self, zc: Any, source: MdnsSource, deadline: float) -> None:
        self.zc = zc
        self.source = source
        self.deadline = deadline
        self.semaphore = asyncio.Semaphore(source.concurrency)
        self.loop = asyncio.get_running_loop()
        self.tasks: dict[str, asyncio.Task[ResolvedService | ScanError]] = {}
        self.removed: set[str] = set()
        self.dropped = 0

    async def run(self) -> BrowseOutcome:
        from zeroconf import DNSQuestionType
        from zeroconf.asyncio import AsyncServiceBrowser

        browser = AsyncServiceBrowser(
            self.zc,
            list(self.source.service_types),
            handlers=[self.on_change],
            question_type=DNSQuestionType.QM,
        )
        try:
            await asyncio.sleep(max(0.0, self.deadline - self.loop.time()))
        except BaseException:
            # Cancelled (the scan's own deadline): no resolve may outlive zeroconf.
            for task in self.tasks.values():
                task.cancel()
            raise
        finally:
            await browser.async_cancel()
        outcome = BrowseOutcome(dropped=self.dropped)
        # Every task ends by the deadline (asyncio.timeout_at in resolve): this is quick.
        for done in await asyncio.gather(*self.tasks.values()):
            if isinstance(done, ScanError):
                outcome.errors.append(done)
            else:
                outcome.services.append(done)
        return outcome

    def on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        """AsyncServiceBrowser handler (these keyword names are required by zeroconf)."""
        from zeroconf import ServiceStateChange

        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            self.removed.add(key)
            return
        if key in self.tasks:
            return
        if len(self.tasks) >= self.source.max_instances:
            self.dropped += 1
            return
        self.tasks[key] = self.loop.create_task(self.resolve(service_type, name))

    async def resolve(self, service_type: str, name: str) -> ResolvedService | ScanError:
        """:meth:`_resolve`, with an unexpected failure as one error line for the instance."""
        try:
            return await self._resolve(service_type, name)
        except Exception as exc:  # one instance's failure must not end the browse
            log.exception("mdns.resolve.failed", instance=name)
            return self.error(name, f"resolve failed: {type(exc).__name__}: {exc}")

    async def _resolve(self, service_type: str, name: str) -> ResolvedService | ScanError:
        """Resolve one instance by the earlier of its own timeout and the run's deadline.

        Responders send SRV, TXT and addresses with their PTR answers, so most instances are
        complete in zeroconf's cache at once. One still waiting for a slot when its time is up
        (the slots held by instances that never answer) is taken from the cache if it is
        complete there.
        """
        from zeroconf import BadTypeInNameException, DNSQuestionType
        from zeroconf.asyncio import AsyncServiceInfo

        until = min(self.loop.time() + self.source.resolve_timeout, self.deadline)
        try:
            info = AsyncServiceInfo(service_type, name)
        except BadTypeInNameException as exc:
            return self.error(name, f"unusable service instance name: {exc}")
        asked = complete = False
        try:
            async with asyncio.timeout_at(until):
                async with self.semaphore:
                    asked = True
                    remaining_ms = max(1.0, (until - self.loop.time()) * 1000)
                    complete = await info.async_request(
                        self.zc, remaining_ms, question_type=DNSQuestionType.QM
                    )
        except TimeoutError:
            complete = info.load_from_cache(self.zc)
        if not (asked or complete or info.server):
            return self.error(
                name,
                f"not resolved: the run ended while it waited for one of the "
                f"{self.source.concurrency} resolve slots",
            )
        return self.outcome(info, service_type, name, complete)

    def outcome(self, info: Any, service_type: str, name: str, complete: bool) -> ResolvedService | ScanError:
        """The resolved service, or one error line for an instance that did not answer."""
        if info.server is None:
            if name.lower() in self.removed:
                return self.error(name, "withdrawn (mDNS goodbye) before it could be resolved")
            return self.error(
                name,
                "announced but did not answer the resolve (no SRV record "
                "in time): it may have left the network",
            )
        addresses = tuple(info.parsed_addresses())
        missing = () if complete else (("address",) if not addresses else ("txt",))
        return ResolvedService(
            service_type=service_type,
            name=name,
            server=info.server,
            addresses=addresses,
            port=info.port,
            txt=dict(info.properties) if info.text else {},
            missing=missing,
        )

    def error(self, name: str, message: str) -> ScanError:
        return ScanError(self.source.name, clean_name(name).value or "?", message)
