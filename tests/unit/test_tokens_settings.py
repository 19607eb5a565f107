"""verifier_from_settings: which verifier each PACSFHIR_AUTH gives, and the settings it
refuses (ConfigurationError, before any network call)."""

from __future__ import annotations

from typing import Any

import pytest

from pacsfhir.auth.introspection import IntrospectionVerifier
from pacsfhir.auth.jwt import JwtVerifier
from pacsfhir.auth.tokens import accepted_audiences, verifier_from_settings
from pacsfhir.errors import ConfigurationError
from pacsfhir.settings import Settings

FHIR = "https://pacs.example/fhir"
JWT = {"auth": "jwt", "jwt_issuer": "https://issuer.example"}
INTROSPECTION = {
    "auth": "introspection",
    "introspection_url": "https://issuer.example/introspect",
    "introspection_client_id": "pacsfhir",
    "introspection_client_secret": "s3cret",
}


def test_none_gives_no_verifier() -> None:
    assert verifier_from_settings(Settings(), [FHIR]) is None


def test_jwt() -> None:
    verifier = verifier_from_settings(Settings(**JWT, jwt_audience="pacs, ,other,pacs"), [FHIR])
    assert isinstance(verifier, JwtVerifier)
    assert verifier.issuer == "https://issuer.example"
    assert verifier.audiences == (FHIR, "pacs", "other")
    verifier.close()


def test_introspection() -> None:
    settings = Settings(**INTROSPECTION, token_cache_seconds=60, jwt_issuer="http://127.0.0.1:9")
    verifier = verifier_from_settings(settings, [FHIR, "https://pacs.example/dicom-web"])
    assert isinstance(verifier, IntrospectionVerifier)
    assert verifier.issuer == "http://127.0.0.1:9"
    assert verifier.audiences == (FHIR, "https://pacs.example/dicom-web")
    verifier.close()


@pytest.mark.parametrize(
    ("settings", "audiences", "reason"),
    [
        ({"auth": "jwt"}, [FHIR], "jwt_issuer"),
        ({**JWT, "jwt_issuer": "issuer.example"}, [FHIR], "jwt_issuer"),
        ({**JWT, "jwt_issuer": "http://issuer.example"}, [FHIR], "https"),
        ({**JWT, "jwks_url": "ftp://issuer.example/jwks"}, [FHIR], "jwks_url"),
        ({**JWT, "jwks_url": "http://10.0.0.1/jwks"}, [FHIR], "jwks_url"),
        ({**JWT, "jwt_audience": " , "}, [], "audience"),
        ({**INTROSPECTION, "introspection_url": ""}, [FHIR], "introspection_url"),
        ({**INTROSPECTION, "introspection_client_id": ""}, [FHIR], "introspection_client_id"),
        (
            {**INTROSPECTION, "introspection_client_secret": ""},
            [FHIR],
            "introspection_client_secret",
        ),
        ({**INTROSPECTION, "introspection_url": "http://auth.local/x"}, [FHIR], "https"),
        ({**INTROSPECTION, "jwt_issuer": "not a url"}, [FHIR], "jwt_issuer"),
        ({**INTROSPECTION, "token_cache_seconds": -1}, [FHIR], "token_cache_seconds"),
        ({"auth": "oauth"}, [FHIR], "auth must be"),
    ],
)
def test_refused(settings: dict[str, Any], audiences: list[str], reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        verifier_from_settings(Settings(**settings), audiences)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://issuer.example", True),
        ("http://127.0.0.1:8080/realms/x", True),
        ("http://localhost/x", True),
        ("http://[::1]:9000/", True),
        ("http://issuer.example", False),
        ("http://127.0.0.1.evil.example/", False),
    ],
)
def test_issuer_url_must_be_https_off_loopback(url: str, ok: bool) -> None:
    settings = Settings(**{**JWT, "jwt_issuer": url})
    if ok:
        verifier = verifier_from_settings(settings, [FHIR])
        assert isinstance(verifier, JwtVerifier)
        verifier.close()
    else:
        with pytest.raises(ConfigurationError):
            verifier_from_settings(settings, [FHIR])


def test_accepted_audiences_order_and_dedup() -> None:
    settings = Settings(jwt_audience=f"{FHIR},api://pacs")
    assert accepted_audiences(settings, [FHIR, "x"]) == (FHIR, "x", "api://pacs")
