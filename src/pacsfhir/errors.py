"""The error tree. Each error knows its HTTP status and FHIR issue code; the API renders
them once, at the edge, as an OperationOutcome."""

from __future__ import annotations


class PacsFhirError(Exception):
    status: int = 500
    issue_code: str = "exception"
    expression: tuple[str, ...] = ()  # FHIRPath of the element at fault, when one is

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(PacsFhirError):
    issue_code = "invalid"


class BadRequest(PacsFhirError):
    status = 400
    issue_code = "invalid"


class InvalidSearchParameter(BadRequest):
    issue_code = "invalid"


class UnknownSearchParameter(BadRequest):
    issue_code = "not-supported"


class TooCostly(BadRequest):
    issue_code = "too-costly"


class Unauthorized(PacsFhirError):
    """401: no token, or one that is expired, revoked, malformed or not for us. Rendered
    with ``WWW-Authenticate: Bearer`` and the RFC 6750 ``error`` code."""

    status = 401
    issue_code = "login"

    def __init__(self, message: str, error: str | None = "invalid_token") -> None:
        super().__init__(message)
        self.error = error  # None: no token was sent (RFC 6750 3.1: no error code then)

    @property
    def www_authenticate(self) -> str:
        if self.error is None:
            return 'Bearer realm="pacsfhir"'
        description = self.message.replace('"', "'").replace("\\", "/")
        text = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in description)
        return f'Bearer realm="pacsfhir", error="{self.error}", error_description="{text}"'


class InvalidResource(BadRequest):
    """A resource in a request body that is not what it must be; ``expression`` names the
    element (``Patient.identifier[0].value``)."""

    issue_code = "invalid"

    def __init__(self, message: str, expression: str | None = None) -> None:
        super().__init__(message)
        self.expression = (expression,) if expression else ()


class Conflict(PacsFhirError):
    status = 409
    issue_code = "conflict"


class PreconditionFailed(PacsFhirError):
    status = 412
    issue_code = "conflict"


class Forbidden(PacsFhirError):
    status = 403
    issue_code = "forbidden"


class PayloadTooLarge(PacsFhirError):
    """413: a body, a part or a decoded image beyond a configured limit."""

    status = 413
    issue_code = "too-costly"


class NotFound(PacsFhirError):
    status = 404
    issue_code = "not-found"


class NotAcceptable(PacsFhirError):
    status = 406
    issue_code = "not-supported"


class UnsupportedMediaType(PacsFhirError):
    status = 415
    issue_code = "not-supported"


class MethodNotAllowed(PacsFhirError):
    status = 405
    issue_code = "not-supported"


class ServiceUnavailable(PacsFhirError):
    """503: the request may succeed later (the index busy or unreachable, upstream work
    still running); ``retry_after`` seconds go in the Retry-After header."""

    status = 503
    issue_code = "transient"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadGateway(PacsFhirError):
    """502: an upstream PACS is down, refused us, or answered a failure."""

    status = 502
    issue_code = "transient"


class GatewayTimeout(PacsFhirError):
    """504: an upstream PACS did not answer in time."""

    status = 504
    issue_code = "timeout"


class RejectedInstance(PacsFhirError):
    """A DICOM instance that cannot be stored; ``reason`` is a short stable key."""

    status = 400
    issue_code = "invalid"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
