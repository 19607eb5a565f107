"""Opaque (or any) access tokens checked by the authorization server
(``PACSFHIR_AUTH=introspection``, RFC 7662).

One POST ``token=...&token_type_hint=access_token`` with HTTP Basic client credentials
per token and cache period: active answers are reused until the earlier of their ``exp``
and ``cache_seconds``, inactive ones for ``INACTIVE_SECONDS``; the cache is keyed by a
SHA-256 digest of the token (raw tokens are never kept), bounded (LRU), and identical
concurrent look-ups share one call. Refusals (inactive, not for us) are kept
``INACTIVE_SECONDS`` too, so a replayed bad token is not a call per request. An endpoint
that is down, slow, or answers anything but a 200 JSON object with a boolean ``active``
is 503 with Retry-After, never a pass.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence

import httpx

from pacsfhir.auth.cache import SingleFlightCache
from pacsfhir.auth.claims import (
    RETRY_AFTER_SECONDS,
    TokenInfo,
    check_introspection_answer,
    check_token_syntax,
)
from pacsfhir.auth.remote import (
    TIMEOUT_SECONDS,
    Connections,
    IssuerUnreachable,
    fetch_json,
    unavailable,
)
from pacsfhir.errors import Unauthorized

INACTIVE_SECONDS = 10.0
MAX_ENTRIES = 10_000


class IntrospectionVerifier:
    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        audiences: Sequence[str],
        *,
        issuer: str | None = None,
        cache_seconds: float = 300.0,
        max_entries: int = MAX_ENTRIES,
        client: httpx.Client | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.audiences = tuple(audiences)
        self.issuer = issuer or None
        self._auth = httpx.BasicAuth(client_id, client_secret)
        self._cache_seconds = cache_seconds
        self._connections = Connections(client)
        self._now = now
        self._cache: SingleFlightCache[TokenInfo | str] = SingleFlightCache(
            max_entries, wait_seconds=2 * TIMEOUT_SECONDS + 1
        )
        self._unreachable_at = -float("inf")
        self._calls_lock = threading.Lock()
        self.calls = 0  # introspection calls made, for tests and the bench

    def close(self) -> None:
        self._connections.close()

    def verify(self, token: str) -> TokenInfo:
        check_token_syntax(token)
        key = hashlib.sha256(token.encode("ascii")).digest()
        try:
            info = self._cache.get(key, lambda: self._introspect(token), self._now)
        except TimeoutError:
            raise unavailable("token introspection did not answer in time") from None
        if isinstance(info, str):
            raise Unauthorized(info)
        if info.expires_at is not None and info.expires_at <= self._now():
            raise Unauthorized("token expired")
        return info

    def _introspect(self, token: str) -> tuple[TokenInfo | str, float]:
        """One call: the answer (TokenInfo, or why the token is refused) and until when it
        may be reused. Refusals are kept ``INACTIVE_SECONDS``; failures are not kept, but
        an endpoint that did not answer at all is not asked again for
        ``RETRY_AFTER_SECONDS`` (503 at once), so a hung endpoint does not hold a worker
        thread per request."""
        if self._now() - self._unreachable_at < RETRY_AFTER_SECONDS:
            raise unavailable("token introspection unreachable")
        with self._calls_lock:
            self.calls += 1
        try:
            answer = fetch_json(
                self._connections.client,
                "token introspection",
                "POST",
                self.url,
                data={"token": token, "token_type_hint": "access_token"},
                auth=self._auth,
                headers={"Accept": "application/json"},
            )
        except IssuerUnreachable:
            self._unreachable_at = self._now()
            raise
        now = self._now()
        try:
            info = check_introspection_answer(
                answer, issuer=self.issuer, audiences=self.audiences, now=now
            )
        except Unauthorized as refused:
            return refused.message, now + INACTIVE_SECONDS
        if info is None:
            return "token is not active", now + INACTIVE_SECONDS
        until = now + self._cache_seconds
        if info.expires_at is not None:
            until = min(until, info.expires_at)
        return info, until
