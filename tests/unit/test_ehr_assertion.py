"""The EHR look-up's client assertion (SMART Backend Services, RFC 7523): RS384 for an
RSA key, ES384 for an EC P-384 key, verified with the public key alone; the keys and
settings it refuses (ConfigurationError, before any network call)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import ECKey, RSAKey

from pacsfhir.auth.ehr import AssertionSigner, EhrPatients
from pacsfhir.errors import ConfigurationError
from pacsfhir.settings import Settings, load_settings
from tests.support.ehr_fhir import write_private_key

TOKEN_URL = "https://ehr.example/oauth2/token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def big_endian(value: int, size: int | None = None) -> bytes:
    return value.to_bytes(size or (value.bit_length() + 7) // 8, "big")


def rfc7638_thumbprint(pem: bytes) -> str:
    """Written from RFC 7638 §3 with cryptography's key numbers, not with joserfc."""
    private = serialization.load_pem_private_key(pem, password=None)
    if isinstance(private, rsa.RSAPrivateKey):
        numbers = private.public_key().public_numbers()
        members = {"e": b64(big_endian(numbers.e)), "kty": "RSA", "n": b64(big_endian(numbers.n))}
    else:
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        point = private.public_key().public_numbers()
        members = {
            "crv": "P-384",
            "kty": "EC",
            "x": b64(big_endian(point.x, 48)),
            "y": b64(big_endian(point.y, 48)),
        }
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64(hashlib.sha256(canonical).digest())


def public_key(pem: bytes) -> RSAKey | ECKey:
    private = serialization.load_pem_private_key(pem, password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if isinstance(private, rsa.RSAPrivateKey):
        return RSAKey.import_key(public)
    return ECKey.import_key(public)


def write_pem(path: Path, private: Any, password: bytes | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    )
    return path


@pytest.mark.parametrize(("kty", "alg"), [("RSA", "RS384"), ("EC", "ES384")])
def test_assertion_verifies_with_the_public_key(tmp_path: Path, kty: str, alg: str) -> None:
    path = write_private_key(tmp_path / "key.pem", kty)
    pem = path.read_bytes()
    signer = AssertionSigner.from_pem_file(str(path))

    before = int(time.time())
    first = signer.sign("pacsfhir-backend", TOKEN_URL)
    second = signer.sign("pacsfhir-backend", TOKEN_URL)

    token = jwt.decode(first, public_key(pem), algorithms=[alg])
    assert token.header == {"alg": alg, "kid": rfc7638_thumbprint(pem), "typ": "JWT"}
    claims = token.claims
    assert claims["iss"] == claims["sub"] == "pacsfhir-backend"
    assert claims["aud"] == TOKEN_URL
    assert before <= claims["iat"] <= int(time.time())
    assert 0 < claims["exp"] - claims["iat"] <= 300  # SMART: no more than five minutes
    assert isinstance(claims["jti"], str)
    assert len(claims["jti"]) >= 16
    assert jwt.decode(second, public_key(pem), algorithms=[alg]).claims["jti"] != claims["jti"]


def test_assertion_is_refused_with_another_key(tmp_path: Path) -> None:
    signer = AssertionSigner.from_pem_file(str(write_private_key(tmp_path / "a.pem")))
    stranger = write_private_key(tmp_path / "b.pem").read_bytes()
    with pytest.raises(BadSignatureError):
        jwt.decode(signer.sign("c", TOKEN_URL), public_key(stranger), algorithms=["RS384"])


def test_configured_kid_and_public_jwks(tmp_path: Path) -> None:
    path = write_private_key(tmp_path / "key.pem", "EC")
    signer = AssertionSigner.from_pem_file(str(path), kid="ehr-2026")
    assert (
        jwt.decode(
            signer.sign("c", TOKEN_URL), public_key(path.read_bytes()), algorithms=["ES384"]
        ).header["kid"]
        == "ehr-2026"
    )
    (key,) = signer.public_jwks()["keys"]
    assert key["kid"] == "ehr-2026"
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-384", "ES384", "sig")
    assert "d" not in key


@pytest.mark.parametrize(
    ("private", "reason"),
    [
        (ed25519.Ed25519PrivateKey.generate(), "RSA .RS384. or EC P-384"),
        (ec.generate_private_key(ec.SECP256R1()), "P-384"),
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "2048"),
    ],
    ids=["ed25519", "p256", "rsa1024"],
)
def test_unusable_keys_are_refused(tmp_path: Path, private: Any, reason: str) -> None:
    path = write_pem(tmp_path / "key.pem", private)
    with pytest.raises(ConfigurationError, match=reason):
        AssertionSigner.from_pem_file(str(path))


def test_unreadable_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        AssertionSigner.from_pem_file(str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigurationError, match="not an unencrypted PEM private key"):
        AssertionSigner.from_pem_file(str(garbage))
    locked = write_pem(tmp_path / "locked.pem", ec.generate_private_key(ec.SECP384R1()), b"pw")
    with pytest.raises(ConfigurationError, match="not an unencrypted PEM private key"):
        AssertionSigner.from_pem_file(str(locked))


# -- settings ------------------------------------------------------------------------


def test_no_ehr_url_means_no_lookup() -> None:
    assert EhrPatients.from_settings(Settings()) is None
    assert Settings().ehr_scope == "system/Patient.rs"


def test_settings_from_the_environment(tmp_path: Path) -> None:
    key = write_private_key(tmp_path / "key.pem", "EC")
    settings = load_settings(
        {},
        {
            "PACSFHIR_EHR_FHIR_URL": "https://ehr.example/fhir/",
            "PACSFHIR_EHR_CLIENT_ID": "pacsfhir",
            "PACSFHIR_EHR_PRIVATE_KEY": str(key),
            "PACSFHIR_EHR_SCOPE": "system/Patient.read",
        },
    )
    patients = EhrPatients.from_settings(settings)
    assert isinstance(patients, EhrPatients)
    assert patients.base_url == "https://ehr.example/fhir"
    assert (patients.client_id, patients.scope) == ("pacsfhir", "system/Patient.read")
    assert (patients.signer.alg, patients.signer.kid) == ("ES384", patients.signer.key.thumbprint())
    patients.close()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ehr_client_id": ""}, "ehr_fhir_url needs ehr_client_id"),
        ({"ehr_private_key": ""}, "ehr_fhir_url needs ehr_private_key"),
        ({"ehr_client_id": "", "ehr_private_key": ""}, "ehr_client_id, ehr_private_key"),
        ({"ehr_fhir_url": "http://ehr.example/fhir"}, "ehr_fhir_url must be an https URL"),
        ({"ehr_fhir_url": "ehr.example/fhir"}, "ehr_fhir_url"),
        ({"ehr_token_url": "http://10.0.0.1/token"}, "ehr_token_url"),
        ({"ehr_scope": "  "}, "ehr_scope"),
        ({"ehr_private_key": "/nonexistent/key.pem"}, "cannot read ehr_private_key"),
    ],
)
def test_incomplete_settings_are_refused(
    tmp_path: Path, changes: dict[str, str], reason: str
) -> None:
    key = write_private_key(tmp_path / "key.pem")
    settings = Settings(
        ehr_fhir_url="https://ehr.example/fhir",
        ehr_client_id="pacsfhir",
        ehr_private_key=str(key),
    ).replace(**changes)
    with pytest.raises(ConfigurationError, match=reason):
        EhrPatients.from_settings(settings)
