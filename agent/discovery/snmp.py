"""SNMP discovery: sweep addresses, then read the identity of every responder.

1. **Targets**: addresses, ``host:port``, ``[v6]:port`` and CIDR ranges
   (:func:`~agent.discovery.targets.plan_targets`), produced one at a time. An address given
   on its own that stays silent is an error for that target; the silent addresses of a range
   are only counted.
2. **Liveness**: one GET of sysDescr, sysObjectID and sysName to every address, paced at
   ``max_pps`` (:class:`~agent.collectors.snmp.probe.Pacer`), each probe with its own deadline
   (send time + ``timeout``) on the monotonic clock. SNMPv2c probes leave from one UDP socket
   (:class:`~agent.collectors.snmp.probe.V2cProber`); SNMPv3 needs engine discovery and USM,
   so its probes go through the pysnmp engine (:class:`~agent.collectors.snmp.client.SnmpClient`,
   at most ``concurrency`` in flight). A sweep ends one timeout after its last probe.
3. **Identity**: for each responder, as soon as it answers, a GETBULK walk of the ENTITY-MIB
   physical table through the engine (bounded rows, loop detection), turned into an
   observation by :mod:`agent.collectors.snmp.entity`. The engine is created once per run,
   when the first responder needs it. Every responder is reported; ones the catalog cannot
   identify as ``other``, with vendor and description.

Only GET and GETBULK are sent, through the SNMP read-only gate: the agent never changes a
device.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.collectors.snmp.client import (
    Credentials,
    Oid,
    SnmpError,
    SnmpTimeout,
    V2cCredentials,
    V3Credentials,
    error_status_text,
    is_exception_value,
)
from agent.collectors.snmp.entity import (
    ENT_PHYSICAL_ENTRY,
    ENTITY_COLUMNS,
    SYSTEM_OIDS,
    SystemInfo,
    entity_rows,
    observe,
)
from agent.discovery import ScanContext, SourceResult
from agent.discovery.targets import DEFAULT_PORT, Target, TargetError, plan_targets
from agent.model import Observation, ScanError
from agent.secretfile import SecretFileError, read_secret

if TYPE_CHECKING:
    from agent.collectors.snmp.client import SnmpClient
    from agent.collectors.snmp.probe import ProbeAnswer, V2cProber

#: Rows read per ENTITY-MIB column at most (a big chassis has a few hundred entities).
MAX_ENTITY_ROWS = 2_000
ENTITY_REPETITIONS = 16
#: Responders whose ENTITY-MIB is walked at the same time.
WALK_CONCURRENCY = 16
#: The default packets-per-second cap (``[sources.snmp] max_pps``): see docs/snmp.md.
DEFAULT_MAX_PPS = 4000
#: A v2c sweep makes the engine (for the responders' walks) once its probes are all sent, or
#: this long after the first responder, whichever comes first: making it blocks the event
#: loop for tens of milliseconds, which costs nothing while the sweep only waits.
ENGINE_DEFER = 0.5
#: What a silent address named on its own is told (SNMPv2c agents drop a wrong community
#: without a word).
NO_ANSWER_V2C = "no answer (host down, SNMP disabled, filtered, or a wrong v2c community)"

Progress = Callable[[int, int, int], None]
"""Called as ``progress(addresses_done, addresses_total, responders_so_far)``."""


@dataclass(slots=True)
class SweepStats:
    addresses: int = 0
    done: int = 0
    responders: int = 0
    silent: int = 0
    requests: int = 0
    seconds: float = 0.0
    #: Seconds from the start of the sweep to its first and last liveness probe.
    first_send: float | None = None
    last_send: float | None = None
    #: Liveness probes sent again (``retries``), and datagrams that were no answer of ours.
    retransmitted: int = 0
    ignored: int = 0
    #: The most liveness probes pending at once.
    max_pending: int = 0


@dataclass(slots=True)
class SweepResult:
    observations: list[Observation] = field(default_factory=list)
    errors: list[ScanError] = field(default_factory=list)
    stats: SweepStats = field(default_factory=SweepStats)


async def walk_columns(
    client: SnmpClient,
    address: tuple[str, int],
    columns: Mapping[int, Oid],
    *,
    max_rows: int = MAX_ENTITY_ROWS,
    repetitions: int = ENTITY_REPETITIONS,
) -> tuple[dict[int, list[tuple[Oid, Any]]], list[str]]:
    """Walk several table columns side by side with GETBULK.

    Returns ``cells[column] = [(index, value), …]`` and the problems met. A column ends at
    its last row, at ``endOfMibView``, at ``max_rows`` (``truncated``), or when the agent
    sends an object id that does not increase (a broken agent would otherwise loop for
    ever). A failure mid-walk keeps what was read.
    """
    cells: dict[int, list[tuple[Oid, Any]]] = {c: [] for c in columns}
    last: dict[int, Oid] = dict(columns)
    problems: list[str] = []
    active = list(columns)
    while active:
        try:
            table = await client.get_bulk(address, [last[c] for c in active], repetitions)
        except SnmpError as exc:
            problems.append(f"walk stopped: {exc}")
            break
        finished: set[int] = set()
        for row in table:
            for column, (oid, value) in zip(active, row, strict=False):
                if column in finished:
                    continue
                prefix = columns[column]
                if is_exception_value(value) or oid[: len(prefix)] != prefix:
                    finished.add(column)
                elif oid <= last[column]:
                    problems.append(
                        f"column .{column}: the agent returned a non-increasing object id "
                        f"({'.'.join(map(str, oid))}); walk stopped"
                    )
                    finished.add(column)
                elif len(cells[column]) >= max_rows:
                    problems.append(f"column .{column}: more than {max_rows} rows; truncated")
                    finished.add(column)
                else:
                    cells[column].append((oid[len(prefix) :], value))
                    last[column] = oid
        if not table:
            break
        active = [c for c in active if c not in finished]
    return cells, problems


class SnmpSweep:
    """One sweep over ``targets``. Use :meth:`run` once.

    ``client`` is the engine client (or anything with its ``get`` and ``get_bulk``);
    ``client_factory`` makes it on first need instead. With a ``prober``, liveness goes
    through it (SNMPv2c); otherwise through ``client.get``, at most ``concurrency`` in
    flight."""

    def __init__(
        self,
        client: Any,
        targets: Iterable[Target],
        ctx: ScanContext,
        *,
        concurrency: int = 256,
        max_pps: float = 0,
        walk_entities: bool = True,
        progress: Progress | None = None,
        source: str = "snmp",
        prober: V2cProber | None = None,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.client = client
        self.client_factory = client_factory
        self.targets = targets
        self.ctx = ctx
        self.concurrency = max(1, concurrency)
        self.max_pps = max_pps
        self.walk_entities = walk_entities
        self.progress = progress
        self.source = source
        self.prober = prober
        self.result = SweepResult()
        self._found: list[tuple[int, Observation]] = []
        self._walks = asyncio.Semaphore(WALK_CONCURRENCY)
        self._identities: set[asyncio.Task[None]] = set()
        self._started = 0.0
        self._sent_all = asyncio.Event()

    async def run(self) -> SweepResult:
        stats = self.result.stats
        stats.addresses = len(self.targets) if isinstance(self.targets, Sized) else 0
        self._started = time.monotonic()
        try:
            if self.prober is not None:
                await self._probe_v2c(self.prober)
            else:
                await self._probe_engine()
            while self._identities:
                await asyncio.gather(*list(self._identities))
        finally:
            for task in self._identities:
                task.cancel()
        stats.seconds = time.monotonic() - self._started
        stats.requests = getattr(self.client, "requests_sent", 0) if self.client is not None else 0
        if self.prober is not None:
            p = self.prober.stats
            stats.requests += p.sent
            stats.retransmitted, stats.ignored, stats.max_pending = p.retransmitted, p.ignored, p.max_pending
            if p.first_send is not None and p.last_send is not None:
                stats.first_send = p.first_send - self._started
                stats.last_send = p.last_send - self._started
        # Responders answer in any order; report them in the order the targets were given.
        self._found.sort(key=lambda item: item[0])
        self.result.observations.extend(obs for _, obs in self._found)
        return self.result

    # ------------------------------------------------------------------ liveness, SNMPv2c

    async def _probe_v2c(self, prober: V2cProber) -> None:
        prober.on_answer = self._answered
        prober.on_timeout = self._silent
        for index, target in enumerate(self.targets):
            host = await self._host(target)
            if host is not None:
                await prober.probe((host, target.port), (index, target, host))
        self._sent_all.set()
        await prober.drain()

    def _answered(self, tag: tuple[int, Target, str], answer: ProbeAnswer) -> None:
        index, target, host = tag
        self.result.stats.responders += 1
        if answer.error_status:
            self._error(target, error_status_text(answer.error_status, answer.error_index))
        else:
            task = asyncio.get_running_loop().create_task(self._identify(index, target, host, answer.values))
            self._identities.add(task)
            task.add_done_callback(self._identities.discard)
        self._done()

    def _silent(self, tag: tuple[int, Target, str]) -> None:
        _, target, _ = tag
        self.result.stats.silent += 1
        if not target.swept:
            self._error(target, NO_ANSWER_V2C)
        self._done()

    # ------------------------------------------------------------------ liveness, engine

    async def _probe_engine(self) -> None:
        from agent.collectors.snmp.probe import Pacer

        pacer = Pacer(self.max_pps)
        window = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        stats = self.result.stats
        for index, target in enumerate(self.targets):
            await window.acquire()
            await pacer.wait()
            sent = time.monotonic() - self._started
            if stats.first_send is None:
                stats.first_send = sent
            stats.last_send = sent
            task = asyncio.get_running_loop().create_task(self._engine_one(index, target, window))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))

    async def _engine_one(self, index: int, target: Target, window: asyncio.Semaphore) -> None:
        try:
            host = await self._host(target)
            if host is None:
                return
            try:
                values = list(await self._client().get((host, target.port), SYSTEM_OIDS))
            except SnmpTimeout as exc:
                self.result.stats.silent += 1
                if not target.swept:
                    self._error(target, str(exc))
                self._done()
                return
            except SnmpError as exc:  # it answered, but not usefully (v3 refused us, an error-status…)
                self.result.stats.responders += 1
                self._error(target, str(exc))
                self._done()
                return
        finally:
            window.release()
        self.result.stats.responders += 1
        self._done()
        await self._identify(index, target, host, values)

    # ------------------------------------------------------------------ identity

    async def _identify(self, index: int, target: Target, host: str, values: list[tuple[Oid, Any]]) -> None:
        system = SystemInfo.from_values({k: v for k, v in values if not is_exception_value(v)})
        cells: dict[int, list[tuple[Oid, Any]]] = {}
        problems: list[str] = []
        if self.walk_entities:
            columns = {c: (*ENT_PHYSICAL_ENTRY, c) for c in ENTITY_COLUMNS}
            async with self._walks:
                client = await self._engine()
                cells, problems = await walk_columns(client, (host, target.port), columns)
        self._found.append(
            (
                index,
                observe(
                    target.address,
                    system,
                    entity_rows(cells),
                    self.ctx.catalog,
                    self.ctx.now,
                    source=self.source,
                    entity_problems=problems,
                ),
            )
        )

    async def _engine(self) -> Any:
        """The engine client for a walk; see :data:`ENGINE_DEFER`."""
        if self.client is None and self.prober is not None and not self._sent_all.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sent_all.wait(), ENGINE_DEFER)
        return self._client()

    def _client(self) -> Any:
        """The engine client, made on first use (once per run)."""
        if self.client is None:
            if self.client_factory is None:
                raise RuntimeError("no SNMP client")
            self.client = self.client_factory()
        return self.client

    # ------------------------------------------------------------------ helpers

    async def _host(self, target: Target) -> str | None:
        """The target's address, resolving a host name; ``None`` (and an error) when it does
        not resolve."""
        try:
            ipaddress.ip_address(target.host)
            return target.host
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                target.host, target.port, type=2
            )  # SOCK_DGRAM
        except OSError as exc:
            self._error(target, f"cannot resolve host name: {exc.strerror or exc}")
            self._done()
            return None
        return str(infos[0][4][0])

    def _done(self) -> None:
        stats = self.result.stats
        stats.done += 1
        if self.progress is not None:
            self.progress(stats.done, stats.addresses, stats.responders)

    def _error(self, target: Target, message: str) -> None:
        self.result.errors.append(ScanError(self.source, target.address, message))


def credentials_from_config(settings: Any, environ: Mapping[str, str] | None = None) -> Credentials:
    """The credentials a ``[sources.snmp]`` section names; secrets read from their files.
    Raises :class:`~agent.secretfile.SecretFileError`."""
    if settings.version == "3":
        v3 = settings.v3
        return V3Credentials(
            user=v3.user,
            auth_key=read_secret(v3.auth_key_file, "SNMPv3 auth key", environ),
            priv_key=read_secret(v3.priv_key_file, "SNMPv3 privacy key", environ),
            auth_protocol=v3.auth_protocol,
            priv_protocol=v3.priv_protocol,
            context_name=v3.context_name,
        )
    if getattr(settings, "community_file", None):
        return V2cCredentials(read_secret(settings.community_file, "SNMP community", environ))
    return V2cCredentials(settings.community.get_secret_value())


class SnmpSource:
    """The ``snmp`` source: sweep the configured targets, identify every responder."""

    name = "snmp"

    def __init__(
        self,
        targets: Sequence[str],
        credentials: Credentials | None = None,
        *,
        port: int = DEFAULT_PORT,
        timeout: float = 1.0,
        retries: int = 0,
        concurrency: int = 256,
        max_pps: float = DEFAULT_MAX_PPS,
        walk_entities: bool = True,
        progress: Progress | None = None,
        credentials_error: str | None = None,
    ) -> None:
        self.target_specs = list(targets)
        self.credentials = credentials
        self.credentials_error = credentials_error
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.concurrency = concurrency
        self.max_pps = max_pps
        self.walk_entities = walk_entities
        self.progress = progress
        self.last_stats: SweepStats | None = None

    @classmethod
    def from_config(cls, settings: Any, environ: Mapping[str, str] | None = None) -> SnmpSource:
        try:
            creds: Credentials | None = credentials_from_config(settings, environ)
            problem = None
        except SecretFileError as exc:
            creds, problem = None, str(exc)
        return cls(
            settings.targets,
            creds,
            port=settings.port,
            timeout=settings.timeout,
            retries=settings.retries,
            concurrency=settings.concurrency,
            max_pps=settings.max_pps,
            credentials_error=problem,
        )

    async def run(self, ctx: ScanContext) -> SourceResult:
        result = SourceResult()
        if self.credentials is None:
            result.errors.append(
                ScanError(self.name, "credentials", self.credentials_error or "no SNMP credentials")
            )
            return result
        if not self.target_specs:
            result.messages.append("SNMP is enabled but no targets are configured")
            return result
        try:
            targets = plan_targets(self.target_specs, self.port)
        except TargetError as exc:
            result.errors.extend(ScanError(self.name, "targets", p) for p in exc.problems)
            return result
        found = await self._sweep(targets, ctx)
        self.last_stats = found.stats
        result.observations.extend(found.observations)
        result.errors.extend(found.errors)
        s = found.stats
        result.messages.append(
            f"{s.addresses} address{'es' if s.addresses != 1 else ''} swept in {s.seconds:.1f} s, "
            f"{s.responders} answered, {s.silent} silent"
        )
        return result

    async def _sweep(self, targets: Iterable[Target], ctx: ScanContext) -> SweepResult:
        """One sweep: SNMPv2c liveness through the prober and the engine made only for
        responders; SNMPv3 all through the engine. Everything is closed before returning."""
        from agent.collectors.snmp.client import SnmpClient

        credentials = self.credentials
        assert credentials is not None
        clients: list[SnmpClient] = []

        def make_client() -> SnmpClient:
            client = SnmpClient(credentials, timeout=self.timeout, retries=self.retries)
            clients.append(client)
            return client

        prober = None
        if isinstance(credentials, V2cCredentials):
            from agent.collectors.snmp.probe import V2cProber

            prober = V2cProber(
                credentials.community, timeout=self.timeout, retries=self.retries, max_pps=self.max_pps
            )
        try:
            sweep = SnmpSweep(
                None if prober is not None else make_client(),
                targets,
                ctx,
                concurrency=self.concurrency,
                max_pps=self.max_pps,
                walk_entities=self.walk_entities,
                progress=self.progress,
                source=self.name,
                prober=prober,
                client_factory=make_client,
            )
            return await sweep.run()
        finally:
            if prober is not None:
                prober.close()
            for client in clients:
                client.close()
