"""Patient ids and identifier systems derived from DICOM issuers."""

from __future__ import annotations

import hashlib
import re

import pytest

from pacsfhir.dicom.uids import is_valid_uid
from pacsfhir.vocabulary.ids import (
    endpoint_patient,
    issuer_system,
    patient_endpoint_id,
    patient_resource_id,
)

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def test_patient_id_is_deterministic_and_a_fhir_id() -> None:
    first = patient_resource_id("HOSP", "123", "1.2.3")
    assert first == patient_resource_id("HOSP", "123", "9.9.9")
    assert FHIR_ID.fullmatch(first)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("HOSP", "123", "1.2"), ("OTHER", "123", "1.2")),  # same ID, other issuer
        (("", "123", "1.2"), ("", "1234", "1.2")),
        (("A\\B", "C", "1.2"), ("A", "B\\C", "1.2")),  # no ambiguity through the separator
        (("", "", "1.2.3"), ("", "", "1.2.4")),  # no Patient ID: one patient per study
    ],
)
def test_distinct_patients_get_distinct_ids(
    a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    assert patient_resource_id(*a) != patient_resource_id(*b)


@pytest.mark.parametrize(
    ("issuer", "qualifiers", "expected"),
    [
        ("HOSP", {}, ""),
        ("1.2.840.113619", {}, "urn:oid:1.2.840.113619"),
        (
            "HOSP",
            {"UniversalEntityID": "2.16.840.1.1", "UniversalEntityIDType": "ISO"},
            "urn:oid:2.16.840.1.1",
        ),
        (
            "",
            {
                "UniversalEntityID": "C5A1E2B0-0000-4000-8000-000000000001",
                "UniversalEntityIDType": "UUID",
            },
            "urn:uuid:c5a1e2b0-0000-4000-8000-000000000001",
        ),
        (
            "",
            {"UniversalEntityID": "https://hosp.example/ids", "UniversalEntityIDType": "URI"},
            "https://hosp.example/ids",
        ),
        ("", {"UniversalEntityID": "not an oid", "UniversalEntityIDType": "ISO"}, ""),
    ],
)
def test_issuer_system(issuer: str, qualifiers: dict[str, str], expected: str) -> None:
    assert issuer_system(issuer, qualifiers) == expected


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.1.2", True),
        ("1.2.3.04", True),  # leading zero: not conformant, common, harmless
        ("1" * 64, True),
        ("1" * 65, False),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("../../etc/passwd", False),
        ("1.2.3\0", False),
        ("", False),
        ("1.2.abc", False),
    ],
)
def test_uid_validation(uid: str, valid: bool) -> None:
    assert is_valid_uid(uid) is valid


LONG = "e" * 64  # an EHR id of FHIR's full 64 characters


@pytest.mark.parametrize(
    ("patient_id", "endpoint_id"),
    [
        ("p-1", "wado-p-1"),
        ("x" * 59, "wado-" + "x" * 59),  # exactly 64
        (LONG, "wadoh-" + hashlib.sha256(LONG.encode()).hexdigest()[:58]),
    ],
)
def test_patient_endpoint_ids_fit_fhir_ids(patient_id: str, endpoint_id: str) -> None:
    assert patient_endpoint_id(patient_id) == endpoint_id
    assert FHIR_ID.fullmatch(endpoint_id)
    assert endpoint_patient(endpoint_id, ["other", patient_id]) == patient_id


@pytest.mark.parametrize(
    ("endpoint_id", "candidates", "patient"),
    [
        ("dicomweb", [LONG], None),
        ("wadoh-" + "0" * 58, [LONG], None),  # a digest of no candidate
        (patient_endpoint_id(LONG), [], None),  # nobody to match it against
        (patient_endpoint_id(LONG), ["f" * 64], None),
        ("wado-h-1", [], "h-1"),  # an id that begins with h- is not a digest
    ],
)
def test_endpoint_patient(endpoint_id: str, candidates: list[str], patient: str | None) -> None:
    assert endpoint_patient(endpoint_id, candidates) == patient
