"""Response bodies read from disk, sent from the event loop.

Starlette sends a sync iterator by moving every ``next()`` through a worker thread. A
study retrieve is thousands of files, each a head, a body and a delimiter, so that
hop, not the disk or the socket, set the pace. ``in_batches`` instead pulls chunks in a
worker thread a batch of about ``BATCH_BYTES`` at a time, and reads the next batch while
the event loop sends the current one: one hop per batch, reading and sending overlapped,
and at most two batches of one response in memory. Small chunks of a batch (a part's
head, a relayed upstream's 64 KiB reads) are joined into one in the reader thread, so
the event loop sends a few large writes rather than many small ones, each of which
costs a pass through the ASGI and HTTP layers. (Measured with ``bench.run --only
dicomweb``: 1 MiB batches beat 4 and 8 MiB ones, whose buffers glibc hands back to the
kernel and faults in again; see ``pacsfhir.allocator``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

Chunk = bytes | memoryview  # what a body is made of (a relay hands on its buffers)
BATCH_BYTES = 1 << 20
JOIN_BELOW = 256 << 10  # chunks under this are joined with their small neighbours


def take(chunks: Iterator[Chunk], budget: int) -> list[Chunk]:
    """The next chunks of ``chunks`` up to about ``budget`` bytes (the last chunk taken
    may overshoot it); an empty list once ``chunks`` is exhausted."""
    batch: list[Chunk] = []
    size = 0
    for chunk in chunks:
        if not chunk:
            continue
        batch.append(chunk)
        size += len(chunk)
        if size >= budget:
            break
    return batch


def coalesce(batch: list[Chunk], below: int = JOIN_BELOW) -> list[Chunk]:
    """``batch`` with each run of consecutive chunks shorter than ``below`` joined into
    one (larger chunks pass as they are: copying them would buy nothing)."""
    out: list[Chunk] = []
    run: list[Chunk] = []
    for chunk in batch:
        if len(chunk) < below:
            run.append(chunk)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else b"".join(run))
            run = []
        out.append(chunk)
    if run:
        out.append(run[0] if len(run) == 1 else b"".join(run))
    return out


def read_batch(chunks: Iterator[Chunk], budget: int) -> list[Chunk]:
    """The next batch of ``chunks`` (``take``), its small chunks joined (``coalesce``)."""
    return coalesce(take(chunks, budget))


# Readers of response bodies: their own pool, so that a done-callback of a read runs only
# once its thread has left the iterator (see ``in_batches``).
_READERS = ThreadPoolExecutor(thread_name_prefix="pacsfhir-read")


async def in_batches(chunks: Iterator[Chunk], budget: int = BATCH_BYTES) -> AsyncIterator[Chunk]:
    """The chunks of ``chunks``, in order, read in a worker thread one batch ahead of the
    caller. When the caller stops early (a client that disconnects, a cancelled task),
    ``chunks`` is closed, so its open files are too, once the read under way has ended:
    a generator cannot be closed while another thread runs it."""
    ahead = _READERS.submit(read_batch, chunks, budget)
    try:
        while batch := await asyncio.wrap_future(ahead):
            ahead = _READERS.submit(read_batch, chunks, budget)
            for chunk in batch:
                yield chunk
    finally:
        # Runs at once when the read is over (or was cancelled before it started), else
        # in the reader's thread as it finishes.
        ahead.add_done_callback(lambda read: _close(chunks, read))


def _close(chunks: Iterator[Chunk], read: Future[list[Chunk]]) -> None:
    if not read.cancelled():
        read.exception()  # a failed read-ahead nobody awaits is not an error
    close = getattr(chunks, "close", None)
    if close is not None:
        close()
