"""A real OAuth 2.0 / OpenID Connect authorization server for the test suite, on a free
loopback port, built on authlib's grants and endpoints (see ``authserver_app``) and
served by werkzeug in a thread. It issues real tokens (RFC 9068 JWTs, RS256), answers
RFC 7662 introspection and RFC 7009 revocation, runs the authorization code flow with
PKCE and a SMART patient picker, and mints adversarial tokens with its own keys.

    with AuthServer() as server:
        token = server.client_credentials_token("app", "secret", "system/*.rs")

The ``auth_server`` fixture in tests/conftest.py is one of these for the session."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import Key

from tests.support import authserver_forge as forge
from tests.support.authserver_app import AuthState, create_app
from tests.support.authserver_models import Client
from tests.support.loopback import LoopbackServer

DEFAULT_AUDIENCE = "http://pacsfhir.test/fhir"  # the in-process app's FHIR base
DEFAULT_REDIRECT_URI = "http://127.0.0.1/smart-callback"
TIMEOUT = httpx.Timeout(10.0)


class TokenRequestError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.request.url} answered {response.status_code}: {response.text}")
        self.response = response


@dataclass(frozen=True)
class Authorization:
    """What the front channel gave the app: the code, and what it must send with it."""

    code: str
    state: str
    verifier: str
    redirect_uri: str


class AuthServer(LoopbackServer):
    issuer: str
    port: int
    jwks_url: str
    token_url: str
    authorize_url: str
    introspection_url: str
    revocation_url: str
    discovery_url: str
    introspection_client_id: str
    introspection_client_secret: str
    state: AuthState
    app: Any  # the Flask app

    def __init__(self, *, default_audience: str = DEFAULT_AUDIENCE, port: int = 0) -> None:
        super().__init__(port)
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.state = AuthState(self.issuer, default_audience)
        self.app = create_app(self.state)
        self.jwks_url = f"{self.issuer}/jwks"
        self.token_url = f"{self.issuer}/token"
        self.authorize_url = f"{self.issuer}/authorize"
        self.introspection_url = f"{self.issuer}/introspect"
        self.revocation_url = f"{self.issuer}/revoke"
        self.discovery_url = f"{self.issuer}/.well-known/openid-configuration"
        self.introspection_client_id = "pacsfhir"
        self.introspection_client_secret = secrets.token_urlsafe(24)
        self.register_client(
            self.introspection_client_id,
            secret=self.introspection_client_secret,
            grant_types=["client_credentials"],
            introspect=True,
        )

    # -- what it knows -----------------------------------------------------------------

    @property
    def default_audience(self) -> str:
        return self.state.default_audience

    @default_audience.setter
    def default_audience(self, value: str) -> None:
        self.state.default_audience = value

    @property
    def introspection_calls(self) -> int:
        return self.state.introspection_calls

    @introspection_calls.setter
    def introspection_calls(self, value: int) -> None:
        self.state.introspection_calls = value

    @property
    def jwks_calls(self) -> int:
        return self.state.jwks_calls

    @property
    def token_calls(self) -> int:
        return self.state.token_calls

    def reset(self) -> None:
        """Zero the counters and clear any introspection delay or fault."""
        with self.state.lock:
            self.state.introspection_calls = self.state.jwks_calls = self.state.token_calls = 0
            self.state.introspection_delay = 0.0
            self.state.introspection_fault = None

    def register_client(
        self,
        client_id: str,
        *,
        secret: str | None = None,
        jwks: dict[str, Any] | None = None,
        scope: str | None = None,
        grant_types: list[str] | None = None,
        redirect_uris: list[str] | None = None,
        introspect: bool = False,
        token_lifetime: int = 3600,
    ) -> None:
        """A confidential client (``secret``: client_secret_basic), a backend client
        (``jwks``, its public keys: private_key_jwt) or a public client (neither: PKCE
        only). ``scope`` None grants any scope asked for; a string is the most it gets.
        ``introspect`` makes it a resource server allowed to introspect (and revoke)."""
        if secret is not None and jwks is not None:
            raise ValueError("a client authenticates either with a secret or with its JWKS")
        if grant_types is None:
            confidential = secret is not None or jwks is not None
            grant_types = ["authorization_code", "client_credentials"][: 2 if confidential else 1]
        client = Client(
            client_id,
            secret,
            jwks,
            scope,
            list(grant_types),
            list(redirect_uris or [DEFAULT_REDIRECT_URI]),
            introspect,
            token_lifetime,
        )
        with self.state.lock:
            self.state.clients[client_id] = client

    def set_patients(self, patients: list[dict[str, str]]) -> None:
        """The patients the picker offers: ``[{"id": ..., "name": ...}]``."""
        self.state.patients = [dict(p) for p in patients]

    def set_user(self, fhir_user: str, *, sub: str = "smart-user") -> None:
        """Who is signed in on the authorization page (``fhirUser``, ``sub``)."""
        self.state.fhir_user, self.state.user_sub = fhir_user, sub

    def rotate_keys(self) -> str:
        """A new current RS256 key (new tokens are signed with it); older keys stay
        published. Returns the new kid."""
        return self.state.keys.rotate()

    def retire_key(self, kid: str) -> None:
        """Stop publishing a key (tokens it signed no longer verify)."""
        self.state.keys.drop(kid)

    @property
    def current_kid(self) -> str:
        return str(self.state.keys.current.kid)

    # -- introspection faults ----------------------------------------------------------

    @contextlib.contextmanager
    def introspection_answers(
        self, status: int, body: str, content_type: str = "application/json"
    ) -> Iterator[None]:
        """Inside, the introspection endpoint answers this instead (garbage, 500...)."""
        self.state.introspection_fault = (status, content_type, body)
        try:
            yield
        finally:
            self.state.introspection_fault = None

    @contextlib.contextmanager
    def slow_introspection(self, seconds: float) -> Iterator[None]:
        self.state.introspection_delay = seconds
        try:
            yield
        finally:
            self.state.introspection_delay = 0.0

    # -- clients' side: real HTTP to the real endpoints --------------------------------

    def client_credentials_token(
        self, client_id: str, secret: str, scope: str, *, aud: str | None = None
    ) -> str:
        data = {"grant_type": "client_credentials", "scope": scope}
        if aud is not None:
            data["aud"] = aud
        response = httpx.post(self.token_url, data=data, auth=(client_id, secret), timeout=TIMEOUT)
        if response.status_code != 200:
            raise TokenRequestError(response)
        return str(response.json()["access_token"])

    def authorize(
        self,
        client_id: str,
        scope: str,
        *,
        patient: str | None = None,
        aud: str | None = None,
        redirect_uri: str | None = None,
    ) -> Authorization:
        """The front channel as a browser does it: GET the authorization page, press
        the patient's button (or Allow), read ``code`` and ``state`` off the redirect."""
        client = self.state.clients[client_id]
        redirect_uri = redirect_uri or client.redirect_uris[0]
        verifier, state = secrets.token_urlsafe(48), secrets.token_urlsafe(12)
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        if aud is not None:
            params["aud"] = aud
        with httpx.Client(timeout=TIMEOUT) as http:
            page = http.get(self.authorize_url, params=params)
            if page.status_code != 200:
                raise TokenRequestError(page)
            form = ConsentForm.read(page.text)
            choice = ("patient", patient) if patient is not None else ("approve", "1")
            if choice not in form.buttons:
                raise LookupError(f"the page offers no {choice}: {form.buttons}")
            answer = http.post(urljoin(self.issuer, form.action), data=dict([choice]))
        location = answer.headers.get("location", "")
        query = parse_qs(urlsplit(location).query)
        if answer.status_code != 302 or "code" not in query:
            raise TokenRequestError(answer)
        if query.get("state") != [state]:
            raise RuntimeError(f"state {state!r} did not come back: {location}")
        return Authorization(query["code"][0], state, verifier, redirect_uri)

    def exchange_code(
        self, client_id: str, code: str, verifier: str, redirect_uri: str
    ) -> httpx.Response:
        """The back channel: the code and PKCE verifier for tokens (the raw response).
        A client with a secret authenticates with it, a public one by its client_id
        (a private_key_jwt client needs its own assertion: post it yourself)."""
        client = self.state.clients[client_id]
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        auth: tuple[str, str] | None = None
        if client.secret is not None:
            auth = (client_id, client.secret)
        else:
            data["client_id"] = client_id
        return httpx.post(self.token_url, data=data, auth=auth, timeout=TIMEOUT)

    def authorization_code_token(
        self, client_id: str, scope: str, patient: str | None, *, aud: str | None = None
    ) -> dict[str, Any]:
        """The whole authorization code + PKCE flow over HTTP; the token response."""
        grant = self.authorize(client_id, scope, patient=patient, aud=aud)
        response = self.exchange_code(client_id, grant.code, grant.verifier, grant.redirect_uri)
        if response.status_code != 200:
            raise TokenRequestError(response)
        token: dict[str, Any] = response.json()
        return token

    def introspect(self, token: str) -> dict[str, Any]:
        """Introspect as the resource server does (counts as an introspection call)."""
        response = httpx.post(
            self.introspection_url,
            data={"token": token},
            auth=(self.introspection_client_id, self.introspection_client_secret),
            timeout=TIMEOUT,
        )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def revoke(self, token: str) -> None:
        """Revoke through the revocation endpoint (as the resource-server client)."""
        response = httpx.post(
            self.revocation_url,
            data={"token": token},
            auth=(self.introspection_client_id, self.introspection_client_secret),
            timeout=TIMEOUT,
        )
        response.raise_for_status()

    # -- adversarial minting -----------------------------------------------------------

    def claims(self) -> dict[str, Any]:
        """Valid access-token claims, the base ``mint`` overrides."""
        now = int(time.time())
        return {
            "iss": self.issuer,
            "aud": self.default_audience,
            "sub": "minted-client",
            "client_id": "minted-client",
            "scope": "system/*.rs",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "jti": secrets.token_hex(8),
        }

    def mint(
        self,
        claims: dict[str, Any],
        *,
        alg: str = "RS256",
        kid: str | None = None,
        key: object | None = None,
        header: dict[str, Any] | None = None,
    ) -> str:
        """A token signed with the server's real keys (or ``key``), not recorded as
        issued (introspection does not know it). ``claims`` override ``self.claims()``
        (a None value removes that claim); ``header`` likewise over the header.

        ``alg="none"``: unsigned. ``alg="HS256"`` (384, 512): HMAC whose secret is the
        current RSA public key's PEM (or ``key`` as bytes), the algorithm-confusion
        forgery. ``kid`` names a server key to sign with, or any kid to claim; ``key``
        (a joserfc key) signs instead of the server's, claiming the current kid unless
        told otherwise."""
        body = {k: v for k, v in {**self.claims(), **claims}.items() if v is not None}
        keys = self.state.keys
        if alg == "none" or alg.startswith("HS"):
            current = keys.current
            hdr = _header({"typ": "at+jwt", "alg": alg, "kid": kid or current.kid}, header)
            if alg == "none":
                return forge.unsigned(hdr, body)
            secret = key if isinstance(key, bytes) else current.as_pem(private=False)
            return forge.hmac_signed(hdr, body, secret)
        signer: Key
        if isinstance(key, Key):
            signer = key
        else:
            named = keys.by_kid(kid) if kid else None
            signer = named or (keys.ec if alg.startswith("ES") else keys.current)
        claimed = kid or signer.kid or keys.current.kid
        hdr = _header({"typ": "at+jwt", "alg": alg, "kid": claimed}, header)
        return jwt.encode(hdr, body, signer, algorithms=[alg])


def _header(base: dict[str, Any], changes: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in {**base, **(changes or {})}.items() if v is not None}


class ConsentForm(HTMLParser):
    """The authorization page's form, read as a browser would: its action and the
    (name, value) of each submit button."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.buttons: list[tuple[str, str]] = []

    @classmethod
    def read(cls, page: str) -> ConsentForm:
        form = cls()
        form.feed(page)
        return form

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = values.get("action", "")
        elif tag == "button" and values.get("type") == "submit":
            self.buttons.append((values.get("name", ""), values.get("value", "")))
