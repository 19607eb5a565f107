"""``api.streaming``: chunks pulled in batches, in order, and closed when the caller stops."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from pacsfhir.api.streaming import coalesce, in_batches, take


@pytest.mark.parametrize(
    ("chunks", "budget", "batches"),
    [
        ([], 10, [[]]),
        ([b"abc"], 10, [[b"abc"], []]),
        ([b"ab", b"cd", b"ef"], 4, [[b"ab", b"cd"], [b"ef"], []]),
        ([b"abcdefgh", b"ij"], 4, [[b"abcdefgh"], [b"ij"], []]),
        ([b"", b"a", b"", b"b"], 1, [[b"a"], [b"b"], []]),
    ],
)
def test_take_splits_by_budget(
    chunks: list[bytes], budget: int, batches: list[list[bytes]]
) -> None:
    source = iter(chunks)
    assert [take(source, budget) for _ in batches] == batches


@pytest.mark.parametrize(
    ("batch", "below", "out"),
    [
        ([], 4, []),
        ([b"a", b"b", b"c"], 4, [b"abc"]),
        ([b"a", b"long", b"b", b"c"], 4, [b"a", b"long", b"bc"]),
        ([b"long", b"more"], 4, [b"long", b"more"]),
        ([memoryview(b"ab"), b"c"], 4, [b"abc"]),
    ],
)
def test_coalesce_joins_runs_of_small_chunks(
    batch: list[bytes | memoryview], below: int, out: list[bytes]
) -> None:
    assert [bytes(c) for c in coalesce(batch, below)] == out


def test_coalesce_passes_a_lone_small_chunk_and_large_ones_without_copying() -> None:
    large, small = b"x" * 10, memoryview(b"y")
    got = coalesce([large, small], 4)
    assert got[0] is large
    assert got[1] is small


async def _collect(chunks: Iterator[bytes], budget: int) -> list[bytes]:
    return [chunk async for chunk in in_batches(chunks, budget)]


def test_in_batches_yields_every_chunk_in_order_off_the_event_loop() -> None:
    threads: set[str] = set()

    def source() -> Iterator[bytes]:
        for n in range(100):
            threads.add(threading.current_thread().name)
            yield n.to_bytes(2, "big") * 50

    got = asyncio.run(_collect(source(), 1000))
    assert b"".join(got) == b"".join(n.to_bytes(2, "big") * 50 for n in range(100))
    assert len(got) == 10  # each batch of ten small chunks sent as one
    assert threading.main_thread().name not in threads


def test_in_batches_closes_the_source_when_the_caller_stops_early() -> None:
    closed = threading.Event()

    def source() -> Iterator[bytes]:
        try:
            while True:
                yield b"x" * 100
        finally:
            closed.set()

    async def first_three() -> list[bytes]:
        batches = in_batches(source(), 250)
        got = [await anext(batches) for _ in range(3)]
        await batches.aclose()
        await asyncio.sleep(0.05)  # the read-ahead ends, then the source is closed
        return got

    assert asyncio.run(first_three()) == [b"x" * 300] * 3  # batches of three, joined
    assert closed.wait(5)


def test_in_batches_raises_the_sources_error() -> None:
    def source() -> Iterator[bytes]:
        yield b"ok"
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        asyncio.run(_collect(source(), 1))


def test_a_cancelled_reader_closes_the_source_only_after_the_read_in_flight() -> None:
    """The task is cancelled while a worker thread is inside the source (a slow disk):
    the source is closed once that read returns, never while it runs."""
    closed = threading.Event()
    inside = threading.Event()
    errors: list[BaseException] = []

    def source() -> Iterator[bytes]:
        try:
            yield b"first"
            inside.set()
            time.sleep(0.3)
            yield b"second"
        finally:
            closed.set()

    async def cancel_mid_read() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))

        async def consume() -> None:
            async for _chunk in in_batches(source(), 1):
                pass  # the next read is the slow one: cancelled while awaiting it

        task = asyncio.create_task(consume())
        await asyncio.to_thread(inside.wait, 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(closed.wait, 5)

    asyncio.run(cancel_mid_read())
    assert closed.is_set()
    assert errors == []
