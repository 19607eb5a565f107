"""A budget shared by the threads of one process: the frames being rendered at once hold
at most ``limit`` samples between them, so concurrent requests cannot multiply the memory
one frame at the rendering limit may take. A frame alone may always go (its own size was
checked against the limit before); the others wait their turn, first come first served,
in their worker threads (never on the event loop)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class SampleBudget:
    def __init__(self) -> None:
        self._held = 0
        self._changed = threading.Condition()
        self._queue: deque[object] = deque()

    @property
    def held(self) -> int:
        return self._held

    @contextmanager
    def hold(self, samples: int, limit: int | None) -> Iterator[None]:
        """Hold ``samples`` of ``limit`` (None: no limit, nothing held) while in the
        block, waiting until the earlier holders leave room."""
        if limit is None:
            yield
            return
        samples = min(samples, limit)
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            self._changed.wait_for(
                lambda: (
                    self._queue[0] is ticket and (self._held + samples <= limit or not self._held)
                )
            )
            self._queue.popleft()
            self._held += samples
            self._changed.notify_all()  # the next in line may fit as well
        try:
            yield
        finally:
            with self._changed:
                self._held -= samples
                self._changed.notify_all()
