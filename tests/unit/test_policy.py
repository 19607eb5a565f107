"""What a token's grant makes of a request (table tests over auth.policy)."""

from __future__ import annotations

import pytest

from pacsfhir.auth.policy import (
    IMAGING_READ,
    IMAGING_SEARCH,
    Access,
    Need,
    Surface,
    decide,
    need_of,
    surface_of,
)
from pacsfhir.auth.scopes import parse_scopes

STOW = Need("ImagingStudy", "c")


@pytest.mark.parametrize(
    ("scopes", "patient", "need", "access"),
    [
        ("patient/ImagingStudy.rs", "a", IMAGING_SEARCH, Access(True, "a")),
        ("patient/ImagingStudy.read", "a", IMAGING_READ, Access(True, "a")),
        ("patient/*.rs", "a", IMAGING_READ, Access(True, "a")),
        ("patient/ImagingStudy.s", "a", IMAGING_READ, Access(False)),  # search is not read
        ("patient/ImagingStudy.rs", None, IMAGING_SEARCH, Access(False)),  # no patient
        ("user/ImagingStudy.rs", None, IMAGING_SEARCH, Access(True)),
        ("user/ImagingStudy.rs", "a", IMAGING_SEARCH, Access(True)),  # user rights win
        ("system/*.read", None, IMAGING_READ, Access(True)),
        ("system/*.rs patient/ImagingStudy.rs", "a", IMAGING_READ, Access(True)),
        ("patient/Observation.rs", "a", IMAGING_SEARCH, Access(False)),
        ("openid fhirUser launch/patient", "a", IMAGING_READ, Access(False)),
        ("patient/ImagingStudy.rs", "a", STOW, Access(False)),  # reading is not writing
        ("patient/ImagingStudy.cud", "a", STOW, Access(True, "a")),
        ("system/*.write", None, STOW, Access(True)),
        ("patient/ImagingStudy.rs", "a", Need("Patient", "r"), Access(False)),
        ("patient/Patient.read", "a", Need("Patient", "r"), Access(True, "a")),
        # the audit log is about every patient: no patient-level scope reaches it
        ("patient/*.rs", "a", Need("AuditEvent", "s"), Access(False)),
        ("patient/AuditEvent.read", "a", Need("AuditEvent", "r"), Access(False)),
        ("user/AuditEvent.rs", None, Need("AuditEvent", "s"), Access(True)),
        ("system/*.rs patient/*.rs", "a", Need("AuditEvent", "r"), Access(True)),
        # v2 search restrictions: honoured on ImagingStudy read and search
        (
            "system/ImagingStudy.rs?modality=CT system/*.rs",  # one unrestricted suffices
            None,
            IMAGING_SEARCH,
            Access(True),
        ),
        # an unrestricted level is preferred to a broader restricted one (may under-grant)
        (
            "system/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs",
            "a",
            IMAGING_SEARCH,
            Access(True, "a"),
        ),
        ("patient/ImagingStudy.rs?modality=CT", None, IMAGING_SEARCH, Access(False)),
        # refused: a restricted write, Patient or AuditEvent
        ("patient/ImagingStudy.cruds?modality=CT", "a", STOW, Access(False)),
        ("user/ImagingStudy.cruds?modality=CT", None, STOW, Access(False)),
        ("user/Patient.rs?gender=female", None, Need("Patient", "r"), Access(False)),
        ("user/AuditEvent.rs?type=rest", None, Need("AuditEvent", "s"), Access(False)),
        ("user/*.rs?modality=CT", None, Need("AuditEvent", "s"), Access(False)),
        # a restricted read does not write, an unrestricted write is not restricted
        ("user/ImagingStudy.rs?modality=CT user/ImagingStudy.c", None, STOW, Access(True)),
    ],
)
def test_decide(scopes: str, patient: str | None, need: Need, access: Access) -> None:
    decided = decide(parse_scopes(scopes), patient, need)
    assert (decided.allowed, decided.patient) == (access.allowed, access.patient)
    assert decided.allowed or decided.reason


@pytest.mark.parametrize(
    ("surface", "method", "template", "need"),
    [
        (Surface.FHIR, "GET", "/fhir/metadata", None),
        (Surface.FHIR, "GET", "/fhir/ImagingStudy", IMAGING_SEARCH),
        (Surface.FHIR, "POST", "/fhir/ImagingStudy/_search", IMAGING_SEARCH),
        (Surface.FHIR, "GET", "/fhir/ImagingStudy/{study_id}", IMAGING_READ),
        (Surface.DICOMWEB, "GET", "/studies", IMAGING_SEARCH),
        (Surface.DICOMWEB, "GET", "/studies/{study_uid}/series", IMAGING_SEARCH),
        (Surface.DICOMWEB, "GET", "/studies/{study}/metadata", IMAGING_READ),
        (Surface.DICOMWEB, "GET", "/studies/{study}/series/{series}/rendered", IMAGING_READ),
        (Surface.DICOMWEB, "POST", "/studies", STOW),
        (Surface.DICOMWEB, "GET", "/wado", IMAGING_READ),
    ],
)
def test_need_of(surface: Surface, method: str, template: str, need: Need | None) -> None:
    assert need_of(surface, method, template) == need


