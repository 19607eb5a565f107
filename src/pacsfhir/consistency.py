"""The index against the blobs (``pacsfhir check``): blobs no instance row references
(orphans), rows whose blob is missing or damaged (wrong size; with ``verify_hash``, wrong
content), and staged files left in ``incoming/``.

Safe beside a running server or ingest. The listing and the index are read without
locks, then every orphan and every missing or damaged blob is confirmed under the
index's write lock (``index.writer.lock_index``): a writer places blobs and commits
under that lock, so a blob placed but not yet committed is never taken for an orphan,
and a blob superseded meanwhile never for a missing one. Repair then removes, still
under the lock, the confirmed orphans older than ``grace`` seconds (younger ones may be
a writer's own leftovers it is about to remove; they are reported) and the staged
files older than ``staging_grace`` (an upload in progress keeps writing its own).

It never deletes an index row: a row whose blob is missing or damaged is reported, and
the operator restores the file (from a backup, or by ingesting the original again:
ingest puts back a missing or wrong-size blob).

Blob paths are relative to the blob root. A metadata cache file (``<blob>.json``) is
an orphan only when its blob is not referenced; other files that are not blobs (a
metadata file being written) count only once older than ``grace``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from sqlalchemy import Engine

from pacsfhir.dicom.storage import (
    CHUNK,
    METADATA_SUFFIX,
    ORPHAN_GRACE_SECONDS,
    STAGING_GRACE_SECONDS,
    BlobStore,
)
from pacsfhir.index.writer import existing_instances, instance_blobs, lock_index

BLOB_SUFFIX = ".dcm"
_CONFIRM_CHUNK = 5000  # SOP Instance UIDs looked up per lock


@dataclass(frozen=True)
class ConsistencyReport:
    orphan_blobs: list[str]
    missing_blobs: list[str]
    damaged_blobs: list[str]
    stale_staging: list[str]
    repaired: list[str]

    @property
    def clean(self) -> bool:
        """No orphan, missing, damaged or stale file remains (after repair)."""
        repaired = set(self.repaired)
        leftover = [p for p in self.orphan_blobs + self.stale_staging if p not in repaired]
        return not (leftover or self.missing_blobs or self.damaged_blobs)


@dataclass(frozen=True)
class _Row:
    sop_uid: str
    size: int
    sha256: str


def blob_of(relative: str) -> str | None:
    """The blob a file under the root stands for: itself, the blob of a metadata cache
    file, or None for anything else."""
    if relative.endswith(BLOB_SUFFIX):
        return relative
    if relative.endswith(BLOB_SUFFIX + METADATA_SUFFIX):
        return relative[: -len(METADATA_SUFFIX)]
    return None


def sop_uid_of(blob: str) -> str:
    """The SOP Instance UID in a blob name ``study/series/<sop>.<sha16>.dcm`` ("" if the
    name is not one)."""
    name = blob.rsplit("/", 1)[-1]
    parts = name.rsplit(".", 2)
    return parts[0] if len(parts) == 3 else ""


def check(
    engine: Engine,
    blobs: BlobStore,
    *,
    repair: bool = False,
    verify_hash: bool = False,
    grace: float = ORPHAN_GRACE_SECONDS,
    staging_grace: float = STAGING_GRACE_SECONDS,
) -> ConsistencyReport:
    """Compare the index with the blobs; with ``repair``, remove the orphans and stale
    staged files (never an index row)."""
    now = time.time()
    files = {relative: (st.st_size, st.st_mtime) for relative, st in blobs.files()}
    with engine.connect() as conn:
        rows = {blob: _Row(sop, size, sha) for sop, blob, size, sha in instance_blobs(conn)}
    young = now - grace
    suspect_orphans = [
        relative
        for relative, (_size, mtime) in files.items()
        if blob_of(relative) not in rows and (blob_of(relative) is not None or mtime < young)
    ]
    suspect_rows = [
        blob
        for blob, row in rows.items()
        if files.get(blob, (None, 0.0))[0] != row.size and blobs.size_of(blob) != row.size
    ]
    removable = _older(files, young) if repair else set()
    orphans, missing, damaged, repaired = _confirm(
        engine, blobs, suspect_orphans, suspect_rows, rows, removable
    )
    if verify_hash:
        damaged += [
            blob
            for blob, row in sorted(rows.items())
            if blob not in missing and blob not in damaged and not _hash_matches(blobs, blob, row)
        ]
    stale = sorted(
        relative for relative, st in blobs.staged_files() if st.st_mtime < now - staging_grace
    )
    if repair:
        for relative in stale:
            blobs.remove(relative)
        repaired += stale
    return ConsistencyReport(sorted(orphans), sorted(missing), sorted(damaged), stale, repaired)


def _older(files: dict[str, tuple[int, float]], cutoff: float) -> set[str]:
    return {relative for relative, (_size, mtime) in files.items() if mtime < cutoff}


def _confirm(
    engine: Engine,
    blobs: BlobStore,
    suspect_orphans: list[str],
    suspect_rows: list[str],
    rows: dict[str, _Row],
    removable: set[str],
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Orphans, missing, damaged and repaired, each suspect checked again under the
    index's write lock against the index and the disk as they are then; the orphans in
    ``removable`` are removed there."""
    orphans: list[str] = []
    missing: list[str] = []
    damaged: list[str] = []
    repaired: list[str] = []
    suspects = [(path, True) for path in suspect_orphans] + [(b, False) for b in suspect_rows]
    for start in range(0, len(suspects), _CONFIRM_CHUNK):
        chunk = suspects[start : start + _CONFIRM_CHUNK]
        with engine.begin() as conn:
            lock_index(conn)
            sop_uids = [sop_uid_of(blob_of(path) or "") for path, _ in chunk]
            known = existing_instances(conn, [uid for uid in sop_uids if uid])
            referenced = {instance.blob: instance for instance in known.values()}
            for path, is_file in chunk:
                if is_file:
                    if blob_of(path) in referenced or blobs.size_of(path) is None:
                        continue  # committed, or removed, since the listing
                    orphans.append(path)
                    if path in removable:
                        blobs.remove(path)
                        blobs.prune_dirs(path)
                        repaired.append(path)
                    continue
                if path not in referenced:
                    continue  # replaced or moved since the index was read
                size = blobs.size_of(path)
                if size is None:
                    missing.append(path)
                elif size != rows[path].size:
                    damaged.append(path)
    return orphans, missing, damaged, repaired


def _hash_matches(blobs: BlobStore, blob: str, row: _Row) -> bool:
    digest = hashlib.sha256()
    try:
        with blobs.open(blob) as source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
    except FileNotFoundError:  # replaced since the index was read: not this check's find
        return True
    return digest.hexdigest() == row.sha256
