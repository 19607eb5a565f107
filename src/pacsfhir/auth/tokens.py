"""Token checking as the request context sees it: a ``TokenVerifier`` turns a bearer token
into ``TokenInfo`` or raises ``errors.Unauthorized`` (401) / ``errors.ServiceUnavailable``
(503, the authorization server unreachable: never a pass), and ``verifier_from_settings``
builds the one ``PACSFHIR_AUTH`` asks for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pacsfhir.auth.claims import TokenInfo
from pacsfhir.auth.introspection import IntrospectionVerifier
from pacsfhir.auth.jwt import JwtVerifier
from pacsfhir.auth.remote import check_url
from pacsfhir.errors import ConfigurationError
from pacsfhir.settings import Settings

__all__ = ["TokenInfo", "TokenVerifier", "accepted_audiences", "verifier_from_settings"]


class TokenVerifier(Protocol):
    def verify(self, token: str) -> TokenInfo:
        """Synchronous (blocking I/O on a cache miss): call it from a worker thread."""
        ...


def accepted_audiences(settings: Settings, audiences: Sequence[str]) -> tuple[str, ...]:
    """``audiences`` (the caller's: the FHIR base URL and the like) followed by the
    comma-separated ``jwt_audience`` setting, without blanks or repeats."""
    configured = (a.strip() for a in settings.jwt_audience.split(","))
    return tuple(dict.fromkeys(a for a in (*audiences, *configured) if a))


def verifier_from_settings(
    settings: Settings, audiences: Sequence[str]
) -> JwtVerifier | IntrospectionVerifier | None:
    """None for auth=none; JwtVerifier or IntrospectionVerifier otherwise;
    ConfigurationError when the settings for the chosen mode are missing or malformed.
    No network call is made here: keys and answers are fetched on first use."""
    accepted = accepted_audiences(settings, audiences)
    if settings.auth == "none":
        return None
    if settings.auth == "jwt":
        if not settings.jwt_issuer:
            raise ConfigurationError("auth=jwt needs jwt_issuer")
        check_url("jwt_issuer", settings.jwt_issuer)
        if settings.jwks_url:
            check_url("jwks_url", settings.jwks_url)
        if not accepted:
            raise ConfigurationError("auth=jwt needs at least one accepted audience")
        return JwtVerifier(settings.jwt_issuer, accepted, settings.jwks_url or None)
    if settings.auth == "introspection":
        names = ("introspection_url", "introspection_client_id", "introspection_client_secret")
        missing = [name for name in names if not getattr(settings, name)]
        if missing:
            raise ConfigurationError(f"auth=introspection needs {', '.join(missing)}")
        check_url("introspection_url", settings.introspection_url)
        if settings.jwt_issuer:
            check_url("jwt_issuer", settings.jwt_issuer)
        if settings.token_cache_seconds < 0:
            raise ConfigurationError("token_cache_seconds must be 0 or more")
        return IntrospectionVerifier(
            settings.introspection_url,
            settings.introspection_client_id,
            settings.introspection_client_secret,
            accepted,
            issuer=settings.jwt_issuer or None,
            cache_seconds=settings.token_cache_seconds,
        )
    raise ConfigurationError(f"auth must be none, introspection or jwt, not {settings.auth!r}")
