"""The test authorization server itself (tests/support/authserver.py), checked from the
outside over HTTP: discovery and JWKS, client credentials with client_secret_basic and
private_key_jwt, JWT access tokens verified with joserfc against the published JWKS,
introspection and revocation, the authorization code flow with PKCE and a SMART
patient launch, key rotation, adversarial minting, and going down."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from tests.support.authserver import AuthServer

FHIR = "http://fhir.example.test/fhir"
SMART_SCOPE = "launch/patient openid fhirUser patient/ImagingStudy.rs"
PATIENTS = [{"id": "pat-a", "name": "Alice Able"}, {"id": "pat-b", "name": "Bob <Baker>"}]


@pytest.fixture
def own_server() -> Iterator[AuthServer]:
    """A server of the test's own, for what would disturb the session's (keys, outages)."""
    with AuthServer() as server:
        yield server


def jwks_of(server: AuthServer) -> KeySet:
    return KeySet.import_key_set(httpx.get(server.jwks_url).json())


def verified(server: AuthServer, token: str, aud: str) -> jwt.Token:
    """Decoded with the JWKS fetched over HTTP, its registered claims checked."""
    decoded = jwt.decode(token, jwks_of(server), algorithms=["RS256", "ES256"])
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": server.issuer},
        aud={"essential": True, "value": aud},
        exp={"essential": True},
        nbf={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    ).validate(decoded.claims)
    return decoded


def secret_client(server: AuthServer, **kwargs: Any) -> tuple[str, str]:
    client_id, secret = f"app-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    server.register_client(client_id, secret=secret, **kwargs)
    return client_id, secret


def test_discovery_names_every_endpoint(auth_server: AuthServer) -> None:
    response = httpx.get(f"{auth_server.issuer}/.well-known/openid-configuration")
    assert response.status_code == 200
    doc = response.json()
    OpenIDProviderMetadata(doc).validate()  # authlib's RFC 8414 / OIDC Discovery checks
    assert doc["issuer"] == auth_server.issuer
    assert doc["jwks_uri"] == auth_server.jwks_url
    assert doc["token_endpoint"] == auth_server.token_url
    assert doc["authorization_endpoint"] == auth_server.authorize_url
    assert doc["introspection_endpoint"] == auth_server.introspection_url
    assert doc["revocation_endpoint"] == auth_server.revocation_url
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "client_credentials"} <= set(doc["grant_types_supported"])
    methods = set(doc["token_endpoint_auth_methods_supported"])
    assert {"client_secret_basic", "private_key_jwt"} <= methods
    for url in (doc["jwks_uri"], doc["authorization_endpoint"]):
        assert url.startswith(f"{auth_server.issuer}/")


def test_jwks_publishes_an_rs256_and_an_es256_public_key(auth_server: AuthServer) -> None:
    keys = httpx.get(auth_server.jwks_url).json()["keys"]
    by_alg = {k["alg"]: k for k in keys}
    assert by_alg["RS256"]["kty"] == "RSA"
    assert by_alg["ES256"]["kty"] == "EC"
    assert by_alg["ES256"]["crv"] == "P-256"
    assert len({k["kid"] for k in keys}) == len(keys)
    assert all(k["use"] == "sig" and k["kid"] for k in keys)
    private = {"d", "p", "q", "dp", "dq", "qi"}
    assert not any(private & set(k) for k in keys)


def test_client_credentials_with_client_secret_basic(auth_server: AuthServer) -> None:
    client_id, secret = secret_client(auth_server)
    token = auth_server.client_credentials_token(client_id, secret, "system/*.rs", aud=FHIR)
    decoded = verified(auth_server, token, FHIR)
    assert decoded.header["alg"] == "RS256"
    assert decoded.header["kid"] in {
        k["kid"] for k in httpx.get(auth_server.jwks_url).json()["keys"]
    }
    assert decoded.claims["client_id"] == client_id
    assert decoded.claims["sub"] == client_id
    assert decoded.claims["scope"] == "system/*.rs"
    assert decoded.claims["exp"] - decoded.claims["iat"] == 3600
    assert "patient" not in decoded.claims

    without_aud = auth_server.client_credentials_token(client_id, secret, "system/*.rs")
    assert verified(auth_server, without_aud, auth_server.default_audience)


def test_a_wrong_secret_is_refused(auth_server: AuthServer) -> None:
    client_id, _ = secret_client(auth_server)
    response = httpx.post(
        auth_server.token_url,
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=(client_id, "not-the-secret"),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_a_client_gets_no_more_than_its_registered_scope(auth_server: AuthServer) -> None:
    client_id, secret = secret_client(auth_server, scope="system/ImagingStudy.rs")
    token = auth_server.client_credentials_token(
        client_id, secret, "system/ImagingStudy.rs system/*.cud"
    )
    assert verified(auth_server, token, auth_server.default_audience).claims["scope"] == (
        "system/ImagingStudy.rs"
    )


def assertion(client_id: str, key: RSAKey | ECKey, aud: str) -> str:
    """A private_key_jwt client assertion (RFC 7523, SMART Backend Services)."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now + 300,
        "iat": now,
        "jti": secrets.token_hex(16),
    }
    alg = "RS384" if isinstance(key, RSAKey) else "ES384"
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


