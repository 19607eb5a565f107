"""Request bodies read no further than a limit: a longer body is 413 before it is held in
memory (the declared Content-Length is checked first, then what actually arrives)."""

from __future__ import annotations

from fastapi import Request

from pacsfhir.errors import PayloadTooLarge, UnsupportedMediaType


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower-cased."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_media_type(request: Request, accepted: tuple[str, ...], what: str) -> None:
    if media_type(request) not in accepted:
        raise UnsupportedMediaType(f"{what} takes {' or '.join(accepted)}")


async def bounded_body(request: Request, limit: int, what: str) -> bytes:
    """The whole body, at most ``limit`` bytes (``what`` names it in the error)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{what} of {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"{what} longer than {limit} bytes")
    return bytes(body)
