"""The queue of injected faults the test stand-ins share (the portal's, the CollabOS devices'):
faults are used one per matching request, first injected first, safely from any thread."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar


class Fault(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def path(self) -> str | None: ...


F = TypeVar("F", bound=Fault)


class FaultQueue(Generic[F]):
    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._faults: deque[F] = deque()

    def extend(self, faults: Iterable[F]) -> None:
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending(self) -> list[str]:
        """Faults injected and not yet used, in order."""
        with self._lock:
            return [f.name for f in self._faults]

    def take(self, path: str) -> F | None:
        """The first fault for ``path`` (or for any path), removed from the queue."""
        with self._lock:
            for fault in self._faults:
                if fault.path is None or fault.path == path:
                    self._faults.remove(fault)
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
