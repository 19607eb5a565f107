"""A bounded, expiring answer cache with single-flight look-ups, for token checks.

``SingleFlightCache.get(key, load, now)`` returns the cached value for ``key`` while it
has not expired; otherwise one caller runs ``load()`` (which returns the value and the
moment it expires) while concurrent callers of the same key wait for that one result, or
that one error. Errors are never cached. Keys should be digests, never raw secrets.

Least recently used entries go first beyond ``max_entries``. One lock guards the map and
the in-flight table; ``load`` runs outside it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class _Flight(Generic[V]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: V | None = None
        self.error: BaseException | None = None


class SingleFlightCache(Generic[V]):
    def __init__(self, max_entries: int = 10_000, wait_seconds: float = 30.0) -> None:
        self._max = max_entries
        self._wait = wait_seconds
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[V, float]] = OrderedDict()
        self._flights: dict[Hashable, _Flight[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, key: Hashable, load: Callable[[], tuple[V, float]], now: Callable[[], float]
    ) -> V:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if entry[1] > now():
                    self._entries.move_to_end(key)
                    return entry[0]
                del self._entries[key]
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            return self._follow(flight)
        try:
            value, expires = load()
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            flight.value = value
            with self._lock:
                if expires > now():
                    self._entries[key] = (value, expires)
                    self._entries.move_to_end(key)
                    while len(self._entries) > self._max:
                        self._entries.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    def _follow(self, flight: _Flight[V]) -> V:
        if not flight.done.wait(self._wait):
            raise TimeoutError("a concurrent look-up of the same key did not finish")
        if flight.error is not None:
            raise flight.error
        return flight.value  # type: ignore[return-value]
