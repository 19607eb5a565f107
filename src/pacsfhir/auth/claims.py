"""What a checked token says (``TokenInfo``), and the pure checks that produce it from a
JWT's verified claims or from an RFC 7662 introspection answer (no I/O, no clock: ``now``
is passed in).

Refusals are ``errors.Unauthorized`` (401, ``invalid_token``). An introspection answer
that is not an answer at all (no boolean ``active``, a field of the wrong type) is
``errors.ServiceUnavailable``: the token may be fine, the endpoint is not, and access is
never granted on a garbled answer.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pacsfhir.errors import ServiceUnavailable, Unauthorized

LEEWAY_SECONDS = 60  # clock skew allowed on nbf and iat (never on exp)
MAX_TOKEN_LENGTH = 16_384
RETRY_AFTER_SECONDS = 5
# RFC 6750 2.1: b64token
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class TokenInfo:
    subject: str | None
    client_id: str | None
    scope: str  # raw space-separated scope string
    patient: str | None  # SMART launch patient
    fhir_user: str | None  # "fhirUser", kept for the audit
    expires_at: float | None  # epoch seconds
    issuer: str | None


def check_token_syntax(token: str) -> None:
    """A bearer token must be an RFC 6750 b64token of sane length before anyone looks it up."""
    if not token:
        raise Unauthorized("empty bearer token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("bearer token too long")
    if _B64TOKEN.fullmatch(token) is None:
        raise Unauthorized("bearer token has characters outside RFC 6750 b64token")


def _is_time(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)  # NaN would never expire
    )


def _string(claims: Mapping[str, Any], name: str, fail: Callable[[str], Exception]) -> str | None:
    value = claims.get(name)
    if value is None or isinstance(value, str):
        return value
    raise fail(f"claim {name!r} is not a string")


def _audience_ok(aud: object, audiences: Sequence[str]) -> bool:
    values = [aud] if isinstance(aud, str) else aud
    return isinstance(values, list) and any(isinstance(v, str) and v in audiences for v in values)


def _scope(claims: Mapping[str, Any], fail: Callable[[str], Exception]) -> str:
    """``scope`` as RFC 9068 / 7662 send it; ``scp`` (a list, as some issuers send it)
    when there is no ``scope``."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return scope
    if scope is None:
        scp = claims.get("scp")
        if scp is None:
            return ""
        if isinstance(scp, str):
            return scp
        if isinstance(scp, list) and all(isinstance(s, str) for s in scp):
            return " ".join(scp)
    raise fail("claim 'scope' is not a string")


def _info(
    claims: Mapping[str, Any], fail: Callable[[str], Exception], expires_at: float | None
) -> TokenInfo:
    client_id = _string(claims, "client_id", fail)
    if client_id is None:
        client_id = _string(claims, "azp", fail)
    return TokenInfo(
        subject=_string(claims, "sub", fail),
        client_id=client_id,
        scope=_scope(claims, fail),
        patient=_string(claims, "patient", fail),
        fhir_user=_string(claims, "fhirUser", fail),
        expires_at=expires_at,
        issuer=_string(claims, "iss", fail),
    )


def _check_times(claims: Mapping[str, Any], now: float, exp_required: bool) -> float | None:
    exp = claims.get("exp")
    if exp is None:
        if exp_required:
            raise Unauthorized("token has no exp")
    elif not _is_time(exp):
        raise Unauthorized("token exp is not a number")
    elif exp <= now:
        raise Unauthorized("token expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_time(nbf) or nbf > now + LEEWAY_SECONDS):
        raise Unauthorized("token not yet valid (nbf)")
    iat = claims.get("iat")
    if iat is not None and (not _is_time(iat) or iat > now + LEEWAY_SECONDS):
        raise Unauthorized("token issued in the future (iat)")
    return None if exp is None else float(exp)


def check_jwt_claims(
    claims: Mapping[str, Any], *, issuer: str, audiences: Sequence[str], now: float
) -> TokenInfo:
    """The claims of a JWT whose signature was verified: ``iss`` exactly the issuer,
    ``aud`` (string or list) holding one of ``audiences``, ``exp`` required and in the
    future, ``nbf`` and ``iat`` not beyond ``now`` + leeway."""
    if claims.get("iss") != issuer:
        raise Unauthorized("token issuer is not the configured issuer")
    if not _audience_ok(claims.get("aud"), audiences):
        raise Unauthorized("token audience is not this server")
    expires_at = _check_times(claims, now, exp_required=True)
    return _info(claims, Unauthorized, expires_at)


def check_introspection_answer(
    answer: object, *, issuer: str | None, audiences: Sequence[str], now: float
) -> TokenInfo | None:
    """An RFC 7662 answer: None when ``active`` is false, TokenInfo when active and for
    us. ``aud`` is checked when the answer has one, ``iss`` when an issuer is configured.
    A garbled answer is ServiceUnavailable (see the module)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
        raise ServiceUnavailable(
            "introspection answer has no boolean 'active'", retry_after=RETRY_AFTER_SECONDS
        )
    if not answer["active"]:
        return None

    def garbled(message: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"introspection answer: {message}", RETRY_AFTER_SECONDS)

    info = _info(answer, garbled, None)  # type errors first: a garbled answer is not a 401
    token_type = _string(answer, "token_type", garbled)
    if token_type is not None and "refresh" in token_type.lower():
        raise Unauthorized("a refresh token is not an access token")
    if issuer and answer.get("iss") != issuer:
        raise Unauthorized("token issuer is not the configured issuer")
    if answer.get("aud") is not None and not _audience_ok(answer["aud"], audiences):
        raise Unauthorized("token audience is not this server")
    expires_at = _check_times(answer, now, exp_required=False)
    return dataclasses.replace(info, expires_at=expires_at)
