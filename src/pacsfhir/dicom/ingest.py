"""The one ingest path (CLI, and later STOW-RS and C-STORE): stage, read, place, sync,
index.

Durability: an instance is reported stored only after its blob and every directory
entry have been flushed (one ``syncfs`` per batch) and the index transaction holding
it has committed (SQLite ``synchronous=FULL`` / PostgreSQL commit). A crash before
that leaves at most an unreferenced blob, never an index row without its file.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from sqlalchemy import Engine

from pacsfhir.dicom.reader import InstanceAttributes, read_instance
from pacsfhir.dicom.storage import BlobStore, StagedFile
from pacsfhir.errors import RejectedInstance
from pacsfhir.index.writer import IndexRecord, existing_instances, write_instances

_PATHS_PER_TASK = 32
_PARSE_IN_MEMORY = 1 << 20  # files up to this size are read once and parsed from memory


class Outcome(Enum):
    STORED = "stored"
    REPLACED = "replaced"
    ALREADY_PRESENT = "already present"
    REJECTED = "rejected"


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


@dataclass(frozen=True)
class Result:
    source: str
    outcome: Outcome
    sop_uid: str = ""
    study_uid: str = ""
    reason: str = ""
    detail: str = ""


@dataclass
class IngestSummary:
    counts: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first file

    def add(self, result: Result) -> None:
        self.counts[result.outcome.value] += 1
        if result.outcome is Outcome.REJECTED:
            self.rejected[result.reason] += 1
            self.examples.setdefault(result.reason, f"{result.source}: {result.detail}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def prepare_staged(
    source: str, staged: StagedFile, blobs: BlobStore, content: bytes | None = None
) -> Prepared | Rejected:
    """Read a staged file (from ``content`` when it holds the whole file); a rejected one
    is removed from staging."""
    try:
        if staged.size == 0:
            raise RejectedInstance("not-dicom", "empty file")
        with io.BytesIO(content) if content is not None else open(staged.path, "rb") as fp:
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


def _prepare_many(paths: Sequence[str], blob_root: str) -> list[Prepared | Rejected]:
    return [prepare_file(p, blob_root) for p in paths]


def commit_batch(
    engine: Engine, blobs: BlobStore, items: Sequence[Prepared], timezone: str = ""
) -> list[Result]:
    """Place, sync and index a batch of prepared instances."""
    if not items:
        return []
    with engine.connect() as conn:
        known = existing_instances(conn, [item.attributes.sop_uid for item in items])
    results: list[Result] = []
    current = {uid: previous.sha256 for uid, previous in known.items()}
    for item in items:  # outcomes as if the batch's files were stored one after another
        attrs = item.attributes
        if current.get(attrs.sop_uid) == item.staged.sha256:
            outcome = Outcome.ALREADY_PRESENT
        else:
            outcome = Outcome.REPLACED if attrs.sop_uid in current else Outcome.STORED
            current[attrs.sop_uid] = item.staged.sha256
        results.append(Result(item.source, outcome, attrs.sop_uid, attrs.study_uid))
    records: list[IndexRecord] = []
    superseded: list[str] = []
    written: set[str] = set()
    for item in items:  # write each instance's final content once
        attrs = item.attributes
        sha = item.staged.sha256
        previous = known.get(attrs.sop_uid)
        unchanged = previous is not None and previous.sha256 == sha
        if sha != current[attrs.sop_uid] or attrs.sop_uid in written or unchanged:
            blobs.discard(item.staged.path)
            continue
        written.add(attrs.sop_uid)
        relative = blobs.relative_path(attrs.study_uid, attrs.series_uid, attrs.sop_uid, sha)
        blobs.place(item.staged, relative)
        records.append(IndexRecord(attrs, relative, item.staged.size, sha))
        if previous is not None and previous.blob != relative:
            superseded.append(previous.blob)
    if records:
        blobs.sync()
        now = to_micros_now()
        with engine.begin() as conn:
            write_instances(conn, records, now, timezone)
    for relative in superseded:
        blobs.delete(relative)
    return results


def to_micros_now() -> int:
    """Now, in microseconds but at the millisecond precision FHIR instants are shown in."""
    return time.time_ns() // 1_000_000 * 1000


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


def _chunked(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ingest(
    paths: Iterable[str],
    engine: Engine,
    blobs: BlobStore,
    *,
    workers: int = 0,
    batch_size: int = 256,
    timezone: str = "",
    on_result: Callable[[Result], None] | None = None,
) -> IngestSummary:
    """Ingest files and folders. Parsing runs in ``workers`` processes (0: one per core)
    while this process places blobs and writes the index; at most a few batches are in
    flight, so memory stays flat however many files there are."""
    blobs.ensure()
    summary = IngestSummary()
    pending: list[Prepared] = []

    def handle(prepared: Iterable[Prepared | Rejected]) -> None:
        for item in prepared:
            if isinstance(item, Rejected):
                record(
                    Result(item.source, Outcome.REJECTED, reason=item.reason, detail=item.detail)
                )
            else:
                pending.append(item)
        if len(pending) >= batch_size:
            flush()

    def record(result: Result) -> None:
        summary.add(result)
        if on_result is not None:
            on_result(result)

    def flush() -> None:
        for result in commit_batch(engine, blobs, pending, timezone):
            record(result)
        pending.clear()

    workers = workers or os.cpu_count() or 1
    chunks = _chunked(walk(paths), _PATHS_PER_TASK)
    if workers == 1:
        for chunk in chunks:
            handle(_prepare_many(chunk, str(blobs.root)))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            in_flight: set[Future[list[Prepared | Rejected]]] = set()
            for chunk in chunks:
                in_flight.add(pool.submit(_prepare_many, chunk, str(blobs.root)))
                if len(in_flight) >= workers * 2:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        handle(future.result())
            for future in in_flight:
                handle(future.result())
    flush()
    return summary
