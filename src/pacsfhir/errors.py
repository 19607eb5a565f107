"""The error tree. Each error knows its HTTP status and FHIR issue code; the API renders
them once, at the edge, as an OperationOutcome."""

from __future__ import annotations


class PacsFhirError(Exception):
    status: int = 500
    issue_code: str = "exception"

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


class RejectedInstance(PacsFhirError):
    """A DICOM instance that cannot be stored; ``reason`` is a short stable key."""

    status = 400
    issue_code = "invalid"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
