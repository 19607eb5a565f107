"""SingleFlightCache: expiry, LRU bound, errors never cached, and one load for many
concurrent callers of the same key (real threads; the loads are plain functions)."""

from __future__ import annotations

import threading
import time

import pytest

from pacsfhir.auth.cache import SingleFlightCache
from tests.support.threads import run_together


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_value_reused_until_it_expires() -> None:
    cache: SingleFlightCache[str] = SingleFlightCache()
    clock, loads = Clock(), []

    def load() -> tuple[str, float]:
        loads.append(1)
        return f"v{len(loads)}", clock.t + 10

    assert cache.get(b"k", load, clock) == "v1"
    clock.t += 9.9
    assert cache.get(b"k", load, clock) == "v1"
    clock.t += 0.1
    assert cache.get(b"k", load, clock) == "v2"
    assert len(loads) == 2


def test_already_expired_value_returned_not_kept() -> None:
    cache: SingleFlightCache[str] = SingleFlightCache()
    clock = Clock()
    assert cache.get(b"k", lambda: ("v", clock.t), clock) == "v"
    assert len(cache) == 0


def test_none_is_a_value() -> None:
    cache: SingleFlightCache[str | None] = SingleFlightCache()
    clock, loads = Clock(), []

    def load() -> tuple[str | None, float]:
        loads.append(1)
        return None, clock.t + 10

    assert cache.get(b"k", load, clock) is None
    assert cache.get(b"k", load, clock) is None
    assert len(loads) == 1


def test_least_recently_used_evicted() -> None:
    cache: SingleFlightCache[str] = SingleFlightCache(max_entries=2)
    clock, loads = Clock(), []

    def loader(key: str):  # type: ignore[no-untyped-def]
        def load() -> tuple[str, float]:
            loads.append(key)
            return key, clock.t + 60

        return load

    for key in ("a", "b"):
        cache.get(key, loader(key), clock)
    cache.get("a", loader("a"), clock)  # a is now the most recent
    cache.get("c", loader("c"), clock)  # evicts b
    cache.get("a", loader("a"), clock)
    cache.get("b", loader("b"), clock)
    assert loads == ["a", "b", "c", "b"]
    assert len(cache) == 2


def test_errors_are_not_cached() -> None:
    cache: SingleFlightCache[str] = SingleFlightCache()
    clock = Clock()

    def fail() -> tuple[str, float]:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        cache.get(b"k", fail, clock)
    assert cache.get(b"k", lambda: ("v", clock.t + 5), clock) == "v"


def test_concurrent_callers_share_one_load() -> None:
    cache: SingleFlightCache[str] = SingleFlightCache()
    calls = []

    def slow() -> tuple[str, float]:
        calls.append(1)
        time.sleep(0.2)
        return "v", time.time() + 60

    assert run_together(8, lambda: cache.get(b"k", slow, time.time)) == ["v"] * 8
    assert len(calls) == 1


def test_concurrent_callers_share_one_failure() -> None:
    cache: SingleFlightCache[str] = SingleFlightCache()
    calls = []

    def slow_fail() -> tuple[str, float]:
        calls.append(1)
        time.sleep(0.2)
        raise RuntimeError("down")

    results = run_together(8, lambda: cache.get(b"k", slow_fail, time.time))
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len(calls) == 1


def test_follower_gives_up_after_wait() -> None:
    cache: SingleFlightCache[str] = SingleFlightCache(wait_seconds=0.1)
    release = threading.Event()

    def stuck() -> tuple[str, float]:
        release.wait(5)
        return "v", time.time() + 60

    leader = threading.Thread(target=lambda: cache.get(b"k", stuck, time.time))
    leader.start()
    time.sleep(0.05)
    with pytest.raises(TimeoutError):
        cache.get(b"k", stuck, time.time)
    release.set()
    leader.join(5)
    assert cache.get(b"k", stuck, time.time) == "v"
