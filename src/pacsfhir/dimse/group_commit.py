"""Group commit: instances prepared by several association threads are committed
together, one transaction and one ``syncfs`` per batch, through ``dicom.ingest``'s
``commit_batch`` (the path the CLI and STOW-RS take).

One committer thread takes the first waiting instance, then whatever else is already
queued (up to ``max_batch``), waiting at most ``linger`` seconds for more; a lone
instance is never held back longer than that. Each submitter gets a future that
resolves once its batch has committed (durable), or fails with the batch's error.

A batch of several instances that fails for a reason of its own data (not storage, not
the index's lock) fails as ``BatchFailed``: ``commit_batch`` has removed the staged
files, and each submitter may stage its bytes again and submit ``alone`` so that one
instance's fault is not its neighbours'.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from pacsfhir.dicom.ingest import Result, commit_batch
from pacsfhir.dicom.prepare import Prepared
from pacsfhir.dicom.storage import BlobStore

log = logging.getLogger(__name__)

MAX_BATCH = 64


class BatchFailed(Exception):
    """A batch of several instances failed; the cause may be one instance's alone."""


@dataclass
class _Pending:
    item: Prepared
    alone: bool
    future: Future[Result] = field(default_factory=Future)


class GroupCommit:
    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        timezone: str = "",
        *,
        max_batch: int = MAX_BATCH,
        linger: float = 0.0,
    ) -> None:
        self._engine = engine
        self._blobs = blobs
        self._timezone = timezone
        self._max_batch = max_batch
        self._linger = linger
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pacsfhir-group-commit")
        self.batches = 0  # committed batches, and instances in them (for measurements)
        self.committed = 0

    def start(self) -> GroupCommit:
        self._thread.start()
        return self

    def close(self) -> None:
        """Commit what is queued, then stop the committer thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def submit(self, item: Prepared, alone: bool = False) -> Future[Result]:
        if not self._thread.is_alive():
            raise RuntimeError("the group committer is not running")
        pending = _Pending(item, alone)
        self._queue.put(pending)
        return pending.future

    def _run(self) -> None:
        held: _Pending | None = None
        while True:
            first = held or self._queue.get()
            held = None
            if first is None:
                return
            batch = [first]
            stop = False
            deadline = time.monotonic() + self._linger
            while not first.alone and len(batch) < self._max_batch:
                try:
                    wait = deadline - time.monotonic()
                    nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if nxt.alone:  # committed by itself, next
                    held = nxt
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                self._drain()
                return

    def _drain(self) -> None:
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                return
            if pending is not None:
                self._commit([pending])

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            results = commit_batch(
                self._engine, self._blobs, [p.item for p in batch], self._timezone
            )
        except (OSError, OperationalError) as exc:  # storage, or the index busy or down
            for pending in batch:
                pending.future.set_exception(exc)
            return
        except Exception as exc:
            log.warning(
                "a batch of %d instances failed to commit (%s)%s",
                len(batch),
                type(exc).__name__,
                ": each is retried alone" if len(batch) > 1 else "",
            )
            error = BatchFailed(str(exc)) if len(batch) > 1 else exc
            for pending in batch:
                pending.future.set_exception(error)
            return
        self.batches += 1
        self.committed += len(batch)
        for pending, result in zip(batch, results, strict=True):
            pending.future.set_result(result)
