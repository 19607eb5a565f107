"""The EHR's Patient resources, read with SMART Backend Services (``PACSFHIR_EHR_*``).

``EhrPatients.fetch(id)`` is ``GET {ehr_fhir_url}/Patient/{id}`` with a bearer token from
the EHR's token endpoint (``ehr_token_url``, or the ``token_endpoint`` of
``{ehr_fhir_url}/.well-known/smart-configuration``): the client_credentials grant,
authenticated by a private_key_jwt client assertion (RFC 7523) signed with our key, RS384
for an RSA key (2048 bits or more), ES384 for an EC P-384 key, as SMART App Launch 2
"Backend Services" asks.

The access token is kept until ``expires_in`` (300 s when absent) less a margin, and one
lock makes concurrent fetches share one token request; a 401 from the EHR drops it and
the read is tried once more with a new one. A token endpoint that fails is not asked
again for ``RETRY_AFTER_SECONDS`` (``EhrUnavailable`` at once), so an endpoint that is
down does not hold every waiting thread for a timeout. Tokens, keys, assertions, patient
ids and resources never reach the log: only endpoints and status codes do.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from pacsfhir.auth.claims import RETRY_AFTER_SECONDS
from pacsfhir.auth.remote import MAX_ANSWER_BYTES, Connections, check_url, is_safe_url
from pacsfhir.errors import ConfigurationError
from pacsfhir.settings import Settings

log = logging.getLogger(__name__)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SECONDS = 240  # SMART: exp no more than five minutes ahead; room for clock skew
DEFAULT_TOKEN_SECONDS = 300  # an access token answered without expires_in
EXPIRY_MARGIN_SECONDS = 30.0  # a token is renewed this long before it expires (at most)
MIN_RSA_BITS = 2048
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # what may follow "Bearer " in a header


class EhrUnavailable(Exception):
    """The EHR or its token endpoint is down, slow, or answers garbage, or refuses our
    credentials: no answer about the patient either way."""


class AssertionSigner:
    """Our private key, and the client assertions it signs."""

    def __init__(self, key: RSAKey | ECKey, kid: str = "") -> None:
        self.key = key
        self.alg = "RS384" if isinstance(key, RSAKey) else "ES384"
        self.kid = kid or key.thumbprint()  # RFC 7638, SHA-256

    @classmethod
    def from_pem_file(cls, path: str, kid: str = "") -> AssertionSigner:
        """ConfigurationError when the file cannot be read, is not an unencrypted PEM
        private key, or holds a key that is neither RSA (2048 bits or more) nor EC P-384."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read ehr_private_key {path}: {exc.strerror}"
            ) from None
        try:
            private = load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigurationError(
                f"ehr_private_key {path} is not an unencrypted PEM private key"
            ) from None
        if isinstance(private, rsa.RSAPrivateKey):
            if private.key_size < MIN_RSA_BITS:
                raise ConfigurationError(
                    f"ehr_private_key {path}: an RSA key of {private.key_size} bits; "
                    f"RS384 needs {MIN_RSA_BITS} or more"
                )
            return cls(RSAKey.import_key(private), kid)
        if isinstance(private, ec.EllipticCurvePrivateKey):
            if not isinstance(private.curve, ec.SECP384R1):
                raise ConfigurationError(
                    f"ehr_private_key {path}: an EC key on {private.curve.name}; "
                    "ES384 needs P-384 (secp384r1)"
                )
            return cls(ECKey.import_key(private), kid)
        raise ConfigurationError(
            f"ehr_private_key {path}: a {type(private).__name__}; "
            "SMART Backend Services needs RSA (RS384) or EC P-384 (ES384)"
        )

    def public_jwks(self) -> dict[str, Any]:
        """The JWKS to register at the EHR's authorization server."""
        public = {**self.key.as_dict(private=False), "kid": self.kid, "alg": self.alg}
        return {"keys": [{**public, "use": "sig"}]}

    def sign(self, client_id: str, audience: str, now: float | None = None) -> str:
        """A fresh client assertion for the token endpoint ``audience``."""
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": issued,
            "exp": issued + ASSERTION_SECONDS,
            "jti": secrets.token_urlsafe(24),
        }
        header = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.key, algorithms=[self.alg])


@dataclass(frozen=True)
class _Token:
    value: str
    until: float  # clock time after which it is not used


