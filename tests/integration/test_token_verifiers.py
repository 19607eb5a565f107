"""JwtVerifier and IntrospectionVerifier over real HTTP, against ``TestIssuer``.

``TestIssuer`` is a TEST PEER, not an authorization server: a loopback HTTP server started
per test that serves an OpenID discovery document, a JWKS of keys generated in the test,
and RFC 7662 answers the test writes into it (it can also be stopped, slowed, or made to
answer garbage). It stands in until the real authorization server fixture (``auth_server``
in tests/conftest.py) lands; the verifiers only ever see it through HTTP, so nothing in
them is mocked. Tokens are signed here with joserfc; the forged ones are built by hand
from base64url parts, as an attacker would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jws, jwt
from joserfc.jwk import ECKey, RSAKey

from pacsfhir.auth.introspection import IntrospectionVerifier
from pacsfhir.auth.jwt import JwtVerifier
from pacsfhir.errors import ServiceUnavailable, Unauthorized
from tests.support.threads import run_together

AUDIENCE = "http://127.0.0.1:8080/fhir"
CLIENT = ("pacsfhir", "s3cret")
RSA_KEY = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC_KEY = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})


class TestIssuer:
    """The test peer (see the module docstring). ``calls`` counts requests per path."""

    __test__ = False

    def __init__(self) -> None:
        self.keys: list[RSAKey | ECKey] = [RSA_KEY, EC_KEY]
        self.extra_jwks: list[dict[str, Any]] = []
        self.answers: dict[str, dict[str, Any]] = {}  # token -> introspection answer
        self.broken: dict[str, tuple[int, bytes]] = {}  # path -> (status, body)
        self.delay = 0.0
        self.discovery_issuer: str | None = None
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.keys] + self.extra_jwks}

    def _answer(self, path: str, body: bytes, auth: str | None) -> tuple[int, bytes]:
        with self.lock:
            self.calls[path] += 1
        if self.delay:
            time.sleep(self.delay)
        if path in self.broken:
            return self.broken[path]
        if path == "/.well-known/openid-configuration":
            issuer = self.discovery_issuer or self.url
            return 200, json.dumps({"issuer": issuer, "jwks_uri": self.url + "/jwks"}).encode()
        if path == "/jwks":
            return 200, json.dumps(self.jwks()).encode()
        if path == "/introspect":
            expected = "Basic " + base64.b64encode(":".join(CLIENT).encode()).decode()
            if auth != expected:
                return 401, b'{"error": "invalid_client"}'
            form = parse_qs(body.decode())
            assert form["token_type_hint"] == ["access_token"]
            answer = self.answers.get(form["token"][0], {"active": False})
            return 200, json.dumps(answer).encode()
        return 404, b"{}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, payload = peer._answer(self.path, body, self.headers["Authorization"])
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _reply

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def issuer() -> Iterator[TestIssuer]:
    peer = TestIssuer()
    yield peer
    peer.stop()


class Clock:
    """A settable clock for the verifiers' rate limits and cache periods."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def claims(peer: TestIssuer, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": peer.url,
        "aud": AUDIENCE,
        "sub": "user-1",
        "client_id": "app-1",
        "scope": "launch/patient patient/ImagingStudy.rs",
        "patient": "pat-1",
        "fhirUser": "Practitioner/1",
        "iat": now,
        "exp": now + 300,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: RSAKey | ECKey = RSA_KEY, alg: str = "RS256") -> str:
    return jwt.encode({"alg": alg, "kid": key.kid}, payload, key)


