"""Checks every request passes before routing, whatever the route.

A NUL character has no place in a FHIR id, a UID, a search value or a DICOM text value
(PS3.5 6.1), and PostgreSQL text cannot hold one: left to reach a query it failed there
(500). A path or query string that percent-decodes to one is 400 here, once, for every
route present and future; the ``POST _search`` form body is checked where it is parsed.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from pacsfhir.api.responses import error_response

NUL_MESSAGE = "a NUL character (%00) is not allowed in a request"


def holds_nul(raw: bytes) -> bool:
    """Whether a raw (still percent-encoded) path or query holds a NUL once decoded."""
    return b"\0" in raw or (b"%00" in raw and b"\0" in unquote_to_bytes(raw))


class RejectNul:
    """ASGI middleware: 400 for a path or query string holding a NUL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
            if holds_nul(path) or holds_nul(scope.get("query_string", b"")):
                response = error_response(Request(scope), 400, "invalid", NUL_MESSAGE)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
