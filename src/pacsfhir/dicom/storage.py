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

    def sweep_incoming(self, older_than: float = 3600.0) -> int:
        """Remove staged files left by a crash (old enough that no writer still owns them)."""
        removed = 0
        cutoff = time.time() - older_than
        for entry in os.scandir(self.incoming):
            if entry.name.endswith(".part") and entry.stat().st_mtime < cutoff:
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