@pytest.mark.parametrize(
    ("surface", "method", "template"),
    [
        (Surface.FHIR, "DELETE", "/fhir/ImagingStudy/{study_id}"),
        (Surface.FHIR, "GET", "/fhir/Observation"),
        (Surface.DICOMWEB, "DELETE", "/studies/{study}"),
        (Surface.DICOMWEB, "GET", "/workitems"),
    ],
)
def test_a_route_not_listed_is_unknown(surface: Surface, method: str, template: str) -> None:
    with pytest.raises(KeyError):
        need_of(surface, method, template)


@pytest.mark.parametrize(
    ("path", "surface"),
    [
        ("/dicom-web/studies", Surface.DICOMWEB),
        ("/fhir/Patient/p/$wado-rs/studies/1.2", Surface.DICOMWEB),
        ("/fhir/ImagingStudy", Surface.FHIR),
        ("/fhir/Patient/p/ImagingStudy", Surface.FHIR),
        ("/dicom-webx/studies", Surface.FHIR),
        ("/wado", Surface.DICOMWEB),
        ("/fhir/Patient/p/$wado-rs/wado", Surface.DICOMWEB),
        ("/wadox", Surface.FHIR),
        ("/fhir/wado", Surface.FHIR),
    ],
)
def test_surface_of(path: str, surface: Surface) -> None:
    assert surface_of(path) is surface


CT = (("modality", "CT"),)
MR = (("modality", "MR"),)


@pytest.mark.parametrize(
    ("scopes", "patient", "need", "access"),
    [
        ("patient/ImagingStudy.rs?modality=CT", "a", IMAGING_SEARCH, Access(True, "a")),
        ("patient/ImagingStudy.rs?modality=CT", "a", IMAGING_READ, Access(True, "a")),
        ("system/ImagingStudy.rs?modality=CT", None, IMAGING_READ, Access(True)),
        ("user/*.rs?modality=CT", None, IMAGING_SEARCH, Access(True)),
        # a restricted broad level before an unrestricted patient level without a patient
        (
            "user/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs",
            None,
            IMAGING_READ,
            Access(True),
        ),
        # the first restricted level: user before patient
        (
            "patient/ImagingStudy.rs?modality=MR user/ImagingStudy.rs?modality=CT",
            "a",
            IMAGING_READ,
            Access(True),
        ),
    ],
)
def test_decide_restricted(scopes: str, patient: str | None, need: Need, access: Access) -> None:
    decided = decide(parse_scopes(scopes), patient, need)
    assert (decided.allowed, decided.patient) == (access.allowed, access.patient)
    assert decided.restrictions is not None


@pytest.mark.parametrize(
    ("scopes", "restrictions"),
    [
        ("patient/ImagingStudy.rs?modality=CT", (CT,)),
        ("patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs?modality=MR", (CT, MR)),
        ("patient/ImagingStudy.rs?modality=CT&started=ge2020", ((*CT, ("started", "ge2020")),)),
        ("patient/ImagingStudy.rs?started=ge2020&modality=CT", ((*CT, ("started", "ge2020")),)),
        ("patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs?modality=CT", (CT,)),
        # only the level that grants: the user level's MR, not the patient level's CT
        ("user/ImagingStudy.rs?modality=MR patient/ImagingStudy.rs?modality=CT", (MR,)),
        ("patient/ImagingStudy.rs", None),
    ],
)
def test_decide_returns_the_alternatives(
    scopes: str, restrictions: tuple[tuple[tuple[str, str], ...], ...] | None
) -> None:
    decided = decide(parse_scopes(scopes), "a", IMAGING_SEARCH)
    assert decided.allowed
    assert decided.restrictions == restrictions


@pytest.mark.parametrize(
    "need", [STOW, Need("ImagingStudy", "u"), Need("Patient", "r"), Need("AuditEvent", "r")]
)
def test_restricted_only_refuses_what_it_cannot_restrict(need: Need) -> None:
    decided = decide(parse_scopes("user/*.cruds?modality=CT"), None, need)
    assert not decided.allowed
    assert "restrict" in decided.reason