class EhrPatients:
    def __init__(
        self,
        settings: Settings,
        connections: Connections | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.ehr_fhir_url:
            raise ConfigurationError("the EHR look-up needs ehr_fhir_url")
        self.base_url = check_url("ehr_fhir_url", settings.ehr_fhir_url).rstrip("/")
        missing = [n for n in ("ehr_client_id", "ehr_private_key") if not getattr(settings, n)]
        if missing:
            raise ConfigurationError(f"ehr_fhir_url needs {', '.join(missing)}")
        self._token_url = settings.ehr_token_url or None
        if self._token_url:
            check_url("ehr_token_url", self._token_url)
        self.scope = " ".join(settings.ehr_scope.split())
        if not self.scope:
            raise ConfigurationError("ehr_scope must not be empty")
        self.client_id = settings.ehr_client_id
        self.signer = AssertionSigner.from_pem_file(settings.ehr_private_key, settings.ehr_key_id)
        self._connections = connections or Connections()
        self._clock = clock
        self._lock = threading.Lock()  # held while a token is fetched
        self._token: _Token | None = None
        self._failed_at = -float("inf")  # clock time of the last failed token request
        self.token_requests = 0  # for tests and the bench

    @classmethod
    def from_settings(cls, settings: Settings) -> EhrPatients | None:
        """None when ``ehr_fhir_url`` is empty (no look-up); ConfigurationError when the
        settings are incomplete or the key unusable. No network call is made here."""
        if not settings.ehr_fhir_url:
            return None
        return cls(settings)

    def close(self) -> None:
        self._connections.close()

    def fetch(self, patient_id: str) -> dict[str, Any] | None:
        """The EHR's Patient ``patient_id`` (resourceType, id and identifier checked), or
        None when the EHR answers 404 or 410 (or the id cannot name a resource: empty,
        ``.`` or ``..``). EhrUnavailable for anything else."""
        if patient_id in ("", ".", ".."):
            return None
        url = f"{self.base_url}/Patient/{quote(patient_id, safe='')}"
        where = f"{self.base_url}/Patient"
        status, body = 0, b""
        for attempt in (1, 2):
            token = self._access_token()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
            status, body = self._call("EHR Patient read", where, "GET", url, headers=headers)
            if status != 401 or attempt == 2:
                break
            self._forget(token)  # expired or revoked before we thought: once more
        if status in (404, 410):
            return None
        if status != 200:
            log.warning("EHR Patient read at %s answered %d", where, status)
            raise EhrUnavailable(f"EHR Patient read answered {status}")
        return _checked_patient(body, patient_id)

    # -- the access token --------------------------------------------------------------

    def _access_token(self) -> str:
        token = self._token
        if token is not None and self._clock() < token.until:
            return token.value
        with self._lock:
            token = self._token  # another thread may have fetched one meanwhile
            if token is not None and self._clock() < token.until:
                return token.value
            if self._clock() - self._failed_at < RETRY_AFTER_SECONDS:
                raise EhrUnavailable("EHR token endpoint failed a moment ago")
            try:
                token = self._request_token()
            except EhrUnavailable:
                self._failed_at = self._clock()
                raise
            self._token = token
            return token.value

    def _forget(self, value: str) -> None:
        with self._lock:
            if self._token is not None and self._token.value == value:
                self._token = None

    def _request_token(self) -> _Token:
        """One client_credentials request (the caller holds the lock)."""
        url = self._token_url or self._discover_token_url()
        started = self._clock()
        self.token_requests += 1
        data = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.signer.sign(self.client_id, url),
        }
        headers = {"Accept": "application/json"}
        status, body = self._call("EHR token request", url, "POST", url, data=data, headers=headers)
        answer = _json_object(body)
        if status != 200:
            error = answer.get("error") if answer else None
            code = error[:40] if isinstance(error, str) else "-"
            log.warning("EHR token request at %s answered %d (error %r)", url, status, code)
            raise EhrUnavailable(f"EHR token endpoint answered {status}")
        if answer is None:
            raise EhrUnavailable("EHR token endpoint answered something that is not a JSON object")
        value = answer.get("access_token")
        if not isinstance(value, str) or not _TOKEN.fullmatch(value):
            raise EhrUnavailable("EHR token endpoint answered no usable access_token")
        token_type = answer.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise EhrUnavailable("EHR token endpoint answered a token that is not a bearer token")
        lifetime = answer.get("expires_in", DEFAULT_TOKEN_SECONDS)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            raise EhrUnavailable("EHR token endpoint answered a bad expires_in")
        margin = min(EXPIRY_MARGIN_SECONDS, lifetime / 4)
        return _Token(value, started + lifetime - margin)

    def _discover_token_url(self) -> str:
        url = f"{self.base_url}/.well-known/smart-configuration"
        status, body = self._call("EHR SMART configuration", url, "GET", url)
        document = _json_object(body)
        if status != 200 or document is None:
            shape = "a JSON object" if document is not None else "no JSON object"
            log.warning("EHR SMART configuration at %s answered %d, %s", url, status, shape)
            raise EhrUnavailable(f"EHR SMART configuration answered {status}, {shape}")
        token_url = document.get("token_endpoint")
        if not isinstance(token_url, str) or not is_safe_url(token_url):
            raise EhrUnavailable("EHR SMART configuration has no usable token_endpoint")
        self._token_url = token_url
        return token_url

    # -- HTTP --------------------------------------------------------------------------

    def _call(
        self, what: str, where: str, method: str, url: str, **kwargs: Any
    ) -> tuple[int, bytes]:
        """Status and body (at most MAX_ANSWER_BYTES) of one request; EhrUnavailable when
        no answer came. ``where`` is what the log may say of ``url``."""
        try:
            with self._connections.client.stream(method, url, **kwargs) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        log.warning("%s at %s answered too much", what, where)
                        raise EhrUnavailable(f"{what} answer too large")
                return response.status_code, bytes(body)
        except httpx.HTTPError as exc:
            log.warning("%s at %s failed: %s", what, where, type(exc).__name__)
            raise EhrUnavailable(f"{what} failed: {type(exc).__name__}") from None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _checked_patient(body: bytes, patient_id: str) -> dict[str, Any]:
    resource = _json_object(body)
    if resource is None or resource.get("resourceType") != "Patient":
        raise EhrUnavailable("EHR answered a Patient read with something that is not a Patient")
    if resource.get("id") != patient_id:
        raise EhrUnavailable("EHR answered a Patient read with another Patient")
    identifiers = resource.get("identifier")
    if identifiers is not None and not (
        isinstance(identifiers, list) and all(isinstance(i, dict) for i in identifiers)
    ):
        raise EhrUnavailable("EHR Patient's identifier is not a list of objects")
    return resource
