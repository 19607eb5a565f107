"""Running test work in several threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def run_together(n: int, work: Callable[[], Any], timeout: float = 30) -> list[Any]:
    """``work`` in ``n`` threads released at once; results, or the exceptions raised."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results
