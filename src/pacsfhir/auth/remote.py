"""HTTP calls to the authorization server (discovery, JWKS, introspection): one JSON
answer or ``ServiceUnavailable``. Tokens and secrets never reach the log."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

import httpx

from pacsfhir.auth.claims import RETRY_AFTER_SECONDS
from pacsfhir.errors import ConfigurationError, ServiceUnavailable

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 5.0
MAX_ANSWER_BYTES = 1 << 20
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def new_client(timeout: float = TIMEOUT_SECONDS) -> httpx.Client:
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)


class Connections:
    """The HTTP client a verifier talks to its authorization server through. ``close``
    (an app's shutdown) closes it; the next use opens a new one, as an app whose lifespan
    runs again (a test client entered twice) needs."""

    def __init__(self, client: httpx.Client | None = None) -> None:
        self._client = client or new_client()

    @property
    def client(self) -> httpx.Client:
        if self._client.is_closed:
            self._client = new_client()
        return self._client

    def close(self) -> None:
        self._client.close()


def is_safe_url(url: str) -> bool:
    """https, or http on loopback only: keys and tokens never cross a network in clear."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)


def check_url(name: str, url: str) -> str:
    """An authorization-server URL from the settings (see ``is_safe_url``)."""
    if not is_safe_url(url):
        raise ConfigurationError(
            f"{name} must be an https URL (http on loopback only), not {url!r}"
        )
    return url


class IssuerUnreachable(ServiceUnavailable):
    """503 because no answer came at all (refused, reset, timed out), as opposed to a
    bad answer: the caller may stop asking for a few seconds."""


def unavailable(what: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"{what}; try again", retry_after=RETRY_AFTER_SECONDS)


def fetch_json(client: httpx.Client, what: str, method: str, url: str, **kwargs: Any) -> object:
    """The JSON body of a 200 answer; ServiceUnavailable for anything else (down, timeout,
    another status, not JSON, too large)."""
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        log.warning("%s at %s failed: %s", what, url, type(exc).__name__)
        raise IssuerUnreachable(f"{what} unreachable; try again", RETRY_AFTER_SECONDS) from None
    except httpx.HTTPError as exc:
        log.warning("%s at %s failed: %s", what, url, type(exc).__name__)
        raise unavailable(f"{what} failed") from None
    if response.status_code != 200:
        log.warning("%s at %s answered %d", what, url, response.status_code)
        raise unavailable(f"{what} answered {response.status_code}")
    if len(response.content) > MAX_ANSWER_BYTES:
        raise unavailable(f"{what} answer too large")
    try:
        return json.loads(response.content)
    except ValueError:
        log.warning("%s at %s answered something that is not JSON", what, url)
        raise unavailable(f"{what} answered something that is not JSON") from None