def backend_token_request(server: AuthServer, client_assertion: str) -> httpx.Response:
    return httpx.post(
        server.token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/Patient.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion,
        },
    )


def backend_key(kty: str) -> RSAKey | ECKey:
    if kty == "RSA":
        return RSAKey.generate_key(2048, parameters={"kid": "backend-1"})
    return ECKey.generate_key("P-384", parameters={"kid": "backend-1"})


@pytest.mark.parametrize("kty", ["RSA", "EC"])  # RS384 and ES384, as SMART Backend Services
def test_client_credentials_with_private_key_jwt(auth_server: AuthServer, kty: str) -> None:
    key = backend_key(kty)
    client_id = f"backend-{secrets.token_hex(4)}"
    auth_server.register_client(client_id, jwks=dict(KeySet([key]).as_dict(private=False)))

    signed = assertion(client_id, key, auth_server.token_url)
    response = backend_token_request(auth_server, signed)
    assert response.status_code == 200, response.text
    claims = verified(auth_server, response.json()["access_token"], auth_server.default_audience)
    assert claims.claims["client_id"] == client_id
    assert claims.claims["scope"] == "system/Patient.rs"

    replayed = backend_token_request(auth_server, signed)
    assert replayed.status_code in (400, 401)
    assert replayed.json()["error"] == "invalid_client"

    stranger = backend_key(kty)
    forged = backend_token_request(
        auth_server, assertion(client_id, stranger, auth_server.token_url)
    )
    assert forged.json()["error"] == "invalid_client"

    elsewhere = backend_token_request(auth_server, assertion(client_id, key, "https://other/token"))
    assert elsewhere.json()["error"] == "invalid_client"


def introspect_as(server: AuthServer, token: str, auth: tuple[str, str] | None) -> httpx.Response:
    return httpx.post(server.introspection_url, data={"token": token}, auth=auth)


def test_introspection_answers_for_issued_tokens(fresh_auth_server: AuthServer) -> None:
    server = fresh_auth_server
    client_id, secret = secret_client(server)
    token = server.client_credentials_token(client_id, secret, "system/*.rs", aud=FHIR)
    rs = (server.introspection_client_id, server.introspection_client_secret)

    answer = introspect_as(server, token, rs).json()
    claims = verified(server, token, FHIR).claims
    assert answer["active"] is True
    assert answer["token_type"] == "Bearer"
    for name in ("scope", "client_id", "sub", "exp", "iat", "aud", "iss"):
        assert answer[name] == claims[name], name

    assert introspect_as(server, "not-a-token", rs).json() == {"active": False}
    minted = server.mint({"client_id": client_id})  # valid signature, never issued
    assert introspect_as(server, minted, rs).json() == {"active": False}

    server.revoke(token)
    assert introspect_as(server, token, rs).json() == {"active": False}
    assert server.introspection_calls == 4


def test_introspection_answers_inactive_once_a_token_expires(auth_server: AuthServer) -> None:
    client_id, secret = secret_client(
        auth_server, token_lifetime=3
    )  # whole seconds: 1 could lapse before the first look
    token = auth_server.client_credentials_token(client_id, secret, "system/*.rs")
    assert auth_server.introspect(token)["active"] is True
    exp = jwt.decode(token, jwks_of(auth_server)).claims["exp"]
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    assert auth_server.introspect(token) == {"active": False}


def test_introspection_requires_a_resource_server_client(auth_server: AuthServer) -> None:
    client_id, secret = secret_client(auth_server)
    token = auth_server.client_credentials_token(client_id, secret, "system/*.rs")
    unauthenticated = introspect_as(auth_server, token, None)
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"] == "invalid_client"
    wrong = introspect_as(auth_server, token, (auth_server.introspection_client_id, "guess"))
    assert wrong.status_code == 401
    # an ordinary client authenticates but may not learn about tokens
    assert introspect_as(auth_server, token, (client_id, secret)).json() == {"active": False}
    assert auth_server.introspect(token)["active"] is True


