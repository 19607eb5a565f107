"""A stand-in for an EHR's FHIR server, serving Patient resources: the ONE declared
stand-in of the EHR look-up tests (no real EHR runs in the suite). It is a real HTTP
server (Flask under werkzeug, in a thread, on a free loopback port) in front of a dict
of Patient resources, and it checks bearer tokens for real: each read introspects the
token at the test authorization server (``AuthServer``, as its introspection client)
and needs an active token whose scope grants Patient read (``system/Patient.rs``,
``system/Patient.read``, ``system/*.rs``...). It does not check the token's ``aud``
(the authorization server gives client_credentials tokens its default audience).

    with EhrFhirServer(auth_server) as ehr:
        ehr.add_patient({"resourceType": "Patient", "id": "p1"})
        client = register_backend_client(auth_server, tmp_path, kty="EC")
        patients = EhrPatients(client.settings(ehr))

The ``ehr_server`` fixture in tests/conftest.py is one of these per test.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey

from pacsfhir.settings import Settings
from tests.support.authserver import TIMEOUT, AuthServer
from tests.support.loopback import LoopbackServer

FHIR_JSON = "application/fhir+json"
# SMART v2 (system/Patient.rs, .r, .cruds...) and v1 (system/Patient.read, .*) read scopes
_READ_SCOPE = re.compile(r"system/(Patient|\*)\.(read|\*|c?ru?d?s?)")


def grants_patient_read(scope: str) -> bool:
    return any(_READ_SCOPE.fullmatch(s) for s in scope.split())


def outcome(code: str, text: str) -> dict[str, Any]:
    issue = {"severity": "error", "code": code, "diagnostics": text}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class EhrFhirServer(LoopbackServer):
    """``base_url`` is the FHIR base (``http://127.0.0.1:<port>/fhir``); ``patients``
    the resources by id; ``requests`` counts every request, ``patient_reads`` the
    Patient reads that got past the token check."""

    def __init__(self, auth: AuthServer, *, port: int = 0) -> None:
        self.auth = auth
        self.patients: dict[str, dict[str, Any]] = {}
        self.gone: set[str] = set()
        self.requests = 0
        self.patient_reads = 0
        self.fault: tuple[int, str, str] | None = None  # status, content type, body
        self.lock = threading.Lock()
        self._introspection = httpx.Client(timeout=TIMEOUT, trust_env=False)
        self.app = self._create_app()
        super().__init__(port)
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"

    # -- what it holds -----------------------------------------------------------------

    def add_patient(self, resource: dict[str, Any], *, under: str | None = None) -> None:
        """Serve ``resource`` at ``Patient/{under or resource['id']}`` (``under`` another
        id: an EHR answering with the wrong Patient)."""
        with self.lock:
            self.patients[under or str(resource["id"])] = dict(resource)

    def delete_patient(self, patient_id: str) -> None:
        """From now on ``Patient/{patient_id}`` is 410 Gone."""
        with self.lock:
            self.patients.pop(patient_id, None)
            self.gone.add(patient_id)

    @contextlib.contextmanager
    def answers(self, status: int, body: str, content_type: str = FHIR_JSON) -> Iterator[None]:
        """Inside, an authorized Patient read answers this instead (garbage, 500...)."""
        self.fault = (status, content_type, body)
        try:
            yield
        finally:
            self.fault = None

    # -- the app -----------------------------------------------------------------------

    def _create_app(self) -> flask.Flask:
        app = flask.Flask("pacsfhir-test-ehr")

        @app.before_request
        def count() -> None:
            with self.lock:
                self.requests += 1

        @app.get("/fhir/.well-known/smart-configuration")
        def smart_configuration() -> flask.Response:
            return flask.jsonify(
                {
                    "issuer": self.auth.issuer,
                    "token_endpoint": self.auth.token_url,
                    "grant_types_supported": ["client_credentials"],
                    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                    "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
                    "scopes_supported": ["system/Patient.rs"],
                    "capabilities": ["client-confidential-asymmetric"],
                }
            )

        @app.get("/fhir/Patient/<patient_id>")
        def read_patient(patient_id: str) -> flask.Response:
            refused = self._refusal(flask.request.headers.get("Authorization", ""))
            if refused is not None:
                return refused
            with self.lock:
                self.patient_reads += 1
                fault = self.fault
                resource = self.patients.get(patient_id)
                gone = patient_id in self.gone
            if fault is not None:
                status, content_type, body = fault
                return flask.Response(body, status=status, content_type=content_type)
            if resource is not None:
                return _fhir(resource, 200)
            if gone:
                return _fhir(outcome("deleted", "Patient deleted"), 410)
            return _fhir(outcome("not-found", "no such Patient"), 404)

        return app

    def _refusal(self, authorization: str) -> flask.Response | None:
        """None when the bearer token is active and grants Patient read (introspected at
        the authorization server); else the 401 or 403 answer."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _fhir(outcome("login", "bearer token required"), 401, 'Bearer realm="ehr"')
        answer = self._introspection.post(
            self.auth.introspection_url,
            data={"token": token, "token_type_hint": "access_token"},
            auth=(self.auth.introspection_client_id, self.auth.introspection_client_secret),
        )
        answer.raise_for_status()
        info = answer.json()
        if info.get("active") is not True:
            challenge = 'Bearer realm="ehr", error="invalid_token"'
            return _fhir(outcome("login", "token is not active"), 401, challenge)
        if not grants_patient_read(str(info.get("scope", ""))):
            challenge = 'Bearer realm="ehr", error="insufficient_scope"'
            return _fhir(outcome("forbidden", "scope does not grant Patient read"), 403, challenge)
        return None

    def __exit__(self, *_exc: object) -> None:
        super().__exit__()
        self._introspection.close()


def _fhir(resource: dict[str, Any], status: int, challenge: str | None = None) -> flask.Response:
    response = flask.Response(flask.json.dumps(resource), status=status, content_type=FHIR_JSON)
    if challenge is not None:
        response.headers["WWW-Authenticate"] = challenge
    return response


# -- the backend client pacsfhir is, registered at the authorization server ------------


@dataclass(frozen=True)
class BackendClient:
    """A SMART backend client registered at the authorization server: its id, and the
    PEM file of its private key (``key``, the same as a joserfc key)."""

    client_id: str
    key_path: Path
    key: RSAKey | ECKey

    @property
    def kid(self) -> str:
        return self.key.thumbprint()

    def settings(self, ehr: EhrFhirServer, **overrides: Any) -> Settings:
        """Settings for an ``EhrPatients`` reading from ``ehr`` as this client."""
        values: dict[str, Any] = {
            "ehr_fhir_url": ehr.base_url,
            "ehr_client_id": self.client_id,
            "ehr_private_key": str(self.key_path),
        }
        return Settings(**{**values, **overrides})


def write_private_key(path: Path, kty: str = "RSA", bits: int = 2048) -> Path:
    """A new private key as unencrypted PKCS#8 PEM: RSA of ``bits``, or EC P-384."""
    private: Any
    if kty == "RSA":
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif kty == "EC":
        private = ec.generate_private_key(ec.SECP384R1())
    else:
        raise ValueError(f"kty {kty!r}")
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def register_backend_client(
    auth: AuthServer,
    key_dir: Path,
    *,
    kty: str = "RSA",
    scope: str | None = None,
    token_lifetime: int = 300,
    registered_key: RSAKey | ECKey | None = None,
) -> BackendClient:
    """A new private_key_jwt client at ``auth``: a fresh key (``kty`` RSA or EC P-384)
    written to ``key_dir``, its public key registered as the client's JWKS under its
    RFC 7638 thumbprint (the client's default kid). ``registered_key``: register that
    key's public part instead, under the same kid (a client holding the wrong key).
    ``scope`` None grants any scope asked for; ``token_lifetime`` is the access tokens'
    ``expires_in``."""
    client_id = f"backend-{secrets.token_hex(4)}"
    path = write_private_key(key_dir / f"{client_id}.pem", kty)
    pem = path.read_bytes()
    key: RSAKey | ECKey = RSAKey.import_key(pem) if kty == "RSA" else ECKey.import_key(pem)
    public = (registered_key or key).as_dict(private=False)
    jwks = {"keys": [{**public, "kid": key.thumbprint(), "use": "sig"}]}
    auth.register_client(
        client_id,
        jwks=jwks,
        scope=scope,
        grant_types=["client_credentials"],
        token_lifetime=token_lifetime,
    )
    return BackendClient(client_id, path, key)