def typed(payload: dict[str, Any], typ: Any) -> str:
    return jwt.encode({"alg": "RS256", "kid": RSA_KEY.kid, "typ": typ}, payload, RSA_KEY)


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "JWT", "jwt", None])
def test_jwt_access_token_types_are_accepted(issuer: TestIssuer, typ: str | None) -> None:
    header: dict[str, Any] = {"alg": "RS256", "kid": RSA_KEY.kid}
    if typ is not None:
        header["typ"] = typ
    verifier = jwt_verifier(issuer)
    assert verifier.verify(jwt.encode(header, claims(issuer), RSA_KEY)).subject


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_built(header: dict[str, Any], payload: dict[str, Any], sign_with: bytes | None) -> str:
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    if sign_with is None:
        return signing_input + "."
    mac = hmac.new(sign_with, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


def jwt_verifier(peer: TestIssuer, **kwargs: Any) -> JwtVerifier:
    return JwtVerifier(peer.url, [AUDIENCE, "https://other.example/dicom-web"], **kwargs)


# --- JWT: good tokens -----------------------------------------------------------------


@pytest.mark.parametrize(("key", "alg"), [(RSA_KEY, "RS256"), (EC_KEY, "ES256")])
def test_jwt_valid_token_found_through_discovery(issuer: TestIssuer, key: Any, alg: str) -> None:
    verifier = jwt_verifier(issuer)
    payload = claims(issuer)
    info = verifier.verify(sign(payload, key, alg))
    assert info.subject == "user-1"
    assert info.client_id == "app-1"
    assert info.scope == "launch/patient patient/ImagingStudy.rs"
    assert info.patient == "pat-1"
    assert info.fhir_user == "Practitioner/1"
    assert info.issuer == issuer.url
    assert info.expires_at == payload["exp"]
    assert issuer.calls["/.well-known/openid-configuration"] == 1
    assert issuer.calls["/jwks"] == 1


def test_jwt_with_jwks_url_and_audience_list(issuer: TestIssuer) -> None:
    verifier = jwt_verifier(issuer, jwks_url=issuer.url + "/jwks")
    aud = ["someone-else", "https://other.example/dicom-web"]
    info = verifier.verify(sign(claims(issuer, aud=aud, scope=None, scp=["a", "b"])))
    assert info.scope == "a b"
    assert issuer.calls["/.well-known/openid-configuration"] == 0


def test_jwt_nbf_and_iat_within_leeway_accepted(issuer: TestIssuer) -> None:
    now = int(time.time())
    verifier = jwt_verifier(issuer)
    assert verifier.verify(sign(claims(issuer, nbf=now + 50, iat=now + 50))).patient == "pat-1"


def _int_b64(n: int, size: int | None = None) -> str:
    return b64url(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


def _independent_key(alg: str, kid: str) -> tuple[Callable[[bytes], bytes], dict[str, Any]]:
    """A signer built on ``cryptography`` alone and its JWK written out by hand: tokens
    that joserfc did not produce, so the verifier is checked against another signer."""
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
    if alg.startswith("ES"):
        curve, size = (ec.SECP256R1(), 32) if alg == "ES256" else (ec.SECP384R1(), 48)
        private = ec.generate_private_key(curve)
        numbers = private.public_key().public_numbers()
        jwk = {
            "kty": "EC",
            "crv": "P-256" if size == 32 else "P-384",
            "x": _int_b64(numbers.x, size),
            "y": _int_b64(numbers.y, size),
        }

        def sign_ec(data: bytes) -> bytes:
            r, s = decode_dss_signature(private.sign(data, ec.ECDSA(digest)))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")

        return sign_ec, {**jwk, "kid": kid, "use": "sig"}
    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = rsa_private.public_key().public_numbers()
    pad = (
        padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        if alg.startswith("PS")
        else padding.PKCS1v15()
    )
    jwk = {"kty": "RSA", "n": _int_b64(public.n), "e": _int_b64(public.e), "kid": kid}
    return lambda data: rsa_private.sign(data, pad, digest), jwk


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"])
def test_jwt_every_accepted_algorithm_from_an_independent_signer(
    issuer: TestIssuer, alg: str
) -> None:
    signer, jwk = _independent_key(alg, f"ind-{alg}")
    issuer.extra_jwks = [jwk]
    header = {"alg": alg, "kid": jwk["kid"], "typ": "at+jwt"}
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims(issuer)).encode())
    )
    token = signing_input + "." + b64url(signer(signing_input.encode()))
    verifier = jwt_verifier(issuer)
    assert verifier.verify(token).patient == "pat-1"
    with pytest.raises(Unauthorized, match="signature"):
        verifier.verify(signing_input + "." + b64url(signer(b"something else")))


# --- JWT: every kind of bad token is 401 ---------------------------------------------


