"""The pure claim checks of auth/claims.py, as tables: JWT claims, introspection answers
and bearer token syntax."""

from __future__ import annotations

from typing import Any

import pytest

from pacsfhir.auth.claims import (
    TokenInfo,
    check_introspection_answer,
    check_jwt_claims,
    check_token_syntax,
)
from pacsfhir.errors import ServiceUnavailable, Unauthorized

NOW = 1_800_000_000.0
ISS = "https://issuer.example"
AUDS = ("https://pacs.example/fhir", "pacs")
GOOD: dict[str, Any] = {
    "iss": ISS,
    "aud": "pacs",
    "exp": NOW + 300,
    "sub": "u1",
    "client_id": "app",
    "scope": "patient/ImagingStudy.rs",
    "patient": "p1",
    "fhirUser": "Practitioner/9",
}


def jwt_claims(**changes: Any) -> dict[str, Any]:
    return {k: v for k, v in {**GOOD, **changes}.items() if v is not None}


def test_jwt_claims_good() -> None:
    assert check_jwt_claims(GOOD, issuer=ISS, audiences=AUDS, now=NOW) == TokenInfo(
        subject="u1",
        client_id="app",
        scope="patient/ImagingStudy.rs",
        patient="p1",
        fhir_user="Practitioner/9",
        expires_at=NOW + 300,
        issuer=ISS,
    )


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        ({"aud": ["x", "https://pacs.example/fhir"]}, "patient", "p1"),
        ({"nbf": NOW + 60, "iat": NOW + 60}, "patient", "p1"),  # leeway is 60 s
        ({"exp": NOW + 0.5}, "expires_at", NOW + 0.5),
        ({"client_id": None, "azp": "app-azp"}, "client_id", "app-azp"),
        ({"scope": None}, "scope", ""),
        ({"scope": None, "scp": ["a", "b"]}, "scope", "a b"),
        ({"scope": None, "scp": "a b"}, "scope", "a b"),
        ({"patient": None}, "patient", None),
    ],
)
def test_jwt_claims_accepted(changes: dict[str, Any], field: str, expected: object) -> None:
    info = check_jwt_claims(jwt_claims(**changes), issuer=ISS, audiences=AUDS, now=NOW)
    assert getattr(info, field) == expected


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"iss": ISS + "/"}, "issuer"),
        ({"iss": None}, "issuer"),
        ({"aud": "other"}, "audience"),
        ({"aud": ["other", "x"]}, "audience"),
        ({"aud": []}, "audience"),
        ({"aud": [["pacs"]]}, "audience"),
        ({"aud": None}, "audience"),
        ({"aud": "PACS"}, "audience"),
        ({"exp": None}, "no exp"),
        ({"exp": NOW}, "expired"),
        ({"exp": NOW - 1}, "expired"),
        ({"exp": "soon"}, "exp"),
        ({"exp": True}, "exp"),
        ({"exp": float("nan")}, "exp"),
        ({"nbf": NOW + 61}, "nbf"),
        ({"nbf": "now"}, "nbf"),
        ({"iat": NOW + 61}, "iat"),
        ({"sub": 5}, "sub"),
        ({"patient": {"id": "p1"}}, "patient"),
        ({"fhirUser": 1}, "fhirUser"),
        ({"scope": ["a"]}, "scope"),
        ({"scope": None, "scp": [1]}, "scope"),
        ({"client_id": 3}, "client_id"),
    ],
)
def test_jwt_claims_refused(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        check_jwt_claims(jwt_claims(**changes), issuer=ISS, audiences=AUDS, now=NOW)


def introspect(answer: object, issuer: str | None = ISS) -> TokenInfo | None:
    return check_introspection_answer(answer, issuer=issuer, audiences=AUDS, now=NOW)


def test_introspection_inactive_is_none() -> None:
    assert introspect({"active": False}) is None
    assert introspect({"active": False, "scope": 1}) is None  # nothing else is read


@pytest.mark.parametrize(
    ("answer", "issuer", "expected"),
    [
        ({"active": True}, None, TokenInfo(None, None, "", None, None, None, None)),
        (
            {"active": True, **GOOD},
            ISS,
            TokenInfo(
                "u1", "app", "patient/ImagingStudy.rs", "p1", "Practitioner/9", NOW + 300, ISS
            ),
        ),
        (
            {"active": True, "iss": ISS, "aud": ["x", "pacs"]},
            ISS,
            TokenInfo(None, None, "", None, None, None, ISS),
        ),
    ],
)
def test_introspection_active(
    answer: dict[str, Any], issuer: str | None, expected: TokenInfo
) -> None:
    assert introspect(answer, issuer) == expected


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"active": True, "exp": NOW - 1}, "expired"),
        ({"active": True, "exp": NOW}, "expired"),
        ({"active": True, "nbf": NOW + 120}, "nbf"),
        ({"active": True, "aud": "other"}, "audience"),
        ({"active": True, "aud": []}, "audience"),
        ({"active": True, "token_type": "refresh_token"}, "refresh"),
        ({"active": True, "token_type": "Refresh"}, "refresh"),
    ],
)
def test_introspection_refused(answer: dict[str, Any], reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        introspect(answer, None)


def test_introspection_issuer_checked_only_when_configured() -> None:
    with pytest.raises(Unauthorized, match="issuer"):
        introspect({"active": True})
    with pytest.raises(Unauthorized, match="issuer"):
        introspect({"active": True, "iss": "https://other.example"})
    assert introspect({"active": True, "iss": "https://other.example"}, None) is not None


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        "active",
        {},
        {"active": "true"},
        {"active": 1},
        {"active": None},
        {"active": True, "scope": ["a"]},
        {"active": True, "patient": 1},
        {"active": True, "sub": {}},
        {"active": True, "token_type": 1},
    ],
)
def test_introspection_garbled_is_503(answer: object) -> None:
    with pytest.raises(ServiceUnavailable) as caught:
        introspect(answer, None)
    assert caught.value.retry_after > 0


@pytest.mark.parametrize(
    "token",
    ["abc", "a.b.c", "a-b_c~d+e/f==", "eyJ.eyJ.", "x" * 16_384],
)
def test_token_syntax_accepted(token: str) -> None:
    check_token_syntax(token)


@pytest.mark.parametrize(
    "token",
    ["", " ", "a b", "a\tb", "abc\n", "é", "a=b", "==", "a,b", '"a"', "x" * 16_385, "a\x00"],
)
def test_token_syntax_refused(token: str) -> None:
    with pytest.raises(Unauthorized):
        check_token_syntax(token)
