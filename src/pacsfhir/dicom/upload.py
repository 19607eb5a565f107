"""Receive a ``multipart/related`` request body (STOW-RS) part by part into the blob
store's staging area, without holding the body in memory. Parsing is python-multipart's.

The event loop only counts bytes: the parser, and with it every file open, write and
hash, runs in a worker thread, a batch of received chunks at a time. Limits (body and
part) are enforced while streaming; on any error, or when the request is cancelled,
nothing stays staged.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import IO

import anyio
import anyio.to_thread
from python_multipart.multipart import MultipartParser, parse_options_header

from pacsfhir.dicom.storage import BlobStore, StagedFile
from pacsfhir.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from pacsfhir.settings import Settings

MAX_PARTS = 10_000
MAX_PART_HEADERS = 16 * 1024  # bytes of header lines in one part
BATCH = 1 << 20  # received bytes handed to the parser thread at once
MIB = 1 << 20
# RFC 2046 5.1.1: 1 to 70 characters from bchars, the last not a space
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


@dataclass(frozen=True)
class UploadLimits:
    """Largest body and largest part, in bytes (``max_upload_mb``, ``max_part_mb``)."""

    body: int
    part: int

    @classmethod
    def of(cls, settings: Settings) -> UploadLimits:
        return cls(settings.max_upload_mb * MIB, settings.max_part_mb * MIB)

    def body_too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body exceeds {self.body // MIB} MiB"
            " (setting max_upload_mb, PACSFHIR_MAX_UPLOAD_MB)"
        )

    def part_too_large(self, number: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"part {number} exceeds {self.part // MIB} MiB"
            " (setting max_part_mb, PACSFHIR_MAX_PART_MB)"
        )

    def check_declared(self, content_length: str | None) -> None:
        """Refuse a body whose Content-Length is over the limit, before reading it."""
        declared = (content_length or "").strip()
        if declared.isascii() and declared.isdigit() and int(declared) > self.body:
            raise self.body_too_large()


@dataclass
class ReceivedPart:
    content_type: str
    staged: StagedFile


@dataclass
class _PartWriter:
    """The parser's callbacks: each part into its own staged file. Runs in a worker thread."""

    blobs: BlobStore
    limits: UploadLimits
    headers: dict[str, str] = field(default_factory=dict)
    header_bytes: int = 0
    field_name: bytes = b""
    value: bytes = b""
    path: str = ""
    out: IO[bytes] | None = None
    digest: hashlib._Hash | None = None
    size: int = 0
    parts: list[ReceivedPart] = field(default_factory=list)

    def begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise BadRequest(f"more than {MAX_PARTS} parts in one request")
        self.headers = {}
        self.header_bytes = 0
        self.path = str(self.blobs.incoming / f"{uuid.uuid4().hex}.part")
        self.out = open(self.path, "wb")  # noqa: SIM115 (closed in end() or abort())
        self.digest = hashlib.sha256()
        self.size = 0

    def _count_header(self, length: int) -> None:
        self.header_bytes += length
        if self.header_bytes > MAX_PART_HEADERS:
            number = len(self.parts) + 1
            raise BadRequest(f"part {number} has over {MAX_PART_HEADERS} bytes of headers")

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.field_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.value += data[start:end]

    def header_end(self) -> None:
        self.headers[self.field_name.decode("latin-1").lower()] = self.value.decode("latin-1")
        self.field_name, self.value = b"", b""

    def data(self, data: bytes, start: int, end: int) -> None:
        assert self.out is not None
        assert self.digest is not None
        self.size += end - start
        if self.size > self.limits.part:
            raise self.limits.part_too_large(len(self.parts) + 1)
        chunk = data[start:end]
        self.out.write(chunk)
        self.digest.update(chunk)

    def end(self) -> None:
        assert self.out is not None
        assert self.digest is not None
        self.out.close()
        self.out = None
        content_type = self.headers.get("content-type", "application/dicom").split(";")[0]
        staged = StagedFile(self.path, self.digest.hexdigest(), self.size)
        self.parts.append(ReceivedPart(content_type.strip().lower(), staged))

    def abort(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
            self.blobs.discard(self.path)
        for part in self.parts:
            self.blobs.discard(part.staged.path)
        self.parts = []


def related_boundary(content_type: str, wanted_type: str) -> bytes:
    """The boundary of a ``multipart/related; type=...`` Content-Type, or 415 (another
    media type) or 400 (no boundary, or one RFC 2046 does not allow)."""
    media, params = parse_options_header(content_type)
    if media != b"multipart/related":
        raise UnsupportedMediaType(f"expected multipart/related, got {content_type or 'nothing'}")
    part_type = params.get(b"type", wanted_type.encode()).decode("latin-1").lower()
    if part_type != wanted_type:
        raise UnsupportedMediaType(f"multipart/related type={part_type!a} is not supported")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/related without a boundary")
    if not _BOUNDARY.fullmatch(boundary):
        raise BadRequest(
            f"the multipart boundary ({len(boundary)} characters) is not 1 to 70 characters"
            " of those RFC 2046 allows"
        )
    return bytes(boundary)


def _finish(parser: MultipartParser, writer: _PartWriter, rest: bytes) -> None:
    parser.write(rest)
    parser.finalize()
    if writer.out is not None:
        raise BadRequest("multipart body ended before its closing boundary")


def _parser(boundary: bytes, writer: _PartWriter) -> MultipartParser:
    return MultipartParser(
        boundary,
        {
            "on_part_begin": writer.begin,
            "on_header_field": writer.header_field,
            "on_header_value": writer.header_value,
            "on_header_end": writer.header_end,
            "on_part_data": writer.data,
            "on_part_end": writer.end,
        },
    )


def stage_parts(
    body: Iterable[bytes | memoryview], boundary: bytes, blobs: BlobStore, limits: UploadLimits
) -> list[ReceivedPart]:
    """``receive_parts`` for a body read in a worker thread (a retrieve from an upstream
    PACS): every part staged as it arrives; on any error nothing stays staged."""
    writer = _PartWriter(blobs, limits)
    parser = _parser(boundary, writer)
    received = 0
    try:
        for chunk in body:
            received += len(chunk)
            if received > limits.body:
                raise limits.body_too_large()
            parser.write(chunk if isinstance(chunk, bytes) else bytes(chunk))
        _finish(parser, writer, b"")
    except BaseException:
        writer.abort()
        raise
    return writer.parts


async def receive_parts(
    body: AsyncIterator[bytes], boundary: bytes, blobs: BlobStore, limits: UploadLimits
) -> list[ReceivedPart]:
    """Stage every part of the body; on a malformed or oversized body, or when the
    request is cancelled, nothing stays staged."""
    writer = _PartWriter(blobs, limits)
    parser = _parser(boundary, writer)
    received = 0
    pending: list[bytes] = []
    pending_size = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > limits.body:
                raise limits.body_too_large()
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= BATCH:
                await anyio.to_thread.run_sync(parser.write, b"".join(pending))
                pending, pending_size = [], 0
        await anyio.to_thread.run_sync(_finish, parser, writer, b"".join(pending))
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.abort)
        if isinstance(exc, BadRequest | PayloadTooLarge) or not isinstance(exc, Exception):
            raise
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    return writer.parts
