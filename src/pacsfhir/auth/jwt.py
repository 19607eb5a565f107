"""JWT access tokens checked locally (``PACSFHIR_AUTH=jwt``) with joserfc, against the
issuer's published keys.

Keys come from ``jwks_url``, or from the ``jwks_uri`` of
``{issuer}/.well-known/openid-configuration`` (whose ``issuer`` must be the configured one
exactly). Only asymmetric signatures are accepted (``ALGORITHMS``): never ``none``, never
an HMAC, so a public key can never be used as a shared secret; symmetric (``oct``) and
encryption keys in the JWKS are ignored.

Keys are fetched on first use and again after ``refresh_seconds``; a token whose ``kid``
is unknown triggers one refetch, at most once per ``refetch_interval`` (a key still
unknown after it, or inside that window, is 401). An issuer that cannot be reached when
keys are needed is 503, never a pass. One lock makes fetches single-flight; verifying
reads an immutable snapshot and takes no lock. A header ``typ`` other than an access
token's (``ACCESS_TOKEN_TYPES``) is refused.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, RSAKey

from pacsfhir.auth.claims import (
    RETRY_AFTER_SECONDS,
    TokenInfo,
    check_jwt_claims,
    check_token_syntax,
)
from pacsfhir.auth.remote import Connections, fetch_json, is_safe_url, unavailable
from pacsfhir.errors import ServiceUnavailable, Unauthorized

log = logging.getLogger(__name__)
# The header ``typ`` of an access token: RFC 9068's ``at+jwt``, or the plain ``JWT`` (or
# none) that many issuers still put on theirs. Any other type names another kind of JWT
# (an ID token from some issuers, a logout or security event token, a DPoP proof) that
# must never pass as an access token, even when its claims would.
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")
# strict_check_header off: an issuer's extra, non-critical header fields are not a reason to
# refuse (``crit`` is still honoured); the algorithm list is the one guard that matters.
_PublicKey = RSAKey | ECKey
_REGISTRY = jws.JWSRegistry(algorithms=ALGORITHMS, strict_check_header=False)


@dataclass(frozen=True)
class _Keys:
    by_kid: dict[str, _PublicKey]  # never mutated once published
    fetched_at: float  # monotonic


def parse_jwks(document: object) -> dict[str, _PublicKey]:
    """The usable signature keys of a JWKS document, by kid (a key without a kid is known
    by its RFC 7638 thumbprint). Garbage is ServiceUnavailable."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise unavailable("JWKS answer has no 'keys' list")
    keys: dict[str, _PublicKey] = {}
    for data in document["keys"]:
        if not isinstance(data, dict) or data.get("kty") not in ("RSA", "EC"):
            continue
        if data.get("use", "sig") != "sig":
            continue
        try:
            key = JWKRegistry.import_key(data)
        except (JoseError, ValueError, TypeError):
            log.warning("JWKS key %r could not be imported; ignored", data.get("kid"))
            continue
        if isinstance(key, RSAKey | ECKey) and not key.is_private:
            keys[key.kid or key.thumbprint()] = key
    return keys


class JwtVerifier:
    def __init__(
        self,
        issuer: str,
        audiences: Sequence[str],
        jwks_url: str | None = None,
        *,
        refresh_seconds: float = 3600.0,
        refetch_interval: float = 30.0,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audiences = tuple(audiences)
        self._jwks_url = jwks_url or None
        self._refresh = refresh_seconds
        self._refetch_interval = refetch_interval
        self._connections = Connections(client)
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._keys: _Keys | None = None
        self._failed_at = -float("inf")  # monotonic time of the last failed fetch
        self.fetches = 0  # JWKS fetches made, for tests and the bench

    def close(self) -> None:
        self._connections.close()

    def verify(self, token: str) -> TokenInfo:
        check_token_syntax(token)
        try:
            signed = jws.extract_compact(token.encode("ascii"), registry=_REGISTRY)
            header = signed.headers()
        except (JoseError, ValueError, TypeError):
            raise Unauthorized("token is not a JWS compact serialization") from None
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES):
            raise Unauthorized(f"token type {str(typ)[:24]!r} is not an access token")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthorized(f"token algorithm {str(alg)[:16]!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("token kid is not a string")
        key = self._key(kid)
        try:
            valid = jws.validate_compact(signed, key, registry=_REGISTRY)
        except (JoseError, ValueError, TypeError):
            valid = False
        if not valid:
            raise Unauthorized("token signature is not valid")
        try:
            claims = json.loads(signed.payload)
        except ValueError:
            raise Unauthorized("token payload is not JSON") from None
        if not isinstance(claims, dict):
            raise Unauthorized("token payload is not a JSON object")
        return check_jwt_claims(
            claims, issuer=self.issuer, audiences=self.audiences, now=self._now()
        )

    def _key(self, kid: str | None) -> _PublicKey:
        keys = self._current()
        key = self._pick(keys, kid)
        if key is not None:
            return key
        with self._lock:
            keys = self._keys or keys
            key = self._pick(keys, kid)  # another thread may have refetched meanwhile
            if key is None and self._clock() - keys.fetched_at >= self._refetch_interval:
                keys = self._fetch()
                key = self._pick(keys, kid)
        if key is None:
            raise Unauthorized("token signed with a key the issuer does not publish")
        return key

    @staticmethod
    def _pick(keys: _Keys, kid: str | None) -> _PublicKey | None:
        if kid is None:  # no kid: only unambiguous with a single published key
            return next(iter(keys.by_kid.values())) if len(keys.by_kid) == 1 else None
        return keys.by_kid.get(kid)

    def _current(self) -> _Keys:
        keys = self._keys
        if keys is not None and self._clock() - keys.fetched_at < self._refresh:
            return keys
        with self._lock:
            keys = self._keys
            if keys is not None and self._clock() - keys.fetched_at < self._refresh:
                return keys
            return self._fetch()

    def _fetch(self) -> _Keys:
        """Fetch the JWKS (the caller holds the lock) and publish it. After a failure, the
        next RETRY_AFTER_SECONDS answer 503 at once: an issuer that is down is not asked
        again by every waiting request."""
        if self._clock() - self._failed_at < RETRY_AFTER_SECONDS:
            raise unavailable("token issuer unreachable")
        self.fetches += 1
        try:
            document = fetch_json(self._connections.client, "JWKS", "GET", self._jwks_uri())
            keys = _Keys(parse_jwks(document), self._clock())
        except ServiceUnavailable:
            self._failed_at = self._clock()
            raise
        self._keys = keys
        return keys

    def _jwks_uri(self) -> str:
        if self._jwks_url is None:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            config = fetch_json(self._connections.client, "OpenID discovery", "GET", url)
            if not isinstance(config, dict) or config.get("issuer") != self.issuer:
                raise unavailable("OpenID discovery document names another issuer")
            jwks_uri = config.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not is_safe_url(jwks_uri):
                raise unavailable("OpenID discovery document has no jwks_uri")
            self._jwks_url = jwks_uri
        return self._jwks_url
