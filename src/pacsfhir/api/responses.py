"""FHIR responses: JSON rendering, format negotiation, and errors as OperationOutcome."""

from __future__ import annotations

import json
from collections.abc import Sequence
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from pacsfhir.api.context import is_dicomweb
from pacsfhir.errors import NotAcceptable, PacsFhirError, ServiceUnavailable, Unauthorized
from pacsfhir.mapping.bundle import operation_outcome
from pacsfhir.vocabulary.dates import fhir_period, from_micros

FHIR_JSON = "application/fhir+json"
_JSON_FORMATS = {"json", "application/json", FHIR_JSON, "application/json+fhir"}
_ACCEPTABLE = {FHIR_JSON, "application/json", "application/json+fhir", "*/*", "application/*"}


class FhirResponse(Response):
    media_type = FHIR_JSON + "; charset=utf-8"

    def __init__(
        self,
        content: dict[str, Any],
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        pretty: bool = False,
    ) -> None:
        self.pretty = pretty
        super().__init__(content, status_code, headers)

    def render(self, content: Any) -> bytes:
        if self.pretty:
            return json.dumps(content, ensure_ascii=False, indent=2).encode()
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def check_format(request: Request) -> None:
    """JSON is the one format served: ``_format`` or Accept must allow it, else 406."""
    requested = request.query_params.get("_format")
    if requested is not None:
        if requested.split(";")[0].strip() not in _JSON_FORMATS:
            raise NotAcceptable(f"_format={requested} is not supported; use json")
        return
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        if "q=0" in params.replace(" ", "") and "q=0." not in params.replace(" ", ""):
            continue
        if media.strip().lower() in _ACCEPTABLE:
            return
    raise NotAcceptable(f"Accept: {accept} cannot be served; this server speaks {FHIR_JSON}")


def outcome_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    expression: Sequence[str] = (),
) -> FhirResponse:
    severity = "error" if status >= 400 else "information"
    outcome = operation_outcome(severity, code, message, expression)
    return FhirResponse(outcome, status_code=status, headers=headers)


# Printable ASCII kept as it is in a header's quoted-string, but for the quote, the
# backslash (quoted-pair) and the percent sign (the escape itself).
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\%')


def header_text(message: str, limit: int = 500) -> str:
    """``message`` as the text of a Warning header (RFC 9110 quoted-string, Latin-1 at
    most): anything but printable ASCII is percent-encoded as UTF-8, so a reason that
    quotes a request's non-ASCII or control characters stays readable and encodable."""
    return quote(message[:limit], safe=_HEADER_SAFE)


def dicomweb_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """PS3.18 errors: the status says it; the reason goes in a Warning header and body."""
    return Response(
        json.dumps({"status": status, "message": message}),
        status_code=status,
        media_type="application/json",
        headers={**(headers or {}), "Warning": f'299 pacsfhir "{header_text(message)}"'},
    )


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    expression: Sequence[str] = (),
) -> Response:
    """Render an error once, at the edge: PS3.18-style on DICOMweb routes, else FHIR."""
    if is_dicomweb(request):
        return dicomweb_error(status, message, headers)
    return outcome_response(status, code, message, headers, expression)


async def pacsfhir_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PacsFhirError)
    headers = None
    if isinstance(exc, ServiceUnavailable):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": exc.www_authenticate}
    return error_response(request, exc.status, exc.issue_code, exc.message, headers, exc.expression)


async def index_unavailable_handler(request: Request, exc: Exception) -> Response:
    """The index database refused or timed out (a writer's lock held past its wait, the
    server down or restarting): transient, so 503 with Retry-After, never a 500."""
    busy = ServiceUnavailable(f"the index database is busy or unavailable ({type(exc).__name__})")
    return await pacsfhir_error_handler(request, busy)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route, wrong method); their headers (e.g. the ``Allow``
    of a 405, which RFC 9110 15.5.6 requires) are kept."""
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error_response(request, exc.status_code, code, str(exc.detail), headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's own 405 names only the
    first route whose path matches, though GET and POST of one path are often two)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    return error_response(request, 400, "invalid", f"invalid request: {exc}")


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    return error_response(request, 500, "exception", f"internal error ({type(exc).__name__})")


EXCEPTION_HANDLERS = {
    PacsFhirError: pacsfhir_error_handler,
    OperationalError: index_unavailable_handler,
    StarletteHTTPException: http_error_handler,
    RequestValidationError: validation_error_handler,
    Exception: unexpected_error_handler,
}


def pretty_requested(request: Request) -> bool:
    return request.query_params.get("_pretty") == "true"


def version_headers(resource: dict[str, Any]) -> dict[str, str]:
    """ETag and Last-Modified of a resource, from its meta."""
    meta = resource.get("meta", {})
    headers = {"ETag": f'W/"{meta.get("versionId", "1")}"'}
    if "lastUpdated" in meta:
        period = fhir_period(meta["lastUpdated"])
        if period is not None:
            moment = from_micros(period.low)
            headers["Last-Modified"] = format_datetime(moment, usegmt=True)
    return headers


def read_response(request: Request, resource: dict[str, Any]) -> Response:
    headers = version_headers(resource)
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return FhirResponse(resource, headers=headers, pretty=pretty_requested(request))
