"""DICOM study rows -> ImagingStudy, element by element (pure mapping, no index)."""

from __future__ import annotations

from typing import Any

import pytest

from pacsfhir.mapping.imagingstudy import imaging_study, study_modalities
from pacsfhir.vocabulary.records import SeriesRows
from tests.support.fhir_r4 import assert_valid, require_definitions

PATIENT = {"resource_id": "p1", "PatientName": "Doe^Jane"}
STUDY: dict[str, Any] = {
    "StudyInstanceUID": "1.2.3",
    "version_id": 2,
    "last_updated": 1_700_000_000_000_000,
    "AccessionNumber": "",
    "accession_system": "",
    "accession_issuer": "",
    "StudyID": "",
    "modalities": "",
    "StudyDate": "",
    "StudyTime": "",
    "TimezoneOffsetFromUTC": "",
    "ReferringPhysicianName": "",
    "NameOfPhysiciansReadingStudy": [],
    "number_of_series": 1,
    "number_of_instances": 1,
    "ProcedureCodeSequence": [],
    "ReasonForRequestedProcedureCodeSequence": [],
    "ReasonForTheRequestedProcedure": "",
    "StudyDescription": "",
}
SERIES: dict[str, Any] = {
    "SeriesInstanceUID": "1.2.3.4",
    "SeriesNumber": "",
    "Modality": "CT",
    "SeriesDescription": "",
    "number_of_instances": 1,
    "BodyPartExamined": "",
    "Laterality": "",
    "SeriesDate": "",
    "SeriesTime": "",
    "PerformingPhysicianName": [],
    "OperatorsName": [],
}
INSTANCE = {
    "SOPInstanceUID": "1.2.3.4.5",
    "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
    "InstanceNumber": "1",
    "title": "",
}

CT = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT",
      "display": "Computed Tomography"}  # fmt: skip
CODE = {"CodeValue": "123", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Thing"}

# (study overrides, series overrides) -> {element: expected value} of the ImagingStudy
CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("minimal", {}, {}, {"status": "available", "numberOfSeries": 1}),
    ("modalities: only CID 29", {"modalities": "CT\\SR\\KO"}, {}, {"modality": [CT]}),
    ("modalities: reports only", {"modalities": "SR"}, {}, {"modality": None}),
    (
        "accession with issuer",
        {"AccessionNumber": "A1", "accession_system": "urn:oid:1.2", "accession_issuer": "H"},
        {},
        {
            "identifier": [
                {"use": "official", "system": "urn:dicom:uid", "value": "urn:oid:1.2.3"},
                {
                    "use": "usual",
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "ACSN",
                            }
                        ]
                    },
                    "system": "urn:oid:1.2",
                    "value": "A1",
                    "assigner": {"display": "H"},
                },
            ]
        },
    ),
    (
        "started: date only",
        {"StudyDate": "20200102", "StudyTime": "0304"},
        {},
        {"started": "2020-01-02"},
    ),
    (
        "started: with offset",
        {"StudyDate": "20200102", "StudyTime": "0304", "TimezoneOffsetFromUTC": "+0100"},
        {},
        {"started": "2020-01-02T03:04:00+01:00"},
    ),
    (
        "referrer",
        {"ReferringPhysicianName": "Who^Doctor"},
        {},
        {"referrer": {"display": "Doctor Who"}},
    ),
    (
        "interpreter",
        {"NameOfPhysiciansReadingStudy": ["A^B", "C^D"]},
        {},
        {"interpreter": [{"display": "B A"}, {"display": "D C"}]},
    ),
    (
        "reason: codes and text",
        {
            "ReasonForRequestedProcedureCodeSequence": [CODE],
            "ReasonForTheRequestedProcedure": "pain",
        },
        {},
        {
            "reasonCode": [
                {
                    "coding": [
                        {"system": "http://snomed.info/sct", "code": "123", "display": "Thing"}
                    ],
                    "text": "Thing",
                },
                {"text": "pain"},
            ]
        },
    ),
    (
        "procedure",
        {"ProcedureCodeSequence": [CODE]},
        {},
        {
            "procedureCode": [
                {
                    "coding": [
                        {"system": "http://snomed.info/sct", "code": "123", "display": "Thing"}
                    ],
                    "text": "Thing",
                }
            ]
        },
    ),
    ("description", {"StudyDescription": "Head"}, {}, {"description": "Head"}),
]
SERIES_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("body part in the table", {"BodyPartExamined": "ABDOMEN"},
     {"bodySite": {"system": "http://snomed.info/sct", "code": "818981001", "display": "Abdomen"}}),
    ("body part not in the table", {"BodyPartExamined": "WHOLE BODY"},
     {"bodySite": {"display": "WHOLE BODY"}}),
    ("laterality", {"Laterality": "L"},
     {"laterality": {"system": "http://snomed.info/sct", "code": "7771000", "display": "Left"}}),
    # "Other" is OT's meaning in CID 33 "Modality" (PS3.16)
    ("empty modality is OT", {"Modality": ""},
     {"modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "OT",
                   "display": "Other"}}),
    ("series number", {"SeriesNumber": "7"}, {"number": 7}),
    ("negative series number is dropped", {"SeriesNumber": "-1"}, {"number": None}),
    ("performers", {"PerformingPhysicianName": ["Ph^Ys"], "OperatorsName": ["Op^Er"]},
     {"performer": [
         {"function": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                   "code": "PRF"}]}, "actor": {"display": "Ys Ph"}},
         {"function": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                   "code": "SPRF"}]}, "actor": {"display": "Er Op"}}]}),
]  # fmt: skip


def build(study: dict[str, Any], series: dict[str, Any]) -> dict[str, Any]:
    rows = [SeriesRows({**SERIES, **series}, [INSTANCE])]
    return imaging_study({**STUDY, **study}, PATIENT, rows)


@pytest.mark.parametrize(("name", "study", "series", "expected"), CASES, ids=[c[0] for c in CASES])
def test_study_elements(
    name: str, study: dict[str, Any], series: dict[str, Any], expected: dict[str, Any]
) -> None:
    resource = build(study, series)
    for element, value in expected.items():
        assert resource.get(element) == value, element


@pytest.mark.parametrize(
    ("name", "series", "expected"), SERIES_CASES, ids=[c[0] for c in SERIES_CASES]
)
def test_series_elements(name: str, series: dict[str, Any], expected: dict[str, Any]) -> None:
    (mapped,) = build({}, series)["series"]
    for element, value in expected.items():
        assert mapped.get(element) == value, element


def test_instances_and_series_are_in_number_order() -> None:
    rows = [
        SeriesRows({**SERIES, "SeriesInstanceUID": f"1.{n}", "SeriesNumber": str(n)},
                   [{**INSTANCE, "SOPInstanceUID": f"1.{n}.{i}", "InstanceNumber": str(i)}
                    for i in (10, 2, 1)])
        for n in (3, 1, 2)
    ]  # fmt: skip
    resource = imaging_study(STUDY, PATIENT, rows)
    assert [s["number"] for s in resource["series"]] == [1, 2, 3]
    assert [i["number"] for i in resource["series"][0]["instance"]] == [1, 2, 10]


def test_every_case_is_valid_r4() -> None:
    require_definitions()
    for _, study, series, _ in CASES:
        assert_valid(build(study, series))
    for _, series, _ in SERIES_CASES:
        assert_valid(build({}, series))


def test_study_modalities_keeps_acquisition_modalities_only() -> None:
    assert study_modalities(["MR", "CT", "SEG", "", "CT"]) == ["CT", "MR"]
