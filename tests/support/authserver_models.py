"""What the test authorization server knows: its clients, its signing keys, the
authorization codes and the tokens it issued. authlib's grants and endpoints read these
through its model mixins; nothing here speaks HTTP."""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin
from authlib.oidc.core import AuthorizationCodeMixin
from joserfc.jwk import ECKey, Key, KeyParameters, KeySet, RSAKey

CODE_LIFETIME = 600  # seconds, RFC 6749 §4.1.2's recommended maximum


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    """A registered client. Its authentication method follows from what it holds: a
    secret (client_secret_basic), a public JWKS (private_key_jwt), or neither (a public
    client, PKCE only). ``scope`` None grants whatever is asked; a string cuts the
    request down to those scopes (RFC 6749 §3.3: the token's ``scope`` says what was
    granted)."""

    client_id: str
    secret: str | None
    jwks: dict[str, Any] | None
    scope: str | None
    grant_types: list[str]
    redirect_uris: list[str]
    introspect: bool = False
    token_lifetime: int = 3600

    @property
    def auth_method(self) -> str:
        if self.jwks is not None:
            return "private_key_jwt"
        if self.secret is not None:
            return "client_secret_basic"
        return "none"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        requested = (scope or "").split()
        if self.scope is None:
            return " ".join(requested)
        allowed = self.scope.split()
        if not requested:
            return self.scope
        return " ".join(s for s in requested if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.secret is not None and hmac.compare_digest(
            self.secret.encode(), client_secret.encode()
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass(frozen=True)
class LaunchUser:
    """The resource owner of an authorization code: who logged in, the patient picked on
    the page (SMART launch context) and the ``aud`` the app asked for."""

    sub: str
    fhir_user: str
    patient: str | None
    aud: str | None

    def get_user_id(self) -> str:
        return self.sub


@dataclass
class AuthCode(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: LaunchUser
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None

    def is_expired(self) -> bool:
        return time.time() > self.auth_time + CODE_LIFETIME


@dataclass
class IssuedToken(TokenMixin):  # type: ignore[misc]
    """An access token the server issued, with its (verified) claims."""

    access_token: str
    client_id: str
    claims: dict[str, Any]
    revoked: bool = False

    def check_client(self, client: Client) -> bool:
        # the client it was issued to, or a resource server (which may revoke too)
        return client.client_id == self.client_id or client.introspect

    def get_scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def get_expires_in(self) -> int:
        return int(self.claims["exp"]) - int(self.claims["iat"])

    def is_expired(self) -> bool:
        return bool(time.time() >= self.claims["exp"])

    def is_revoked(self) -> bool:
        return self.revoked

    def get_client_id(self) -> str:
        return self.client_id


class Keys:
    """The server's signing keys: RS256 keys (the last one signs new tokens; older ones
    stay published so their tokens still verify) and one ES256 key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rsa: list[RSAKey] = []
        self.ec = ECKey.generate_key("P-256", parameters=_params("es256-1", "ES256"))
        self.rotate()

    def rotate(self) -> str:
        with self._lock:
            kid = f"rs256-{len(self.rsa) + 1}"
            self.rsa.append(RSAKey.generate_key(2048, parameters=_params(kid, "RS256")))
            return kid

    def drop(self, kid: str) -> None:
        with self._lock:
            self.rsa = [k for k in self.rsa if k.kid != kid]

    @property
    def current(self) -> RSAKey:
        with self._lock:
            return self.rsa[-1]

    def all(self) -> list[Key]:
        with self._lock:
            return [*self.rsa, self.ec]

    def by_kid(self, kid: str) -> Key | None:
        return next((k for k in self.all() if k.kid == kid), None)

    def signing(self) -> KeySet:
        """The current RS256 key alone: joserfc signs with it and sets its kid."""
        return KeySet([self.current])

    def verifying(self) -> KeySet:
        return KeySet(self.all())

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.all()]}


def _params(kid: str, alg: str) -> KeyParameters:
    return {"kid": kid, "alg": alg, "use": "sig"}
