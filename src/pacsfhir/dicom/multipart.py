"""Media types and ``multipart/related`` bodies (RFC 2387, PS3.18 8.7.1.2).

``parse_accept`` reads an Accept header (or the ``accept`` query parameter) into media
ranges, quoted parameters and all. ``stream`` writes a multipart body as a generator
of chunks, each part's body itself an iterator of chunks, so a study is never held in
memory; ``length`` gives the body's size up front when every part knows its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

CRLF = b"\r\n"


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header: ``type/subtype`` and lower-cased parameters."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def is_multipart(self) -> bool:
        return self.media_type in ("multipart/related", "multipart/*")

    @property
    def part_type(self) -> str | None:
        """The ``type`` parameter of a multipart range (None when absent)."""
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == separator and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of an Accept header, in the order given; ranges with q=0 are
    dropped; a malformed q counts as 1. An empty header gives ``*/*``."""
    ranges: list[MediaRange] = []
    for element in _split(header, ","):
        pieces = _split(element, ";")
        media_type = pieces[0].strip().lower()
        if not media_type:
            continue
        if media_type == "*":
            media_type = "*/*"
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name = name.strip().lower()
            if not name:
                continue
            if name == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 1.0
                continue
            params[name] = _unquote(value)
        if q > 0:
            ranges.append(MediaRange(media_type, params, q))
    if not header.strip():
        return [MediaRange("*/*")]
    # highest quality first; equal quality keeps the client's order
    return sorted(ranges, key=lambda r: -r.q)


def media_matches(pattern: str, media_type: str) -> bool:
    """Whether ``pattern`` (possibly ``*/*`` or ``type/*``) covers ``media_type``."""
    if pattern in ("*/*", media_type):
        return True
    major, _, minor = pattern.partition("/")
    return minor == "*" and media_type.split("/")[0] == major


@dataclass(frozen=True)
class Part:
    """One body part: its Content-Type, its body as chunks, and (when known) its size."""

    content_type: str
    body: Iterable[bytes]
    length: int | None = None
    location: str | None = None


def new_boundary() -> str:
    return uuid.uuid4().hex


def content_type(root_type: str, boundary: str) -> str:
    """The ``multipart/related`` Content-Type of a body whose parts are ``root_type``."""
    return f'multipart/related; type="{root_type}"; boundary={boundary}'


def _head(part: Part, boundary: str) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {part.content_type}"]
    if part.length is not None:
        lines.append(f"Content-Length: {part.length}")
    if part.location is not None:
        lines.append(f"Content-Location: {part.location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _tail(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def _pieces(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    for part in parts:
        yield _head(part, boundary)
        yield from part.body
        yield CRLF
    yield _tail(boundary)


def stream(parts: Iterable[Part], boundary: str, batch: int = 256 * 1024) -> Iterator[bytes]:
    """The body, chunk by chunk: each part's head, its body chunks, CRLF; then the
    closing delimiter. Parts are consumed lazily, one at a time. Small pieces (heads,
    small frames) are gathered into chunks of about ``batch`` bytes, so a body of many
    small parts is not written a few bytes at a time; large chunks pass straight on."""
    pending = bytearray()
    for piece in _pieces(parts, boundary):
        if len(piece) >= batch:
            if pending:
                yield bytes(pending)
                pending.clear()
            yield piece
            continue
        pending += piece
        if len(pending) >= batch:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


def length(parts: Sequence[Part], boundary: str) -> int | None:
    """The size ``stream`` will produce, or None when some part's size is unknown."""
    total = len(_tail(boundary))
    for part in parts:
        if part.length is None:
            return None
        total += len(_head(part, boundary)) + part.length + len(CRLF)
    return total