def test_a_client_revokes_its_own_token(auth_server: AuthServer) -> None:
    client_id, secret = secret_client(auth_server)
    token = auth_server.client_credentials_token(client_id, secret, "system/*.rs")
    response = httpx.post(
        auth_server.revocation_url, data={"token": token}, auth=(client_id, secret)
    )
    assert response.status_code == 200
    assert auth_server.introspect(token) == {"active": False}


@pytest.fixture
def smart_app(auth_server: AuthServer) -> str:
    client_id = f"smart-{secrets.token_hex(4)}"
    auth_server.register_client(client_id)  # public: PKCE, no secret
    auth_server.set_patients(PATIENTS)
    return client_id


def test_the_consent_page_lists_the_patients(auth_server: AuthServer, smart_app: str) -> None:
    params = {
        "response_type": "code",
        "client_id": smart_app,
        "redirect_uri": "http://127.0.0.1/smart-callback",
        "scope": SMART_SCOPE,
        "state": "s",
        "aud": FHIR,
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }
    page = httpx.get(auth_server.authorize_url, params=params)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Alice Able" in page.text
    assert "Bob &lt;Baker&gt;" in page.text  # escaped
    assert 'name="patient" value="pat-b"' in page.text


def test_code_and_pkce_give_a_patient_launch(auth_server: AuthServer, smart_app: str) -> None:
    token = auth_server.authorization_code_token(smart_app, SMART_SCOPE, "pat-b", aud=FHIR)
    assert token["patient"] == "pat-b"
    assert token["token_type"] == "Bearer"
    assert set(token["scope"].split()) == set(SMART_SCOPE.split())
    access = verified(auth_server, token["access_token"], FHIR).claims
    assert access["patient"] == "pat-b"
    assert access["fhirUser"] == "Practitioner/smart-practitioner"
    assert access["client_id"] == smart_app
    id_token = jwt.decode(token["id_token"], jwks_of(auth_server)).claims
    assert id_token["aud"] == [smart_app]
    assert id_token["fhirUser"] == "Practitioner/smart-practitioner"
    assert auth_server.introspect(token["access_token"])["patient"] == "pat-b"


