"""The one ingest path (CLI, STOW-RS, later C-STORE): stage and read (``prepare``), then
place, sync and index here.

Durability: an instance is reported stored only after its blob and every directory
entry have been flushed (one ``syncfs`` per batch) and the index transaction holding
it has committed (SQLite ``synchronous=FULL`` / PostgreSQL commit). A crash before
that leaves at most an unreferenced blob, never an index row without its file.

Concurrency: a batch takes the index's write lock first, then looks up, places, syncs,
writes and commits under it, so concurrent writers (STOW-RS threads, ``pacsfhir
ingest`` processes) see each other's commits and each gets a true outcome. A failed
batch removes the blobs it placed that the index does not reference, and blobs that a
batch superseded go once it has committed; both are checked under the lock again,
since blob names are content-addressed and another writer may have committed the same
name meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from pacsfhir.dicom.prepare import ParallelPreparer, Prepared, Rejected, files_ahead
from pacsfhir.dicom.storage import BlobStore
from pacsfhir.index.writer import (
    ExistingInstance,
    IndexRecord,
    existing_instances,
    lock_index,
    write_instances,
)

log = logging.getLogger(__name__)


class Outcome(Enum):
    STORED = "stored"
    REPLACED = "replaced"
    ALREADY_PRESENT = "already present"
    REJECTED = "rejected"


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


def commit_batch(
    engine: Engine, blobs: BlobStore, items: Sequence[Prepared], timezone: str = ""
) -> list[Result]:
    """Place, sync and index a batch of prepared instances, under the index's write lock
    (safe beside any other writer, in this process or another)."""
    if not items:
        return []
    placed: list[Blob] = []
    try:
        with engine.begin() as conn:
            lock_index(conn)
            known = existing_instances(conn, [item.attributes.sop_uid for item in items])
            plan = plan_batch(items, known, blobs)
            for item, relative in plan.place:
                blobs.place(item.staged, relative)
                placed.append(Blob(item.attributes.sop_uid, relative))
            for item in plan.discard:
                blobs.discard(item.staged.path)
            if placed:
                blobs.sync()
            if plan.records:
                write_instances(conn, plan.records, to_micros_now(), timezone)
    except BaseException:
        for item in items:
            blobs.discard(item.staged.path)
        # what this batch placed and the index does not reference (after a rollback, or a
        # commit whose outcome is unknown: the check is made under the lock again)
        remove_unreferenced(engine, blobs, placed)
        raise
    remove_unreferenced(engine, blobs, plan.superseded)
    return plan.results


@dataclass(frozen=True)
class Blob:
    sop_uid: str
    relative: str


@dataclass
class BatchPlan:
    results: list[Result]  # one per item, in order
    place: list[tuple[Prepared, str]]  # staged file -> blob path
    discard: list[Prepared]  # staged files not needed
    records: list[IndexRecord]
    superseded: list[Blob]  # blobs the index will no longer reference


def plan_batch(
    items: Sequence[Prepared], known: dict[str, ExistingInstance], blobs: BlobStore
) -> BatchPlan:
    """What a batch does, given what the index holds: outcomes as if the files were stored
    one after another; each instance's final content written once. A file already
    present whose blob is missing or of the wrong size puts the blob back."""
    plan = BatchPlan([], [], [], [], [])
    # a remote placeholder (the gateway's, no blob) is replaced as if it were not there
    known = {uid: previous for uid, previous in known.items() if previous.blob}
    current = {uid: previous.sha256 for uid, previous in known.items()}
    for item in items:
        attrs = item.attributes
        if current.get(attrs.sop_uid) == item.staged.sha256:
            outcome = Outcome.ALREADY_PRESENT
        else:
            outcome = Outcome.REPLACED if attrs.sop_uid in current else Outcome.STORED
            current[attrs.sop_uid] = item.staged.sha256
        plan.results.append(Result(item.source, outcome, attrs.sop_uid, attrs.study_uid))
    written: set[str] = set()
    for item in items:
        attrs = item.attributes
        sha = item.staged.sha256
        previous = known.get(attrs.sop_uid)
        if sha != current[attrs.sop_uid] or attrs.sop_uid in written:
            plan.discard.append(item)
            continue
        written.add(attrs.sop_uid)
        if previous is not None and previous.sha256 == sha:
            if blobs.size_of(previous.blob) == item.staged.size:
                plan.discard.append(item)
            else:  # lost or truncated since: this copy restores it
                plan.place.append((item, previous.blob))
            continue
        relative = blobs.relative_path(attrs.study_uid, attrs.series_uid, attrs.sop_uid, sha)
        plan.place.append((item, relative))
        plan.records.append(IndexRecord(attrs, relative, item.staged.size, sha))
        if previous is not None and previous.blob != relative:
            plan.superseded.append(Blob(attrs.sop_uid, previous.blob))
    return plan


def remove_unreferenced(engine: Engine, blobs: BlobStore, candidates: Sequence[Blob]) -> None:
    """Delete those of ``candidates`` that no index row references, checked under the
    index's write lock (so no writer is between placing a blob and committing it).
    Best effort: what a failure here leaves is an orphan, which ``pacsfhir check
    --repair`` removes, never a row without its blob."""
    if not candidates:
        return
    try:
        with engine.begin() as conn:
            lock_index(conn)
            known = existing_instances(conn, [blob.sop_uid for blob in candidates])
            referenced = {instance.blob for instance in known.values()}
            for blob in candidates:
                if blob.relative not in referenced:
                    blobs.delete(blob.relative)
                    blobs.prune_dirs(blob.relative)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("left %d unreferenced blobs for pacsfhir check: %s", len(candidates), exc)


def to_micros_now() -> int:
    """Now, in microseconds but at the millisecond precision FHIR instants are shown in."""
    return time.time_ns() // 1_000_000 * 1000


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
    """Ingest files and folders: parsing runs in ``workers`` processes (0: one per core)
    while this process places blobs and writes the index."""
    blobs.ensure()
    with ParallelPreparer(paths, str(blobs.root), workers, ahead=files_ahead(batch_size)) as stream:
        return ingest_prepared(
            stream, engine, blobs, batch_size=batch_size, timezone=timezone, on_result=on_result
        )


def ingest_prepared(
    stream: Iterable[Sequence[Prepared | Rejected]],
    engine: Engine,
    blobs: BlobStore,
    *,
    batch_size: int = 256,
    timezone: str = "",
    on_result: Callable[[Result], None] | None = None,
) -> IngestSummary:
    """Commit prepared files in batches of ``batch_size``, in the order they come;
    rejected ones are counted with their reason."""
    summary = IngestSummary()
    pending: list[Prepared] = []

    def record(result: Result) -> None:
        summary.add(result)
        if on_result is not None:
            on_result(result)

    def flush() -> None:
        for result in commit_batch(engine, blobs, pending, timezone):
            record(result)
        pending.clear()

    for prepared in stream:
        for item in prepared:
            if isinstance(item, Rejected):
                record(
                    Result(item.source, Outcome.REJECTED, reason=item.reason, detail=item.detail)
                )
            else:
                pending.append(item)
        if len(pending) >= batch_size:
            flush()
    flush()
    return summary
