"""DICOM patient module -> FHIR R4 Patient (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pacsfhir.mapping.codes import V2_0203
from pacsfhir.mapping.dates import dicom_datetime, format_instant
from pacsfhir.mapping.names import human_names

_GENDER = {"M": "male", "F": "female", "O": "other"}


def patient_identifier(row: Mapping[str, Any]) -> dict[str, Any] | None:
    if not row["PatientID"]:
        return None
    identifier: dict[str, Any] = {
        "use": "usual",
        "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
    }
    if row["identifier_system"]:
        identifier["system"] = row["identifier_system"]
    identifier["value"] = row["PatientID"]
    if row["IssuerOfPatientID"]:
        identifier["assigner"] = {"display": row["IssuerOfPatientID"]}
    return identifier


def patient(row: Mapping[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": row["resource_id"],
        "meta": {
            "versionId": str(row["version_id"]),
            "lastUpdated": format_instant(row["last_updated"]),
        },
    }
    identifier = patient_identifier(row)
    if identifier:
        resource["identifier"] = [identifier]
    names = human_names(row["PatientName"])
    if names:
        resource["name"] = names
    gender = _GENDER.get(row["PatientSex"])
    if gender:
        resource["gender"] = gender
    birth_date = dicom_datetime(row["PatientBirthDate"], "", "")
    if birth_date:
        resource["birthDate"] = birth_date
    return resource
