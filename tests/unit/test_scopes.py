"""SMART scopes, v1 and v2, parsed by one pure module (table tests)."""

from __future__ import annotations

import pytest

from pacsfhir.auth.scopes import Grant, Level, ResourceScope, parse_scope, parse_scopes

P, U, S = Level.PATIENT, Level.USER, Level.SYSTEM


def scope(level: Level, type_: str, letters: str, *restriction: tuple[str, str]) -> ResourceScope:
    return ResourceScope(level, type_, frozenset(letters), tuple(sorted(restriction)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # SMART v1
        ("patient/ImagingStudy.read", scope(P, "ImagingStudy", "rs")),
        ("patient/*.read", scope(P, "*", "rs")),
        ("user/ImagingStudy.write", scope(U, "ImagingStudy", "cud")),
        ("system/*.*", scope(S, "*", "cruds")),
        ("user/Patient.*", scope(U, "Patient", "cruds")),
        # SMART v2
        ("patient/ImagingStudy.rs", scope(P, "ImagingStudy", "rs")),
        ("patient/ImagingStudy.r", scope(P, "ImagingStudy", "r")),
        ("patient/ImagingStudy.s", scope(P, "ImagingStudy", "s")),
        ("user/ImagingStudy.cud", scope(U, "ImagingStudy", "cud")),
        ("system/*.cruds", scope(S, "*", "cruds")),
        ("patient/*.rs", scope(P, "*", "rs")),
        (
            "patient/ImagingStudy.rs?modality=CT",
            scope(P, "ImagingStudy", "rs", ("modality", "CT")),
        ),
        (
            "user/ImagingStudy.s?modality=MR&started=ge2020",
            scope(U, "ImagingStudy", "s", ("modality", "MR"), ("started", "ge2020")),
        ),
        (
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
            "observation-category|laboratory",
            scope(
                P,
                "Observation",
                "rs",
                (
                    "category",
                    "http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
                ),
            ),
        ),
        # not resource scopes, or malformed: no access
        ("openid", None),
        ("fhirUser", None),
        ("launch/patient", None),
        ("launch", None),
        ("offline_access", None),
        ("patient/ImagingStudy.sr", None),  # v2 letters out of order
        ("patient/ImagingStudy.rr", None),
        ("patient/ImagingStudy.RS", None),
        ("patient/ImagingStudy.", None),
        ("patient/ImagingStudy", None),
        ("patient/imagingStudy.rs", None),  # resource types start with a capital
        ("encounter/ImagingStudy.rs", None),
        ("patient/ImagingStudy.read?modality=CT", None),  # v1 has no restriction
        ("patient/ImagingStudy.cud?modality=CT", None),  # a restriction needs r or s
        ("patient/ImagingStudy.rs?", None),
        ("patient/ImagingStudy.rs?=CT", None),
        ("patient/ImagingStudy.rs?modality=%FF", None),
        ("patient/ImagingStudy.rsx", None),
        ("Patient/ImagingStudy.rs", None),
    ],
)
def test_parse_scope(text: str, expected: ResourceScope | None) -> None:
    assert parse_scope(text) == expected


def test_a_scope_string_is_split_on_spaces_and_the_rest_is_listed_as_ignored() -> None:
    grant = parse_scopes(
        "openid fhirUser launch/patient  patient/ImagingStudy.rs patient/ImagingStudy.rs "
        "user/*.read bogus"
    )
    assert grant.scopes == (scope(P, "ImagingStudy", "rs"), scope(U, "*", "rs"))
    assert grant.ignored == ("openid", "fhirUser", "launch/patient", "bogus")


@pytest.mark.parametrize(
    ("scopes", "resource", "permission", "levels"),
    [
        ("patient/ImagingStudy.rs", "ImagingStudy", "r", {P}),
        ("patient/ImagingStudy.rs", "ImagingStudy", "s", {P}),
        ("patient/ImagingStudy.rs", "ImagingStudy", "c", set()),
        ("patient/ImagingStudy.rs", "Patient", "r", set()),
        ("patient/*.read user/ImagingStudy.write", "ImagingStudy", "c", {U}),
        ("patient/*.read user/ImagingStudy.write", "Patient", "r", {P}),
        ("system/*.cruds patient/ImagingStudy.r", "ImagingStudy", "r", {S, P}),
        ("openid fhirUser", "ImagingStudy", "r", set()),
        ("", "ImagingStudy", "r", set()),
    ],
)
def test_levels(scopes: str, resource: str, permission: str, levels: set[Level]) -> None:
    assert parse_scopes(scopes).levels(resource, permission) == levels


@pytest.mark.parametrize(
    ("scopes", "restrictions"),
    [
        ("patient/ImagingStudy.rs", None),
        ("patient/ImagingStudy.rs?modality=CT", ((("modality", "CT"),),)),
        (
            "patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs?modality=MR",
            ((("modality", "CT"),), (("modality", "MR"),)),
        ),
        ("patient/ImagingStudy.rs?modality=CT patient/*.rs", None),  # one unrestricted
        ("user/ImagingStudy.rs?modality=CT", ()),  # nothing at the patient level
        ("patient/ImagingStudy.r?modality=CT", ()),  # grants r, not s
    ],
)
def test_search_restrictions(
    scopes: str, restrictions: tuple[tuple[tuple[str, str], ...], ...] | None
) -> None:
    assert parse_scopes(scopes).restrictions("ImagingStudy", "s", P) == restrictions


def test_an_empty_grant_allows_nothing() -> None:
    assert Grant().levels("ImagingStudy", "r") == frozenset()