def _bad_tokens(peer: TestIssuer) -> dict[str, tuple[str, str]]:
    """kind -> (token, what the refusal says)."""
    now = int(time.time())
    other_rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, not the key
    good = sign(claims(peer))
    head, body, sig = good.split(".")
    tampered_body = b64url(json.dumps(claims(peer, patient="pat-2")).encode())
    public_pem = RSA_KEY.as_pem(private=False)
    header = {"alg": "RS256", "kid": "rsa-1"}
    return {
        "expired": (sign(claims(peer, exp=now - 1, iat=now - 400)), "expired"),
        "not yet valid": (sign(claims(peer, nbf=now + 120)), "not yet valid"),
        "issued in the future": (sign(claims(peer, iat=now + 120)), "future"),
        "no exp": (sign(claims(peer, exp=None)), "no exp"),
        "exp not a number": (sign(claims(peer, exp="tomorrow")), "exp"),
        "wrong issuer": (sign(claims(peer, iss=peer.url + "/other")), "issuer"),
        "no issuer": (sign(claims(peer, iss=None)), "issuer"),
        "wrong audience": (sign(claims(peer, aud="https://elsewhere.example/fhir")), "audience"),
        "wrong audience list": (sign(claims(peer, aud=["a", "b"])), "audience"),
        "no audience": (sign(claims(peer, aud=None)), "audience"),
        "patient not a string": (sign(claims(peer, patient=["pat-1"])), "patient"),
        "signed by another key": (sign(claims(peer), other_rsa), "signature"),
        "payload tampered": (f"{head}.{tampered_body}.{sig}", "signature"),
        "signature stripped": (f"{head}.{body}.", "signature"),
        "alg none": (hand_built({"alg": "none", "typ": "JWT"}, claims(peer), None), "algorithm"),
        "alg none with kid": (
            hand_built({"alg": "none", "kid": "rsa-1"}, claims(peer), None),
            "algorithm",
        ),
        "HS256 with the RSA public key as secret": (
            hand_built({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(peer), public_pem),
            "algorithm",
        ),
        "HS256 with the JWK n as secret": (
            hand_built(
                {"alg": "HS256", "kid": "rsa-1"}, claims(peer), str(RSA_KEY.as_dict()["n"]).encode()
            ),
            "algorithm",
        ),
        "RS256 header on the EC key": (
            hand_built({"alg": "RS256", "kid": "ec-1"}, claims(peer), public_pem),
            "signature",
        ),
        "unknown kid": (
            sign(claims(peer), RSAKey.generate_key(2048, parameters={"kid": "x"})),
            "does not publish",
        ),
        "not a JWT": ("abc.def", "JWS compact"),
        "garbage parts": ("a.b.c", "JWS compact"),
        "payload not JSON": (jws.serialize_compact(header, b"not json", RSA_KEY), "not JSON"),
        "payload not an object": (jws.serialize_compact(header, b"[1]", RSA_KEY), "object"),
        "space inside": (good[:10] + " " + good[10:], "b64token"),
        "empty": ("", "empty"),
        # validly signed, valid claims, but not an access token by its type (RFC 9068 4)
        "typ logout+jwt": (typed(claims(peer), "logout+jwt"), "not an access token"),
        "typ dpop+jwt": (typed(claims(peer), "dpop+jwt"), "not an access token"),
    }


def test_jwt_bad_tokens_are_refused(issuer: TestIssuer) -> None:
    verifier = jwt_verifier(issuer)
    verifier.verify(sign(claims(issuer)))  # keys loaded
    cases = _bad_tokens(issuer)
    for kind, (token, reason) in cases.items():
        with pytest.raises(Unauthorized, match=reason) as caught:
            verifier.verify(token)
        assert caught.value.error == "invalid_token", kind
    assert len(cases) == 28
    assert issuer.calls["/jwks"] == 1  # the unknown kid came inside the refetch window


def test_jwt_hmac_refused_even_when_jwks_publishes_a_symmetric_key(issuer: TestIssuer) -> None:
    secret = b"shared-secret-with-nobody"
    issuer.extra_jwks = [{"kty": "oct", "kid": "hmac-1", "k": b64url(secret)}]
    verifier = jwt_verifier(issuer)
    forged = hand_built({"alg": "HS256", "kid": "hmac-1"}, claims(issuer), secret)
    with pytest.raises(Unauthorized, match="algorithm"):
        verifier.verify(forged)
    assert verifier.verify(sign(claims(issuer))).subject == "user-1"


def test_jwt_discovery_naming_another_issuer_is_503(issuer: TestIssuer) -> None:
    issuer.discovery_issuer = "https://evil.example"
    with pytest.raises(ServiceUnavailable):
        jwt_verifier(issuer).verify(sign(claims(issuer)))


# --- JWT: issuer unreachable or garbled is 503 ----------------------------------------


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("/jwks", (500, b"{}")),
        ("/jwks", (200, b"<html>")),
        ("/jwks", (200, b'{"keys": "none"}')),
        ("/.well-known/openid-configuration", (404, b"{}")),
        ("/.well-known/openid-configuration", (200, b'{"issuer": 1}')),
    ],
)
def test_jwt_keys_garbled_is_503(issuer: TestIssuer, path: str, answer: tuple[int, bytes]) -> None:
    issuer.broken[path] = answer
    with pytest.raises(ServiceUnavailable) as caught:
        jwt_verifier(issuer).verify(sign(claims(issuer)))
    assert caught.value.retry_after > 0


