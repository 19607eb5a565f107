"""Blob storage: each instance stored byte for byte, under a name derived from validated
UIDs and the content hash (never from a path or a raw value from outside).

Writes are staged in ``incoming/`` and renamed into place; ``sync`` makes everything
written so far durable with one ``syncfs`` call, so ingest batches its fsyncs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pacsfhir.dicom.uids import is_valid_uid

CHUNK = 1 << 20
METADATA_SUFFIX = ".json"
# A staged file younger than this may belong to an upload or ingest in progress.
STAGING_GRACE_SECONDS = 3600.0
# An unreferenced blob younger than this may be a writer's own, about to be removed by it.
ORPHAN_GRACE_SECONDS = 300.0

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


@dataclass(frozen=True)
class StagedFile:
    path: str  # absolute path of the staged copy
    sha256: str
    size: int


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"

    def ensure(self) -> None:
        self.incoming.mkdir(parents=True, exist_ok=True)

    def sweep_incoming(self, older_than: float = STAGING_GRACE_SECONDS) -> int:
        """Remove staged files left by a crash (old enough that no writer still owns them)."""
        removed = 0
        cutoff = time.time() - older_than
        for entry in os.scandir(self.incoming):
            try:
                stale = entry.name.endswith(".part") and entry.stat().st_mtime < cutoff
            except FileNotFoundError:
                continue  # its writer (another process) placed or discarded it meanwhile
            if stale:
                self.discard(entry.path)
                removed += 1
        return removed

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
        for uid in (study_uid, series_uid, sop_uid):
            if not is_valid_uid(uid):
                raise ValueError(f"not a valid UID: {uid!r}")
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return f"{study_uid}/{series_uid}/{sop_uid}.{sha256[:16]}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def stage_stream(self, source: BinaryIO, head: bytes = b"") -> StagedFile:
        """Copy ``head`` then the rest of a stream into ``incoming/``, hashing as it goes."""
        target = self.incoming / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256(head)
        size = len(head)
        with open(target, "wb") as out:
            out.write(head)
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        return StagedFile(str(target), digest.hexdigest(), size)

    def stage_chunks(self, chunks: Iterator[bytes]) -> StagedFile:
        target = self.incoming / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        with open(target, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        return StagedFile(str(target), digest.hexdigest(), size)

    def place(self, staged: StagedFile, relative: str) -> None:
        """Move a staged file to its final name (not yet durable: see ``sync``)."""
        final = self.root / relative
        try:  # most instances go to a series folder an earlier one made
            os.replace(staged.path, final)
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.path, final)

    def write_metadata(self, relative: str, metadata: bytes) -> None:
        """Cache the instance's DICOM JSON beside its blob (atomically; it is derived from
        the blob, so it needs no fsync)."""
        final = self.root / (relative + METADATA_SUFFIX)
        partial = final.with_name(f"{final.name}.{uuid.uuid4().hex}.tmp")
        with open(partial, "wb") as out:
            out.write(metadata)
        os.replace(partial, final)

    def read_metadata(self, relative: str) -> bytes:
        with open(self.root / (relative + METADATA_SUFFIX), "rb") as source:
            return source.read()

    def size_of(self, relative: str) -> int | None:
        """The blob's size, or None when it is not there."""
        try:
            return os.stat(self.root / relative).st_size
        except FileNotFoundError:
            return None

    def discard(self, staged_path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged_path)

    def delete(self, relative: str) -> None:
        """Remove a blob and its metadata."""
        for path in (self.root / relative, self.root / (relative + METADATA_SUFFIX)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def remove(self, relative: str) -> None:
        """Remove one file under the root (a blob, a metadata file, a staged file)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / relative)

    def prune_dirs(self, relative: str) -> None:
        """Remove the folders above ``relative`` that are now empty (series, then study).
        Only under the index's write lock: blobs are placed only under it."""
        folder = (self.root / relative).parent
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty, or already gone
                return
            folder = folder.parent

    def files(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every file under the root except staging: (path relative to the root, stat)."""
        pending = [self.root]
        while pending:
            folder = pending.pop()
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:  # removed meanwhile
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.path != str(self.incoming):
                            pending.append(Path(entry.path))
                    else:
                        yield os.path.relpath(entry.path, self.root), entry.stat()
                except FileNotFoundError:
                    continue

    def staged_files(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every file in staging: (path relative to the root, stat)."""
        try:
            entries = list(os.scandir(self.incoming))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                yield os.path.relpath(entry.path, self.root), entry.stat()
            except FileNotFoundError:
                continue

    def sync(self) -> None:
        """Flush every file and directory entry written so far to stable storage."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs is not None and _syncfs(fd) == 0:
                return
            os.sync()
        finally:
            os.close(fd)

    def open(self, relative: str) -> BinaryIO:
        return open(self.root / relative, "rb")