def test_a_wrong_pkce_verifier_is_refused(auth_server: AuthServer, smart_app: str) -> None:
    grant = auth_server.authorize(smart_app, SMART_SCOPE, patient="pat-a", aud=FHIR)
    wrong = auth_server.exchange_code(
        smart_app, grant.code, secrets.token_urlsafe(48), grant.redirect_uri
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    right = auth_server.exchange_code(smart_app, grant.code, grant.verifier, grant.redirect_uri)
    assert right.status_code == 200
    again = auth_server.exchange_code(smart_app, grant.code, grant.verifier, grant.redirect_uri)
    assert again.json()["error"] == "invalid_grant"  # a code is used once


@pytest.mark.parametrize(
    "pkce", [{}, {"code_challenge": "x" * 43, "code_challenge_method": "plain"}]
)
def test_authorization_without_s256_pkce_is_refused(
    auth_server: AuthServer, smart_app: str, pkce: dict[str, str]
) -> None:
    params = {
        "response_type": "code",
        "client_id": smart_app,
        "redirect_uri": "http://127.0.0.1/smart-callback",
        "scope": SMART_SCOPE,
        "state": "s",
        **pkce,
    }
    response = httpx.get(auth_server.authorize_url, params=params)
    assert response.status_code == 302
    assert "error=invalid_request" in response.headers["location"]


def test_a_patient_not_offered_cannot_be_picked(auth_server: AuthServer, smart_app: str) -> None:
    with pytest.raises(LookupError):
        auth_server.authorize(smart_app, SMART_SCOPE, patient="pat-z", aud=FHIR)


def test_rotate_keys_publishes_a_second_key(own_server: AuthServer) -> None:
    client_id, secret = secret_client(own_server)
    before = own_server.client_credentials_token(client_id, secret, "system/*.rs")
    first_kid = own_server.current_kid
    new_kid = own_server.rotate_keys()
    assert new_kid != first_kid
    kids = {k["kid"] for k in httpx.get(own_server.jwks_url).json()["keys"] if k["alg"] == "RS256"}
    assert kids == {first_kid, new_kid}
    after = own_server.client_credentials_token(client_id, secret, "system/*.rs")
    assert verified(own_server, after, own_server.default_audience).header["kid"] == new_kid
    assert verified(own_server, before, own_server.default_audience).header["kid"] == first_kid

    own_server.retire_key(first_kid)
    with pytest.raises(JoseError):
        jwt.decode(before, jwks_of(own_server))


def test_minted_tokens_verify_or_not_as_intended(auth_server: AuthServer) -> None:
    keys = jwks_of(auth_server)
    expired = auth_server.mint({"exp": int(time.time()) - 600})
    with pytest.raises(JoseError):
        verified(auth_server, expired, auth_server.default_audience)
    early = auth_server.mint({"nbf": int(time.time()) + 600})
    with pytest.raises(JoseError):
        verified(auth_server, early, auth_server.default_audience)
    wrong_aud = auth_server.mint({"aud": "https://elsewhere/fhir"})
    with pytest.raises(JoseError):
        verified(auth_server, wrong_aud, auth_server.default_audience)

    es256 = auth_server.mint({"patient": "pat-a"}, alg="ES256")
    decoded = verified(auth_server, es256, auth_server.default_audience)
    assert decoded.header["alg"] == "ES256"
    assert decoded.claims["patient"] == "pat-a"

    stranger = RSAKey.generate_key(2048)
    forged = auth_server.mint({}, key=stranger)
    assert jwt.decode(forged, stranger).claims["iss"] == auth_server.issuer  # really signed
    assert json.loads(_part(forged, 0))["kid"] == auth_server.current_kid
    with pytest.raises(BadSignatureError):
        jwt.decode(forged, keys)


def test_alg_none_and_hmac_confusion_are_built_by_hand(auth_server: AuthServer) -> None:
    unsigned = auth_server.mint({"scope": "system/*.*"}, alg="none")
    signature = unsigned.split(".")[2]
    assert json.loads(_part(unsigned, 0))["alg"] == "none"
    assert json.loads(_part(unsigned, 1))["scope"] == "system/*.*"
    assert signature == ""
    with pytest.raises(JoseError):
        jwt.decode(unsigned, jwks_of(auth_server))

    confused = auth_server.mint({}, alg="HS256")
    pem = RSAKey.import_key(_current_public_jwk(auth_server)).as_pem(private=False)
    signing_input, _, mac = confused.rpartition(".")
    expected = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert _unb64(mac) == expected
    with pytest.raises(JoseError):
        jwt.decode(confused, jwks_of(auth_server))


def test_down_means_unreachable_then_back(own_server: AuthServer) -> None:
    with httpx.Client() as kept_alive:
        assert kept_alive.get(own_server.jwks_url).status_code == 200
        with own_server.down():
            with pytest.raises(httpx.TransportError):
                kept_alive.get(own_server.jwks_url)
            with pytest.raises(httpx.TransportError):
                httpx.get(own_server.discovery_url)
        assert kept_alive.get(own_server.jwks_url).status_code == 200


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _part(token: str, index: int) -> bytes:
    return _unb64(token.split(".")[index])


def _current_public_jwk(server: AuthServer) -> dict[str, Any]:
    keys = httpx.get(server.jwks_url).json()["keys"]
    return next(k for k in keys if k["kid"] == server.current_kid)


def test_a_resource_server_may_introspect_with_private_key_jwt(auth_server: AuthServer) -> None:
    key = backend_key("EC")
    resource_server = f"rs-{secrets.token_hex(4)}"
    auth_server.register_client(
        resource_server, jwks=dict(KeySet([key]).as_dict(private=False)), introspect=True
    )
    client_id, secret = secret_client(auth_server)
    token = auth_server.client_credentials_token(client_id, secret, "system/*.rs")
    response = httpx.post(
        auth_server.introspection_url,
        data={
            "token": token,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(resource_server, key, auth_server.introspection_url),
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["client_id"] == client_id


def test_introspection_faults_and_delays_for_the_resource_server_tests(
    fresh_auth_server: AuthServer,
) -> None:
    server = fresh_auth_server
    client_id, secret = secret_client(server)
    token = server.client_credentials_token(client_id, secret, "system/*.rs")
    rs = (server.introspection_client_id, server.introspection_client_secret)
    with server.introspection_answers(200, "<html>oops</html>", "text/html"):
        garbage = introspect_as(server, token, rs)
        assert garbage.status_code == 200
        assert garbage.text == "<html>oops</html>"
    assert introspect_as(server, token, rs).json()["active"] is True

    with server.slow_introspection(0.3), ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        answers = list(pool.map(lambda _: server.introspect(token), range(8)))
        elapsed = time.monotonic() - started
    assert all(a["active"] for a in answers)
    assert 0.3 <= elapsed < 1.5  # served concurrently, not one after another
    assert server.introspection_calls == 10