def test_jwt_issuer_down_is_503_and_not_hammered(issuer: TestIssuer) -> None:
    token = sign(claims(issuer))
    issuer.stop()
    clock = Clock(1000.0)
    verifier = jwt_verifier(issuer, clock=clock)
    with pytest.raises(ServiceUnavailable):
        verifier.verify(token)
    with pytest.raises(ServiceUnavailable):
        verifier.verify(token)
    assert verifier.fetches == 1  # the second one answered from the failure back-off


def test_jwt_recovers_when_the_issuer_comes_back(issuer: TestIssuer) -> None:
    clock = Clock(1000.0)
    verifier = jwt_verifier(issuer, clock=clock)
    issuer.broken["/jwks"] = (503, b"{}")
    with pytest.raises(ServiceUnavailable):
        verifier.verify(sign(claims(issuer)))
    del issuer.broken["/jwks"]
    clock.t += 6
    assert verifier.verify(sign(claims(issuer))).subject == "user-1"


# --- JWT: key rotation ----------------------------------------------------------------


def test_jwt_rotation_fetches_a_new_kid_once_and_rate_limits_unknown_ones(
    issuer: TestIssuer,
) -> None:
    clock = Clock(1000.0)
    verifier = jwt_verifier(issuer, clock=clock)
    verifier.verify(sign(claims(issuer)))
    assert issuer.calls["/jwks"] == 1

    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    with pytest.raises(Unauthorized):  # inside the 30 s window: refused without a fetch
        verifier.verify(sign(claims(issuer), stranger))
    assert issuer.calls["/jwks"] == 1

    rotated = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
    issuer.keys = [rotated, EC_KEY]
    clock.t += 31
    assert verifier.verify(sign(claims(issuer), rotated)).subject == "user-1"
    assert issuer.calls["/jwks"] == 2
    for _ in range(3):
        verifier.verify(sign(claims(issuer), rotated))
    assert issuer.calls["/jwks"] == 2  # the new kid is known now

    with pytest.raises(Unauthorized):  # the retired key is gone after the refetch
        verifier.verify(sign(claims(issuer), RSA_KEY))
    clock.t += 10
    with pytest.raises(Unauthorized):
        verifier.verify(sign(claims(issuer), stranger))
    assert issuer.calls["/jwks"] == 2
    clock.t += 21  # 31 s after the last fetch: one more try for an unknown kid, refused
    with pytest.raises(Unauthorized):
        verifier.verify(sign(claims(issuer), stranger))
    assert issuer.calls["/jwks"] == 3


def test_jwt_keys_refreshed_periodically(issuer: TestIssuer) -> None:
    clock = Clock(1000.0)
    verifier = jwt_verifier(issuer, clock=clock)
    token = sign(claims(issuer))
    verifier.verify(token)
    clock.t += 3599
    verifier.verify(token)
    assert issuer.calls["/jwks"] == 1
    clock.t += 2
    verifier.verify(token)
    assert issuer.calls["/jwks"] == 2


def test_jwt_concurrent_first_use_fetches_keys_once(issuer: TestIssuer) -> None:
    issuer.delay = 0.2
    verifier = jwt_verifier(issuer, jwks_url=issuer.url + "/jwks")
    results = run_together(8, lambda: verifier.verify(sign(claims(issuer))).subject)
    assert results == ["user-1"] * 8
    assert issuer.calls["/jwks"] == 1


# --- Introspection --------------------------------------------------------------------


def introspection_verifier(peer: TestIssuer, **kwargs: Any) -> IntrospectionVerifier:
    kwargs.setdefault("issuer", peer.url)
    return IntrospectionVerifier(peer.url + "/introspect", *CLIENT, [AUDIENCE], **kwargs)


def active(peer: TestIssuer, **changes: Any) -> dict[str, Any]:
    return {"active": True, **claims(peer, **changes)}


def test_introspection_active_token_cached_until_ttl(issuer: TestIssuer) -> None:
    now = Clock(time.time())
    issuer.answers["tok-1"] = active(issuer, exp=int(now.t) + 3600)
    verifier = introspection_verifier(issuer, cache_seconds=300, now=now)
    info = verifier.verify("tok-1")
    assert (info.patient, info.fhir_user, info.client_id) == ("pat-1", "Practitioner/1", "app-1")
    for _ in range(5):
        assert verifier.verify("tok-1") == info
    assert issuer.calls["/introspect"] == 1
    now.t += 301
    verifier.verify("tok-1")
    assert issuer.calls["/introspect"] == 2


