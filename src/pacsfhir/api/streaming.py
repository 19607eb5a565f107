"""Response bodies read from disk, sent from the event loop.

Starlette sends a sync iterator by moving every ``next()`` through a worker thread. A
study retrieve is thousands of files, each a head, a body and a delimiter, so that
hop, not the disk or the socket, set the pace. ``in_batches`` instead pulls chunks in a
worker thread a batch of about ``BATCH_BYTES`` at a time, and reads the next batch while
the event loop sends the current one: one hop per batch, reading and sending overlapped,
and at most two batches of one response in memory. (Measured with ``bench.run --only
dicomweb``: 1 MiB batches beat 4 and 8 MiB ones, whose buffers glibc hands back to the
kernel and faults in again; see ``pacsfhir.allocator``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

BATCH_BYTES = 1 << 20


def take(chunks: Iterator[bytes], budget: int) -> list[bytes]:
    """The next chunks of ``chunks`` up to about ``budget`` bytes (the last chunk taken
    may overshoot it); an empty list once ``chunks`` is exhausted."""
    batch: list[bytes] = []
    size = 0
    for chunk in chunks:
        if not chunk:
            continue
        batch.append(chunk)
        size += len(chunk)
        if size >= budget:
            break
    return batch


# Readers of response bodies: their own pool, so that a done-callback of a read runs only
# once its thread has left the iterator (see ``in_batches``).
_READERS = ThreadPoolExecutor(thread_name_prefix="pacsfhir-read")


async def in_batches(chunks: Iterator[bytes], budget: int = BATCH_BYTES) -> AsyncIterator[bytes]:
    """The chunks of ``chunks``, in order, read in a worker thread one batch ahead of the
    caller. When the caller stops early (a client that disconnects, a cancelled task),
    ``chunks`` is closed, so its open files are too, once the read under way has ended:
    a generator cannot be closed while another thread runs it."""
    ahead = _READERS.submit(take, chunks, budget)
    try:
        while batch := await asyncio.wrap_future(ahead):
            ahead = _READERS.submit(take, chunks, budget)
            for chunk in batch:
                yield chunk
    finally:
        # Runs at once when the read is over (or was cancelled before it started), else
        # in the reader's thread as it finishes.
        ahead.add_done_callback(lambda read: _close(chunks, read))


def _close(chunks: Iterator[bytes], read: Future[list[bytes]]) -> None:
    if not read.cancelled():
        read.exception()  # a failed read-ahead nobody awaits is not an error
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
