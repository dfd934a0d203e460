"""A worker thread that owns a connection of its own to the state database.

SQLite connections belong to the thread that opened them; a thread of this kind opens one on
first use and is the only one ever to touch it. The daemon has two: the writer, which stores
scans and builds snapshots (``agent.daemon``), and the API's reader, which builds the big
answers (``agent.api``). Neither ever runs on the event loop, so a slow write or a big answer
never delays the loop, the watchdog or ``/healthz``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from agent.store import Store

T = TypeVar("T")

__all__ = ["StoreThread"]


class StoreThread:
    """Calls run one at a time, in order, in one thread; the connection is opened on first
    use (``Store.open``, read-only if asked) and closed by :meth:`close`."""

    def __init__(self, state_dir: Path, *, name: str, read_only: bool = False) -> None:
        self.state_dir = state_dir
        #: Open the store with SQLite's ``mode=ro`` (the API's reader: it never writes).
        self.read_only = read_only
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._store: Store | None = None
        #: Calls queued and not yet done (``close`` drops those not yet started).
        self._pending: set[Future[Any]] = set()

    async def call(self, work: Callable[[Store], T]) -> T:
        """``work(store)`` in the thread. Cancelling the caller does not stop a call that has
        started: a transaction always finishes (or rolls back) whole."""
        return await asyncio.wrap_future(self._queue(work))

    def submit(self, work: Callable[[Store], object]) -> Future[object]:
        """``work(store)`` in the thread, after the calls queued before it; nobody waits."""
        return self._queue(work)

    def _queue(self, work: Callable[[Store], T]) -> Future[T]:
        future = self._executor.submit(self._run, work)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def _run(self, work: Callable[[Store], T]) -> T:
        if self._store is None:
            self._store = Store.open(self.state_dir, read_only=self.read_only)
        return work(self._store)

    def close(self) -> None:
        """Drop the calls not yet started (their callers get ``CancelledError``), wait for the
        one under way, then close the connection and the thread."""
        for future in list(self._pending):
            future.cancel()  # only those not yet running
        self._executor.submit(self._close).result()
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
