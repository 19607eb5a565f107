"""Receive a ``multipart/related`` request body (STOW-RS) part by part into the blob
store's staging area, without holding the body in memory. Parsing is python-multipart's.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header

from pacsfhir.dicom.storage import BlobStore, StagedFile
from pacsfhir.errors import BadRequest, UnsupportedMediaType

MAX_PARTS = 10_000


@dataclass
class ReceivedPart:
    content_type: str
    staged: StagedFile


@dataclass
class _PartWriter:
    blobs: BlobStore
    headers: dict[str, str] = field(default_factory=dict)
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
        self.path = str(self.blobs.incoming / f"{uuid.uuid4().hex}.part")
        self.out = open(self.path, "wb")  # noqa: SIM115 (closed in end())
        self.digest = hashlib.sha256()
        self.size = 0

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.headers[self.field_name.decode("latin-1").lower()] = self.value.decode("latin-1")
        self.field_name, self.value = b"", b""

    def data(self, data: bytes, start: int, end: int) -> None:
        assert self.out is not None
        assert self.digest is not None
        chunk = data[start:end]
        self.out.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)

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


def related_boundary(content_type: str, wanted_type: str) -> bytes:
    """The boundary of a ``multipart/related; type=...`` Content-Type, or 415."""
    media, params = parse_options_header(content_type)
    if media != b"multipart/related":
        raise UnsupportedMediaType(f"expected multipart/related, got {content_type or 'nothing'}")
    part_type = params.get(b"type", wanted_type.encode()).decode().lower()
    if part_type != wanted_type:
        raise UnsupportedMediaType(f"multipart/related type={part_type} is not supported")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/related without a boundary")
    return bytes(boundary)


async def receive_parts(
    body: AsyncIterator[bytes], boundary: bytes, blobs: BlobStore
) -> list[ReceivedPart]:
    """Stage every part of the body; on a malformed body nothing stays staged."""
    writer = _PartWriter(blobs)
    parser = MultipartParser(
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
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except BadRequest:
        writer.abort()
        raise
    except Exception as exc:
        writer.abort()
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    if writer.out is not None:  # the body ended inside a part
        writer.abort()
        raise BadRequest("multipart body ended before its closing boundary")
    return writer.parts
