"""The first half of ingest, free of the index (no SQLAlchemy): stage each file in the
blob store, hashing it on the way, and read its header; in worker processes.

Kept apart from ``ingest`` so that ``pacsfhir ingest`` can start its parse workers
before it imports the index layer and opens the database: the workers parse the first
files while the main process finishes starting up.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pacsfhir.dicom.reader import InstanceAttributes, read_instance
from pacsfhir.dicom.sniff import HEAD_BYTES, not_dicom
from pacsfhir.dicom.storage import BlobStore, StagedFile
from pacsfhir.errors import RejectedInstance

PATHS_PER_TASK = 32
_PARSE_IN_MEMORY = 1 << 20  # files up to this size are read once and parsed from memory


@dataclass(frozen=True)
class Prepared:
    """A file staged in the blob store and read, ready to be committed."""

    source: str
    staged: StagedFile
    attributes: InstanceAttributes


@dataclass(frozen=True)
class Rejected:
    source: str
    reason: str
    detail: str


def prepare_staged(
    source: str, staged: StagedFile, blobs: BlobStore, content: bytes | None = None
) -> Prepared | Rejected:
    """Read a staged file (from ``content`` when it holds the whole file); a rejected one
    is removed from staging. What is plainly not DICOM is refused from its first bytes,
    before pydicom's forced parse (``sniff``)."""
    try:
        with io.BytesIO(content) if content is not None else open(staged.path, "rb") as fp:
            problem = not_dicom(fp.read(HEAD_BYTES), staged.size)
            if problem is not None:
                raise RejectedInstance("not-dicom", problem)
            fp.seek(0)
            attributes = read_instance(fp, staged.size)
    except RejectedInstance as exc:
        blobs.discard(staged.path)
        return Rejected(source, exc.reason, exc.detail)
    return Prepared(source, staged, attributes)


def prepare_file(path: str, blob_root: str) -> Prepared | Rejected:
    """Copy one file into staging (hashing it on the way) and read its header."""
    blobs = BlobStore(Path(blob_root))
    try:
        with open(path, "rb") as source:
            head = source.read(_PARSE_IN_MEMORY)
            staged = blobs.stage_stream(source, head)
    except OSError as exc:
        return Rejected(path, "unreadable", exc.strerror or str(exc))
    # small files (most instances) are parsed from memory; large ones from the staged copy
    whole = head if staged.size == len(head) else None
    return prepare_staged(path, staged, blobs, whole)


def prepare_many(paths: Sequence[str], blob_root: str) -> list[Prepared | Rejected]:
    return [prepare_file(p, blob_root) for p in paths]


def walk(paths: Iterable[str]) -> Iterator[str]:
    """Every file under the given files and folders, recursively, in a stable order."""
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield os.path.join(root, name)
        else:
            yield path


def count_files(paths: Iterable[str]) -> int:
    return sum(1 for _ in walk(paths))


def chunked(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def files_ahead(batch_size: int) -> int:
    """Files to keep queued for the parse workers: a batch's worth while the caller
    commits the previous one, and a few tasks more (measured: with only four tasks
    queued the workers sat idle during each commit)."""
    return batch_size + 4 * PATHS_PER_TASK


class ParallelPreparer:
    """Prepares files in ``workers`` processes (0: one per core), in walk order.

    Entering starts the workers and queues the first ``ahead`` files at once, so they are
    parsed while the caller does other work; iterating yields each task's results and
    keeps ``ahead`` files queued, so the workers go on while the caller commits a batch.
    Memory stays bounded: at most ``ahead`` files are read but not yet consumed.
    With one worker, files are prepared in this process as they are consumed.
    """

    def __init__(self, paths: Iterable[str], blob_root: str, workers: int = 0, ahead: int = 0):
        self._chunks = chunked(walk(paths), PATHS_PER_TASK)
        self._blob_root = blob_root
        self._workers = workers or os.cpu_count() or 1
        tasks = max(1, ahead // PATHS_PER_TASK) if ahead else self._workers * 2
        self._tasks_ahead = max(tasks, self._workers)
        self._pool: ProcessPoolExecutor | None = None
        self._queued: deque[Future[list[Prepared | Rejected]]] = deque()

    def __enter__(self) -> ParallelPreparer:
        if self._workers > 1:
            self._pool = ProcessPoolExecutor(max_workers=self._workers)
            self._fill()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            for future in self._queued:
                future.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
            # Left early (an error, or a break): what the tasks staged and nobody took.
            # The sweep of ``incoming/`` would remove it in an hour; this does it now.
            self._discard_unconsumed()

    def _discard_unconsumed(self) -> None:
        blobs = BlobStore(Path(self._blob_root))
        while self._queued:
            future = self._queued.popleft()
            if future.cancelled() or future.exception() is not None:
                continue
            for item in future.result():
                if isinstance(item, Prepared):
                    blobs.discard(item.staged.path)

    def _fill(self) -> None:
        assert self._pool is not None
        while len(self._queued) < self._tasks_ahead:
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            self._queued.append(self._pool.submit(prepare_many, chunk, self._blob_root))

    def __iter__(self) -> Iterator[list[Prepared | Rejected]]:
        if self._pool is None:
            for chunk in self._chunks:
                yield prepare_many(chunk, self._blob_root)
            return
        while self._queued:
            results = self._queued.popleft().result()
            self._fill()
            yield results