def test_introspection_cache_never_outlives_exp(issuer: TestIssuer) -> None:
    now = Clock(time.time())
    issuer.answers["tok-1"] = active(issuer, exp=int(now.t) + 20)
    verifier = introspection_verifier(issuer, cache_seconds=300, now=now)
    verifier.verify("tok-1")
    now.t += 21
    with pytest.raises(Unauthorized, match="expired"):  # the server still says active
        verifier.verify("tok-1")
    assert issuer.calls["/introspect"] == 2


def test_introspection_inactive_cached_briefly(issuer: TestIssuer) -> None:
    now = Clock(time.time())
    verifier = introspection_verifier(issuer, now=now)
    for _ in range(3):
        with pytest.raises(Unauthorized, match="not active"):
            verifier.verify("revoked")
    assert issuer.calls["/introspect"] == 1
    issuer.answers["revoked"] = active(issuer)  # e.g. a token not yet known a moment ago
    now.t += 11
    assert verifier.verify("revoked").subject == "user-1"
    assert issuer.calls["/introspect"] == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [  # times relative to when the test runs (the suite may take longer than any offset)
        (lambda now: {"exp": now - 5}, "expired"),
        (lambda now: {"nbf": now + 600}, "not yet valid"),
        (lambda now: {"aud": "https://elsewhere.example"}, "audience"),
        (lambda now: {"aud": ["a", "b"]}, "audience"),
        (lambda now: {"iss": "https://elsewhere.example"}, "issuer"),
    ],
)
def test_introspection_active_but_not_for_us_is_401(
    issuer: TestIssuer, changes: Callable[[int], dict[str, Any]], message: str
) -> None:
    issuer.answers["tok"] = active(issuer, **changes(int(time.time())))
    with pytest.raises(Unauthorized, match=message):
        introspection_verifier(issuer).verify("tok")


def test_introspection_refusal_of_an_active_token_is_kept_briefly(issuer: TestIssuer) -> None:
    now = Clock(time.time())
    issuer.answers["tok"] = active(issuer, aud="https://elsewhere.example")
    verifier = introspection_verifier(issuer, now=now)
    for _ in range(3):
        with pytest.raises(Unauthorized, match="audience"):
            verifier.verify("tok")
    assert issuer.calls["/introspect"] == 1
    now.t += 11
    with pytest.raises(Unauthorized, match="audience"):
        verifier.verify("tok")
    assert issuer.calls["/introspect"] == 2


def test_introspection_refresh_token_refused(issuer: TestIssuer) -> None:
    issuer.answers["tok"] = active(issuer, token_type="refresh_token")
    with pytest.raises(Unauthorized, match="refresh"):
        introspection_verifier(issuer).verify("tok")


def test_introspection_without_aud_or_issuer_check(issuer: TestIssuer) -> None:
    issuer.answers["tok"] = {"active": True, "scope": "system/*.rs", "client_id": "svc"}
    info = introspection_verifier(issuer, issuer=None).verify("tok")
    assert (info.scope, info.client_id, info.patient, info.expires_at) == (
        "system/*.rs",
        "svc",
        None,
        None,
    )


@pytest.mark.parametrize(
    "answer",
    [
        (500, b'{"active": true}'),
        (401, b"{}"),
        (200, b"<html>not json</html>"),
        (200, b"[]"),
        (200, b'{"scope": "patient/*.rs"}'),
        (200, b'{"active": "true"}'),
        (200, b'{"active": true, "scope": ["patient/*.rs"]}'),
        (200, b'{"active": true, "patient": 7}'),
    ],
)
def test_introspection_garbled_answer_is_503_and_not_cached(
    issuer: TestIssuer, answer: tuple[int, bytes]
) -> None:
    issuer.broken["/introspect"] = answer
    issuer.answers["tok"] = active(issuer)
    verifier = introspection_verifier(issuer)
    with pytest.raises(ServiceUnavailable) as caught:
        verifier.verify("tok")
    assert caught.value.retry_after > 0
    del issuer.broken["/introspect"]
    assert verifier.verify("tok").subject == "user-1"


