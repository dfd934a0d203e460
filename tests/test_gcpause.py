"""agent/gcpause.py: the cyclic collector paused for bursts that overlap in several threads
(the store's writer and the API's reader), and as it was once the last one ends."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

import agent.gcpause
from agent.gcpause import paused_gc


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    """Every test starts with the collector on, and leaves it on whatever happens."""
    gc.enable()
    yield
    gc.enable()
    assert agent.gcpause._paused == 0


def test_off_inside_and_as_it_was_after() -> None:
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), paused_gc():
        raise ValueError("a failed burst")
    assert gc.isenabled()
    gc.disable()  # off before: stays off
    with paused_gc():
        pass
    assert not gc.isenabled()


@pytest.mark.parametrize("first_out", ["first_in", "second_in"])
def test_overlapping_pauses_in_two_threads_end_with_the_last(first_out: str) -> None:
    """Whichever of two overlapping pauses ends first, the collector stays off until the
    other ends too, and is on after both."""
    steps = {name: threading.Event() for name in ("a_in", "b_in", "a_go", "b_go", "a_out", "b_out")}
    seen: dict[str, bool] = {}

    def burst(name: str) -> None:
        with paused_gc():
            steps[f"{name}_in"].set()
            assert steps[f"{name}_go"].wait(10)
        seen[name] = gc.isenabled()
        steps[f"{name}_out"].set()

    a = threading.Thread(target=burst, args=("a",))
    b = threading.Thread(target=burst, args=("b",))
    a.start()
    assert steps["a_in"].wait(10)
    b.start()
    assert steps["b_in"].wait(10)
    early, late = ("a", "b") if first_out == "first_in" else ("b", "a")
    steps[f"{early}_go"].set()
    assert steps[f"{early}_out"].wait(10)
    assert not gc.isenabled() and seen[early] is False  # the other burst is still under way
    steps[f"{late}_go"].set()
    a.join(10)
    b.join(10)
    assert gc.isenabled() and seen[late] is True


def test_a_pause_that_begins_as_another_ends_leaves_the_collector_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving that once left the collector off for good: a second thread reads the
    collector off (the first thread's pause), the first ends its pause, then the second
    turns the collector off believing it was off already. The second thread is held between
    its read and its switch for as long as the first takes to end (at most 0.5 s)."""
    real = gc
    first_in, first_done = threading.Event(), threading.Event()
    holding = threading.local()

    class Held:
        """``gc`` as agent.gcpause sees it: the second thread's read of the switch waits."""

        def isenabled(self) -> bool:
            answer = real.isenabled()
            if getattr(holding, "hold", False):
                first_done.wait(0.5)  # under the lock, the first cannot end meanwhile
            return answer

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    monkeypatch.setattr(agent.gcpause, "gc", Held())

    def first() -> None:
        with paused_gc():
            first_in.set()
            second_reading.wait(10)
        first_done.set()

    def second() -> None:
        holding.hold = True
        second_reading.set()
        with paused_gc():
            pass

    second_reading = threading.Event()
    one = threading.Thread(target=first)
    one.start()
    assert first_in.wait(10)
    two = threading.Thread(target=second)
    two.start()
    one.join(10)
    two.join(10)
    assert gc.isenabled()


def test_many_threads_pausing_at_once_leave_the_collector_on() -> None:
    def bursts() -> None:
        for _ in range(2000):
            with paused_gc():
                pass

    threads = [threading.Thread(target=bursts) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert gc.isenabled()
