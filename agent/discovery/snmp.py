"""SNMP discovery: sweep addresses, then read the identity of every responder.

1. **Targets**: addresses, ``host:port``, ``[v6]:port`` and CIDR ranges
   (:func:`parse_targets`). An address given on its own that stays silent is an error for
   that target; the silent addresses of a range are only counted.
2. **Liveness**: one GET of sysDescr, sysObjectID and sysName to every address through one
   shared engine (:class:`~agent.collectors.snmp.client.SnmpClient`), with ``concurrency``
   requests in flight and an optional packets-per-second cap. Silent addresses are waited
   on in parallel, so a sweep costs about one timeout plus the responders' work: its time
   grows with responders, not with silent addresses.
3. **Identity**: for each responder, as soon as it answers, a GETBULK walk of the
   ENTITY-MIB physical table (bounded rows, loop detection), turned into an observation by
   :mod:`agent.collectors.snmp.entity`. Every responder is reported; ones the catalog
   cannot identify as ``other``, with vendor and description.

Only GET and GETBULK are sent: the agent never changes a device.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.collectors.snmp.client import (
    Credentials,
    Oid,
    SnmpClient,
    SnmpError,
    SnmpTimeout,
    V2cCredentials,
    V3Credentials,
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
from agent.discovery.targets import DEFAULT_PORT, Target, TargetError, parse_targets
from agent.model import Observation, ScanError
from agent.secretfile import SecretFileError, read_secret

#: Rows read per ENTITY-MIB column at most (a big chassis has a few hundred entities).
MAX_ENTITY_ROWS = 2_000
ENTITY_REPETITIONS = 16
#: Responders whose ENTITY-MIB is walked at the same time.
WALK_CONCURRENCY = 16

Progress = Callable[[int, int, int], None]
"""Called as ``progress(addresses_done, addresses_total, responders_so_far)``."""


class RateLimiter:
    """Spaces sends at most ``rate`` per second (0 = no cap). Callers take the next free
    slot in turn, so a burst is spread instead of dropped."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(slots=True)
class SweepStats:
    addresses: int = 0
    done: int = 0
    responders: int = 0
    silent: int = 0
    requests: int = 0
    seconds: float = 0.0


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
    """One sweep over ``targets`` with one client. Use :meth:`run` once."""

    def __init__(
        self,
        client: SnmpClient,
        targets: Sequence[Target],
        ctx: ScanContext,
        *,
        concurrency: int = 256,
        max_pps: float = 0,
        walk_entities: bool = True,
        progress: Progress | None = None,
        source: str = "snmp",
    ) -> None:
        self.client = client
        self.targets = targets
        self.ctx = ctx
        self.concurrency = max(1, concurrency)
        self.limiter = RateLimiter(max_pps)
        self.walk_entities = walk_entities
        self.progress = progress
        self.source = source
        self.result = SweepResult()
        self._walks = asyncio.Semaphore(WALK_CONCURRENCY)

    async def run(self) -> SweepResult:
        stats = self.result.stats
        stats.addresses = len(self.targets)
        started = time.monotonic()
        queue = iter(self.targets)
        workers = [
            asyncio.create_task(self._worker(queue)) for _ in range(min(self.concurrency, len(self.targets)))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
        stats.seconds = time.monotonic() - started
        stats.requests = self.client.requests_sent
        # Responders answer in any order; report them in the order the targets were given.
        order = {t.address: i for i, t in enumerate(self.targets)}
        self.result.observations.sort(key=lambda o: order.get(o.address, len(order)))
        return self.result

    async def _worker(self, queue: Iterator[Target]) -> None:
        for target in queue:  # one shared iterator: each target is taken once
            await self._one(target)
            self.result.stats.done += 1
            if self.progress is not None:
                self.progress(
                    self.result.stats.done, self.result.stats.addresses, self.result.stats.responders
                )

    async def _one(self, target: Target) -> None:
        try:
            host = await self._resolve(target)
        except OSError as exc:
            self._error(target, f"cannot resolve host name: {exc.strerror or exc}")
            return
        await self.limiter.wait()
        try:
            values = dict(await self.client.get((host, target.port), SYSTEM_OIDS))
        except SnmpTimeout as exc:
            self.result.stats.silent += 1
            if not target.swept:
                self._error(target, str(exc))
            return
        except SnmpError as exc:  # it answered, but not usefully (v3 refused us, an error-status…)
            self.result.stats.responders += 1
            self._error(target, str(exc))
            return
        self.result.stats.responders += 1
        system = SystemInfo.from_values({k: v for k, v in values.items() if not is_exception_value(v)})
        cells: dict[int, list[tuple[Oid, Any]]] = {}
        problems: list[str] = []
        if self.walk_entities:
            columns = {c: (*ENT_PHYSICAL_ENTRY, c) for c in ENTITY_COLUMNS}
            async with self._walks:
                cells, problems = await walk_columns(self.client, (host, target.port), columns)
        self.result.observations.append(
            observe(
                target.address,
                system,
                entity_rows(cells),
                self.ctx.catalog,
                self.ctx.now,
                source=self.source,
                entity_problems=problems,
            )
        )

    async def _resolve(self, target: Target) -> str:
        try:
            ipaddress.ip_address(target.host)
            return target.host
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=2)  # SOCK_DGRAM
        return str(infos[0][4][0])

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
        max_pps: float = 0,
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
            targets = parse_targets(self.target_specs, self.port)
        except TargetError as exc:
            result.errors.extend(ScanError(self.name, "targets", p) for p in exc.problems)
            return result
        async with SnmpClient(self.credentials, timeout=self.timeout, retries=self.retries) as client:
            sweep = SnmpSweep(
                client,
                targets,
                ctx,
                concurrency=self.concurrency,
                max_pps=self.max_pps,
                walk_entities=self.walk_entities,
                progress=self.progress,
                source=self.name,
            )
            found = await sweep.run()
        self.last_stats = found.stats
        result.observations.extend(found.observations)
        result.errors.extend(found.errors)
        s = found.stats
        result.messages.append(
            f"{s.addresses} address{'es' if s.addresses != 1 else ''} swept in {s.seconds:.1f} s, "
            f"{s.responders} answered, {s.silent} silent"
        )
        return result
