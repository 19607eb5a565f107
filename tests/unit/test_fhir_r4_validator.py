"""The FHIR R4 validator in tests/support/fhir_r4.py accepts valid R4 and rejects invalid R4."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from tests.support import fhir_r4

JSON = dict[str, Any]

# HL7 FHIR R4 (4.0.1) example ImagingStudy/example (imagingstudy-example.json).
HL7_EXAMPLE: JSON = {
    "resourceType": "ImagingStudy",
    "id": "example",
    "meta": {
        "tag": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": "HTEST",
                "display": "test health data",
            }
        ]
    },
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">CT Chest.  John Smith (MRN: 09236). '
        "Accession: W12342398. Performed: 2011-01-01. 3 series, 12 images.</div>",
    },
    "identifier": [
        {
            "system": "urn:dicom:uid",
            "value": "urn:oid:2.16.124.113543.6003.1154777499.30246.19789.3503430045",
        }
    ],
    "status": "available",
    "subject": {"reference": "Patient/dicom"},
    "started": "2011-01-01T11:01:20+03:00",
    "numberOfSeries": 1,
    "numberOfInstances": 1,
    "series": [
        {
            "uid": "2.16.124.113543.6003.2588828330.45298.17418.2723805630",
            "number": 3,
            "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
            "description": "CT Surview 180",
            "numberOfInstances": 1,
            "bodySite": {
                "system": "http://snomed.info/sct",
                "code": "67734004",
                "display": "Upper Trunk Structure",
            },
            "instance": [
                {
                    "uid": "2.16.124.113543.6003.189642796.63084.16748.2599092903",
                    "sopClass": {
                        "system": "urn:ietf:rfc:3986",
                        "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2",
                    },
                    "number": 1,
                }
            ],
        }
    ],
}

_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_CT_IMAGE = {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}
_XR_UID = "2.16.124.113543.6003.1154777499.30246.19789.3503430045"

# HL7 FHIR R4 (4.0.1) example ImagingStudy/example-xr (imagingstudy-example-xr.json).
HL7_EXAMPLE_XR: JSON = {
    "resourceType": "ImagingStudy",
    "id": "example-xr",
    "meta": HL7_EXAMPLE["meta"],
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">XR Wrist 3+ Views. John Smith '
        "(MRN: 09236). Accession: W12342398. Performed: 2017-01-01. 1 series, 2 images.</div>",
    },
    "identifier": [
        {"use": "official", "system": "urn:dicom:uid", "value": f"urn:oid:{_XR_UID[:-1]}6"},
        {
            "use": "usual",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                ]
            },
            "value": "W12342398",
            "assigner": {"reference": "Organization/dicom-organization"},
        },
        {
            "use": "secondary",
            "value": "55551234",
            "assigner": {"reference": "Organization/dicom-organization"},
        },
    ],
    "status": "available",
    "modality": [{"system": _DCM, "code": "DX"}],
    "subject": {"reference": "Patient/dicom"},
    "encounter": {"reference": "Encounter/example"},
    "started": "2017-01-01T11:01:20+03:00",
    "basedOn": [{"reference": "ServiceRequest/example"}],
    "referrer": {"reference": "Practitioner/example"},
    "interpreter": [{"reference": "Practitioner/example"}],
    "endpoint": [{"reference": "Endpoint/example-wadors"}],
    "numberOfSeries": 1,
    "numberOfInstances": 2,
    "procedureReference": {"reference": "Procedure/example"},
    "procedureCode": [
        {
            "coding": [
                {
                    "system": "http://www.radlex.org",
                    "code": "RPID2589",
                    "display": "XR Wrist 3+ Views",
                }
            ],
            "text": "XR Wrist 3+ Views",
        }
    ],
    "reasonCode": [
        {
            "coding": [
                {
                    "system": "http://snomed.info/sct",
                    "code": "357009",
                    "display": "Closed fracture of trapezoidal bone of wrist",
                }
            ]
        }
    ],
    "note": [{"text": "XR Wrist 3+ Views"}],
    "series": [
        {
            "uid": f"{_XR_UID}.1",
            "number": 3,
            "modality": {"system": _DCM, "code": "DX"},
            "description": "XR Wrist 3+ Views",
            "numberOfInstances": 2,
            "endpoint": [{"reference": "Endpoint/example-wadors"}],
            "bodySite": {
                "system": "http://snomed.info/sct",
                "code": "T-15460",
                "display": "Wrist Joint",
            },
            "laterality": {
                "system": "http://snomed.info/sct",
                "code": "419161000",
                "display": "Unilateral left",
            },
            "started": "2011-01-01T11:01:20+03:00",
            "performer": [
                {
                    "function": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "PRF",
                            }
                        ]
                    },
                    "actor": {"reference": "Practitioner/example"},
                }
            ],
            "instance": [
                {"uid": f"{_XR_UID}.1.1", "sopClass": _CT_IMAGE, "number": 1, "title": "PA VIEW"},
                {"uid": f"{_XR_UID}.1.2", "sopClass": _CT_IMAGE, "number": 2, "title": "LL VIEW"},
            ],
        }
    ],
}

MINIMAL: JSON = {
    "resourceType": "ImagingStudy",
    "status": "available",
    "subject": {"reference": "Patient/p1"},
}

ENDPOINT: JSON = {
    "resourceType": "Endpoint",
    "id": "wado",
    "status": "active",
    "connectionType": {
        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
        "code": "dicom-wado-rs",
    },
    "payloadType": [{"text": "DICOM"}],
    "payloadMimeType": ["application/dicom"],
    "address": "https://pacs.example.org/dicom-web",
}


@pytest.fixture(autouse=True)
def _definitions() -> None:
    fhir_r4.require_definitions()


def with_changes(base: JSON, **changes: Any) -> JSON:
    resource = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            resource.pop(key, None)
        else:
            resource[key] = value
    return resource


def problems_about(resource: JSON, needle: str) -> list[str]:
    problems = fhir_r4.validate(resource)
    assert problems, f"expected a problem about {needle!r}, got none"
    return [p for p in problems if needle in p]


# --------------------------------------------------------------------------- valid


@pytest.mark.parametrize("resource", [MINIMAL, HL7_EXAMPLE, HL7_EXAMPLE_XR, ENDPOINT])
def test_valid_resources_pass(resource: JSON) -> None:
    fhir_r4.assert_valid(resource)


@pytest.mark.parametrize("started", ["2020", "2020-01", "2020-01-01", "2020-01-01T10:00:00Z"])
def test_partial_and_zoned_datetimes_pass(started: str) -> None:
    assert fhir_r4.validate(with_changes(MINIMAL, started=started)) == []


def test_bundle_and_contained_resources_pass() -> None:
    study = with_changes(
        MINIMAL,
        contained=[{"resourceType": "Patient", "id": "p", "gender": "other"}],
        subject={"reference": "#p"},
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 2,
        "link": [{"relation": "self", "url": "https://pacs.example.org/fhir/ImagingStudy"}],
        "entry": [
            {
                "fullUrl": f"https://pacs.example.org/fhir/ImagingStudy/{n}",
                "resource": with_changes(study, id=str(n)),
                "search": {"mode": "match"},
            }
            for n in (1, 2)
        ],
    }
    assert fhir_r4.validate(bundle) == []


def test_no_invariant_of_the_resources_we_emit_is_skipped() -> None:
    before = set(fhir_r4.SKIPPED_CONSTRAINTS)
    for resource in (MINIMAL, HL7_EXAMPLE, HL7_EXAMPLE_XR, ENDPOINT):
        fhir_r4.validate(resource)
    assert set(fhir_r4.SKIPPED_CONSTRAINTS) == before


def test_validate_does_not_modify_the_resource() -> None:
    resource = copy.deepcopy(HL7_EXAMPLE_XR)
    fhir_r4.validate(resource)
    assert resource == HL7_EXAMPLE_XR


# --------------------------------------------------------------------------- invalid


def test_wrong_status_code() -> None:
    assert problems_about(with_changes(MINIMAL, status="done"), "ImagingStudy.status")


def test_missing_subject() -> None:
    assert problems_about(with_changes(MINIMAL, subject=None), "subject")


def test_missing_status_is_caught_although_the_schema_does_not_require_primitives() -> None:
    assert problems_about(with_changes(MINIMAL, status=None), "[cardinality] ImagingStudy.status")


def test_datetime_with_hours_needs_a_time_zone() -> None:
    # R4: "If hours and minutes are specified, a time zone SHALL be populated"; HL7's schema
    # regex for dateTime encodes it, so the [schema] check reports it.
    assert problems_about(with_changes(MINIMAL, started="2020-01-01T10:00:00"), "started")


def test_impossible_calendar_date() -> None:
    assert problems_about(with_changes(MINIMAL, started="2021-02-30"), "[primitive]")


@pytest.mark.parametrize("count", [-1, 1.5, True, "2"])
def test_unsigned_int_must_be_a_non_negative_integer(count: Any) -> None:
    assert problems_about(with_changes(MINIMAL, numberOfSeries=count), "numberOfSeries")


@pytest.mark.parametrize("system", [123, {"value": "x"}, "not a uri"])
def test_identifier_with_invalid_system(system: Any) -> None:
    identifier = [{"system": system, "value": "1.2.3"}]
    assert problems_about(with_changes(MINIMAL, identifier=identifier), "identifier[0].system")


def test_identifier_with_invalid_use_code() -> None:
    identifier = [{"use": "primary", "value": "1.2.3"}]
    assert problems_about(with_changes(MINIMAL, identifier=identifier), "identifier[0].use")


@pytest.mark.parametrize("subject", ["Patient/p1", None, ["Patient/p1"], 1])
def test_complex_element_must_be_an_object(subject: Any) -> None:
    study = {**MINIMAL, "subject": subject}
    assert problems_about(study, "ImagingStudy.subject")


def test_backbone_element_must_be_an_object() -> None:
    assert problems_about(with_changes(MINIMAL, series=["1.2.3"]), "ImagingStudy.series[0]")


def test_unknown_property() -> None:
    assert problems_about(with_changes(MINIMAL, studyInstanceUid="1.2.3"), "studyInstanceUid")


def test_medplum_only_properties_are_not_r4() -> None:
    meta = {"project": "p", "author": {"reference": "Practitioner/x"}}
    assert problems_about(with_changes(MINIMAL, meta=meta), "project")


@pytest.mark.parametrize("resource_type", ["Project", "SubscriptionStatus", "Foo"])
def test_non_r4_resource_types_are_rejected(resource_type: str) -> None:
    assert problems_about({"resourceType": resource_type}, "not an R4 resource type")


def test_patient_with_unknown_gender() -> None:
    assert problems_about({"resourceType": "Patient", "gender": "x"}, "Patient.gender")


def test_endpoint_missing_connection_type_and_payload_type() -> None:
    endpoint = with_changes(ENDPOINT, connectionType=None, payloadType=None)
    assert problems_about(endpoint, "connectionType")
    assert problems_about(endpoint, "payloadType")


def test_empty_arrays_and_objects_are_not_allowed() -> None:
    assert problems_about(with_changes(MINIMAL, series=[]), "arrays SHALL NOT be empty")
    assert problems_about(with_changes(MINIMAL, subject={}), "[invariant ele-1]")


def test_codeable_concept_required_binding() -> None:
    system = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    condition = {"resourceType": "Condition", "subject": {"reference": "Patient/p"}}
    active = {"coding": [{"system": system, "code": "active"}]}
    assert fhir_r4.validate({**condition, "clinicalStatus": active}) == []
    bogus = {"coding": [{"system": system, "code": "bogus"}], "text": "Bogus"}
    assert problems_about({**condition, "clinicalStatus": bogus}, "[binding]")


def test_two_choice_type_values_exceed_cardinality() -> None:
    extension = [{"url": "http://example.org/x", "valueString": "a", "valueBoolean": True}]
    assert problems_about(with_changes(MINIMAL, extension=extension), "value[x]")


def test_data_type_invariant_ext_1() -> None:
    extension = [
        {
            "url": "http://example.org/x",
            "valueString": "a",
            "extension": [{"url": "http://example.org/y", "valueString": "b"}],
        }
    ]
    assert problems_about(with_changes(MINIMAL, extension=extension), "[invariant ext-1]")


@pytest.mark.parametrize(
    ("start", "end", "valid"),
    [
        ("2020-01-01T10:00:00+01:00", "2020-01-01T09:30:00Z", True),  # 09:00Z < 09:30Z
        ("2020-01-01T10:00:00Z", "2020-01-01T09:30:00+01:00", False),
        ("2020-01-01", "2020-01-01T10:00:00Z", True),
        ("2020-01-02", "2020-01-01", False),
    ],
)
def test_period_start_not_after_end(start: str, end: str, valid: bool) -> None:
    endpoint = {**ENDPOINT, "period": {"start": start, "end": end}}
    problems = fhir_r4.validate(endpoint)
    assert (problems == []) is valid, problems
    assert valid or "[invariant per-1]" in problems[0]


def test_local_reference_needs_a_contained_resource() -> None:
    assert problems_about(with_changes(MINIMAL, subject={"reference": "#p"}), "[invariant ref-1]")


def test_contained_resource_must_be_referenced() -> None:
    contained = [{"resourceType": "Patient", "id": "p"}]
    assert problems_about(with_changes(MINIMAL, contained=contained), "[invariant dom-3]")


def test_narrative_must_be_xhtml() -> None:
    text = {"status": "generated", "div": "<div><script>alert(1)</script></div>"}
    assert problems_about(with_changes(MINIMAL, text=text), "[invariant txt-1]")


def test_errors_inside_contained_and_bundle_entries_are_found() -> None:
    contained = [{"resourceType": "Patient", "id": "p", "gender": "x"}]
    study = with_changes(MINIMAL, contained=contained, subject={"reference": "#p"})
    assert problems_about(study, "ImagingStudy.contained[0].gender")
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": study}]}
    assert problems_about(bundle, "Bundle.entry[0].resource.contained[0].gender")


def test_assert_valid_lists_every_problem() -> None:
    bad = with_changes(MINIMAL, status="done", subject=None)
    with pytest.raises(AssertionError) as raised:
        fhir_r4.assert_valid(bad)
    message = str(raised.value)
    assert "status" in message
    assert "subject" in message


# --------------------------------------------------------------------------- lookups


def test_r4_has_146_resource_types() -> None:
    types = fhir_r4.r4_resource_types()
    assert len(types) == 146
    assert {"ImagingStudy", "Endpoint", "Patient", "Bundle"} <= types


def test_search_parameters_for_imaging_study() -> None:
    params = fhir_r4.search_parameters("ImagingStudy")
    assert {"_id", "_lastUpdated", "patient", "modality", "started", "identifier"} <= set(params)
    assert params["_id"]["type"] == "token"
    assert params["_lastUpdated"]["type"] == "date"
    assert params["patient"]["expression"] == "ImagingStudy.subject.where(resolve() is Patient)"
    assert params["modality"]["type"] == "token"
    assert params["modality"]["expression"] == "ImagingStudy.series.modality"
    assert all("type" in p and "expression" in p for p in params.values())


def test_patient_compartment() -> None:
    compartment = fhir_r4.patient_compartment()
    assert compartment["ImagingStudy"] == ["patient"]
    assert compartment["Endpoint"] == []


def test_validating_a_hundred_studies_is_fast() -> None:
    studies = []
    for n in range(100):
        study = with_changes(HL7_EXAMPLE_XR, id=f"s{n}")
        study["series"] = [copy.deepcopy(HL7_EXAMPLE_XR["series"][0]) for _ in range(3)]
        studies.append(study)
    fhir_r4.validate(MINIMAL)  # load the definitions outside the timing
    start = time.perf_counter()
    assert all(fhir_r4.validate(study) == [] for study in studies)
    assert time.perf_counter() - start < 20