def test_introspection_wrong_client_credentials_is_503(issuer: TestIssuer) -> None:
    issuer.answers["tok"] = active(issuer)
    verifier = IntrospectionVerifier(issuer.url + "/introspect", "pacsfhir", "wrong", [AUDIENCE])
    with pytest.raises(ServiceUnavailable):
        verifier.verify("tok")


def test_introspection_endpoint_down_is_503(issuer: TestIssuer) -> None:
    issuer.stop()
    with pytest.raises(ServiceUnavailable):
        introspection_verifier(issuer).verify("tok")


def test_introspection_timeout_is_503(issuer: TestIssuer) -> None:
    issuer.answers["tok"] = active(issuer)
    issuer.delay = 1.0
    verifier = introspection_verifier(issuer, client=httpx.Client(timeout=0.2))
    with pytest.raises(ServiceUnavailable):
        verifier.verify("tok")


def test_introspection_unanswered_endpoint_not_asked_again_for_a_few_seconds(
    issuer: TestIssuer,
) -> None:
    now = Clock(time.time())
    issuer.answers["tok-2"] = active(issuer)
    issuer.delay = 1.0
    verifier = introspection_verifier(issuer, now=now, client=httpx.Client(timeout=0.2))
    with pytest.raises(ServiceUnavailable):
        verifier.verify("tok-1")
    issuer.delay = 0
    with pytest.raises(ServiceUnavailable):  # another token, 503 without a call
        verifier.verify("tok-2")
    assert verifier.calls == 1
    now.t += 6
    assert verifier.verify("tok-2").subject == "user-1"
    assert verifier.calls == 2


def test_introspection_single_flight(issuer: TestIssuer) -> None:
    issuer.answers["tok"] = active(issuer)
    issuer.delay = 0.3
    verifier = introspection_verifier(issuer)
    results = run_together(8, lambda: verifier.verify("tok"))
    assert all(r == results[0] for r in results)
    assert results[0].patient == "pat-1"
    assert issuer.calls["/introspect"] == 1


def test_introspection_single_flight_shares_a_failure(issuer: TestIssuer) -> None:
    issuer.broken["/introspect"] = (502, b"{}")
    issuer.delay = 0.3
    verifier = introspection_verifier(issuer)
    results = run_together(8, lambda: verifier.verify("tok"))
    assert all(isinstance(r, ServiceUnavailable) for r in results)
    assert issuer.calls["/introspect"] == 1


def test_introspection_cache_is_bounded_and_keyed_by_digest(issuer: TestIssuer) -> None:
    for i in range(5):
        issuer.answers[f"tok-{i}"] = active(issuer, sub=f"user-{i}")
    verifier = introspection_verifier(issuer, max_entries=3)
    for i in range(5):
        verifier.verify(f"tok-{i}")
    assert len(verifier._cache) == 3
    assert all(isinstance(k, bytes) and b"tok" not in k for k in verifier._cache._entries)
    verifier.verify("tok-4")  # recent: cached
    assert issuer.calls["/introspect"] == 5
    verifier.verify("tok-0")  # least recently used: evicted, asked again
    assert issuer.calls["/introspect"] == 6


def test_introspection_malformed_token_never_sent(issuer: TestIssuer) -> None:
    verifier = introspection_verifier(issuer)
    for token in ["", "a b", "tok\n", "é", "x" * 20_000]:
        with pytest.raises(Unauthorized):
            verifier.verify(token)
    assert issuer.calls["/introspect"] == 0


# --- Warm-cache cost ------------------------------------------------------------------


def _p50_microseconds(call: Callable[[], object], n: int = 2000) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def test_warm_cache_verify_cost_under_a_millisecond(
    issuer: TestIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    verifier = jwt_verifier(issuer)
    rs256, es256 = sign(claims(issuer)), sign(claims(issuer), EC_KEY, "ES256")
    issuer.answers["tok"] = active(issuer)
    introspection = introspection_verifier(issuer)
    for warm in (lambda: verifier.verify(rs256), lambda: verifier.verify(es256)):
        warm()
    introspection.verify("tok")
    figures = {
        "jwt RS256": _p50_microseconds(lambda: verifier.verify(rs256)),
        "jwt ES256": _p50_microseconds(lambda: verifier.verify(es256)),
        "introspection (cached)": _p50_microseconds(lambda: introspection.verify("tok")),
    }
    with capsys.disabled():
        print("\nwarm verify p50:", ", ".join(f"{k} {v:.0f} us" for k, v in figures.items()))
    assert issuer.calls["/introspect"] == 1
    assert all(v < 1000 for v in figures.values()), figures
