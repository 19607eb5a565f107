"""The one ingest path (CLI, STOW-RS, later C-STORE): stage and read (``prepare``), then
place, sync and index here.

Durability: an instance is reported stored only after its blob and every directory
entry have been flushed (one ``syncfs`` per batch) and the index transaction holding
it has committed (SQLite ``synchronous=FULL`` / PostgreSQL commit). A crash before
that leaves at most an unreferenced blob, never an index row without its file.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from sqlalchemy import Engine

from pacsfhir.dicom.prepare import ParallelPreparer, Prepared, Rejected, files_ahead
from pacsfhir.dicom.storage import BlobStore
from pacsfhir.index.writer import IndexRecord, existing_instances, write_instances


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
