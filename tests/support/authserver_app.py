"""The test authorization server's Flask app, built on authlib's own grants and
endpoints: client credentials and authorization code (PKCE S256 required, OpenID
Connect id_token, SMART patient launch) at the token endpoint, RFC 7662 introspection,
RFC 7009 revocation, client authentication by client_secret_basic, private_key_jwt
(RFC 7523) or none (public clients). Access tokens are RFC 9068 JWTs signed with the
current RS256 key. What it knows lives in an ``AuthState``."""

from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import flask
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError, grants
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc.core import OpenIDCode, UserInfo
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tests.support.authserver_models import (
    AuthCode,
    Client,
    IssuedToken,
    Keys,
    LaunchUser,
)

GRANT_TYPES = ["authorization_code", "client_credentials"]
CLIENT_AUTH = ["client_secret_basic", "private_key_jwt"]
INTROSPECTED = ["scope", "client_id", "sub", "exp", "iat", "nbf", "aud", "iss", "jti"]
INTROSPECTED += ["patient", "fhirUser"]
ASSERTION_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "PS384"]


@dataclass
class AuthState:
    """Everything the server knows, shared by its request threads under ``lock``."""

    issuer: str
    default_audience: str
    keys: Keys = field(default_factory=Keys)
    clients: dict[str, Client] = field(default_factory=dict)
    codes: dict[str, AuthCode] = field(default_factory=dict)
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    assertion_ids: set[tuple[str, str]] = field(default_factory=set)
    patients: list[dict[str, str]] = field(default_factory=list)
    user_sub: str = "smart-user"
    fhir_user: str = "Practitioner/smart-practitioner"
    introspection_calls: int = 0
    jwks_calls: int = 0
    token_calls: int = 0
    introspection_delay: float = 0.0
    introspection_fault: tuple[int, str, str] | None = None  # status, content type, body
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.issuer}{path}"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"),
            "jwks_uri": self.url("/jwks"),
            "introspection_endpoint": self.url("/introspect"),
            "revocation_endpoint": self.url("/revoke"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": GRANT_TYPES,
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [*CLIENT_AUTH, "none"],
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
            "introspection_endpoint_auth_methods_supported": CLIENT_AUTH,
            "revocation_endpoint_auth_methods_supported": [*CLIENT_AUTH, "none"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "fhirUser", "launch/patient", "launch"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "fhirUser", "patient"],
        }


class Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, app: flask.Flask, state: AuthState) -> None:
        self.state = state
        super().__init__(app)

    def query_client(self, client_id: str) -> Client | None:
        return self.state.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        access_token = token["access_token"]
        claims = jwt.decode(access_token, self.state.keys.verifying()).claims
        issued = IssuedToken(access_token, request.client.client_id, claims)
        with self.state.lock:
            self.state.tokens[access_token] = issued


def _state(grant_or_endpoint: Any) -> AuthState:
    state: AuthState = grant_or_endpoint.server.state
    return state


class AccessTokens(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 access tokens; ``aud`` is the app's ``aud`` parameter (SMART sends the
    FHIR base URL), else the server's default audience."""

    def __init__(self, state: AuthState) -> None:
        super().__init__(issuer=state.issuer, expires_generator=_lifetime)
        self.state = state

    def get_jwks(self) -> KeySet:
        return self.state.keys.signing()

    def get_audiences(self, client: Client, user: Any, scope: str) -> str:
        if isinstance(user, LaunchUser) and user.aud:
            return user.aud
        return flask.request.values.get("aud") or self.state.default_audience

    def get_extra_claims(self, client: Client, grant_type: str, user: Any, scope: str) -> dict:  # type: ignore[type-arg]
        claims: dict[str, Any] = {"nbf": int(time.time())}
        if isinstance(user, LaunchUser):
            claims["fhirUser"] = user.fhir_user
            if user.patient:
                claims["patient"] = user.patient
        return claims


def _lifetime(client: Client, grant_type: str) -> int:
    return client.token_lifetime


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """private_key_jwt: an assertion signed with a key of the client's registered JWKS,
    ``aud`` the token endpoint (or the issuer, or the endpoint it is sent to), each
    ``jti`` used once."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, state: AuthState) -> None:
        super().__init__(leeway=30)
        self.state = state

    def get_audiences(self) -> list[str]:
        return [
            self.state.issuer,
            *(self.state.url(p) for p in ("/token", "/introspect", "/revoke")),
        ]

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        key = (str(claims["sub"]), str(jti))
        with self.state.lock:
            if key in self.state.assertion_ids:
                return False
            self.state.assertion_ids.add(key)
        return True

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        # authlib's own decodes with joserfc's "recommended" algorithms only, which
        # leaves out RS384 and ES384, the two SMART Backend Services requires.
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS)
        except JoseError as error:
            raise InvalidClientError(description=error.description) from error
        self.verify_claims(token.claims)
        return token.claims

    def resolve_client_public_key(self, client: Client) -> KeySet:
        if client.jwks is None:
            raise InvalidClientError(description="The client has no registered JWKS.")
        return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]


class ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH


class AuthorizationCode(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [*CLIENT_AUTH, "none"]

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        item = AuthCode(
            code=code,
            client_id=request.client.client_id,
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope,
            user=request.user,
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            nonce=data.get("nonce"),
        )
        with _state(self).lock:
            _state(self).codes[code] = item

    def query_authorization_code(self, code: str, client: Client) -> AuthCode | None:
        item = _state(self).codes.get(code)
        if item and item.client_id == client.client_id and not item.is_expired():
            return item
        return None

    def delete_authorization_code(self, authorization_code: AuthCode) -> None:
        with _state(self).lock:
            _state(self).codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: AuthCode) -> LaunchUser:
        return authorization_code.user

    def generate_token(self, user: Any = None, **kwargs: Any) -> dict[str, Any]:
        token: dict[str, Any] = super().generate_token(user=user, **kwargs)
        if isinstance(user, LaunchUser) and user.patient:
            token["patient"] = user.patient  # SMART launch context
        return token


class S256Required(CodeChallenge):  # type: ignore[misc]
    """PKCE on every authorization request, S256 only (SMART App Launch 2)."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: 'code_challenge' is missing.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


class SmartOpenID(OpenIDCode):  # type: ignore[misc]
    """The id_token for ``openid`` requests, with ``fhirUser`` when asked for."""

    def __init__(self, state: AuthState) -> None:
        super().__init__(require_nonce=False)
        self.state = state

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        client_id = request.payload.client_id
        return any(c.nonce == nonce and c.client_id == client_id for c in self.state.codes.values())

    def resolve_client_private_key(self, client: Client) -> KeySet:
        return self.state.keys.signing()

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        return {"iss": self.state.issuer, "aud": [client.client_id]}

    def generate_user_info(self, user: LaunchUser, scope: str) -> UserInfo:
        info = UserInfo(sub=user.sub)
        if "fhirUser" in scope.split():
            info["fhirUser"] = user.fhir_user
        return info


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    """Answers for tokens this server issued, to resource-server clients only."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return _state(self).tokens.get(token_string)

    def check_permission(self, token: IssuedToken, client: Client, request: Any) -> bool:
        return client.introspect

    def introspect_token(self, token: IssuedToken) -> dict[str, Any]:
        answer = {k: token.claims[k] for k in INTROSPECTED if k in token.claims}
        return {"active": True, "token_type": "Bearer", **answer}


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = [*CLIENT_AUTH, "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return _state(self).tokens.get(token_string)

    def revoke_token(self, token: IssuedToken, request: Any) -> None:
        with _state(self).lock:
            token.revoked = True


def create_app(state: AuthState) -> flask.Flask:
    app = flask.Flask("pacsfhir-test-authserver")
    server = Server(app, state)
    server.register_token_generator("default", AccessTokens(state))
    server.register_client_auth_method("private_key_jwt", PrivateKeyJWT(state))
    server.register_grant(ClientCredentials)
    server.register_grant(AuthorizationCode, [S256Required(), SmartOpenID(state)])
    server.register_endpoint(Introspection())
    server.register_endpoint(Revocation())

    @app.get("/.well-known/openid-configuration")
    @app.get("/.well-known/oauth-authorization-server")
    def discovery() -> flask.Response:
        return flask.jsonify(state.discovery())

    @app.get("/jwks")
    def jwks() -> flask.Response:
        with state.lock:
            state.jwks_calls += 1
        return flask.jsonify(state.keys.public_jwks())

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Any:
        try:
            grant = server.get_consent_grant(end_user=None)
        except OAuth2Error as error:
            return server.handle_error_response(None, error)
        if flask.request.method == "GET":
            return _consent_page(state, grant)
        form = flask.request.form
        if "deny" in form:
            return server.create_authorization_response(grant_user=None, grant=grant)
        patient = form.get("patient")
        wants_patient = "launch/patient" in (grant.request.payload.scope or "").split()
        offered = {p["id"] for p in state.patients}
        if wants_patient and patient not in offered:
            return flask.Response("pick one of the patients offered", status=400)
        user = LaunchUser(
            state.user_sub,
            state.fhir_user,
            patient if wants_patient else None,
            grant.request.payload.data.get("aud"),
        )
        return server.create_authorization_response(grant_user=user, grant=grant)

    @app.post("/token")
    def token() -> Any:
        with state.lock:
            state.token_calls += 1
        return server.create_token_response()

    @app.post("/introspect")
    def introspect() -> Any:
        with state.lock:
            state.introspection_calls += 1
        if state.introspection_delay:
            time.sleep(state.introspection_delay)
        if state.introspection_fault:
            status, content_type, body = state.introspection_fault
            return flask.Response(body, status=status, content_type=content_type)
        return server.create_endpoint_response("introspection")

    @app.post("/revoke")
    def revoke() -> Any:
        return server.create_endpoint_response("revocation")

    return app


def _consent_page(state: AuthState, grant: Any) -> str:
    """The page a user sees: who is signed in, what the app asks for, and (for a
    ``launch/patient`` request) one button per patient; a button submits the form."""
    payload = grant.request.payload
    action = html.escape(flask.request.full_path, quote=True)
    scope = payload.scope or ""
    if "launch/patient" in scope.split():
        buttons = "".join(
            f'<li><button type="submit" name="patient" value="{html.escape(p["id"], quote=True)}">'
            f"{html.escape(p['name'])}</button></li>"
            for p in state.patients
        )
        choice = f'<p>Choose a patient:</p><ul id="patients">{buttons}</ul>'
    else:
        choice = '<p><button type="submit" name="approve" value="1">Allow</button></p>'
    return (
        "<!doctype html><html><head><title>Authorize</title></head><body>"
        "<h1>pacsfhir test authorization server</h1>"
        f'<p>Signed in as <span id="user">{html.escape(state.fhir_user)}</span>.</p>'
        f"<p><b>{html.escape(payload.client_id)}</b> asks for "
        f"<code>{html.escape(scope)}</code>.</p>"
        f'<form method="post" action="{action}">{choice}'
        '<p><button type="submit" name="deny" value="1">Deny</button></p></form>'
        "</body></html>"
    )
