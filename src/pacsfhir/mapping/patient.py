"""DICOM patient module -> FHIR R4 Patient, and the EHR's patients linked to them (pure).

A DICOM patient's Patient is derived from its module (``patient``). An EHR patient (see
``index.links``) is the resource the EHR gave (``linked_patient``), its identifiers read
as DICOM holds them (``identity_keys``). A DICOM patient linked to an EHR patient says so
with a ``link`` of type ``refer`` (the EHR's is the main record), and the EHR patient
lists the DICOM patients linked to it with ``seealso`` links.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pacsfhir.vocabulary.codes import V2_0203
from pacsfhir.vocabulary.dates import dicom_datetime, format_instant
from pacsfhir.vocabulary.names import human_names
from pacsfhir.vocabulary.records import IdentityKey

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
    if row.get("linked_to"):
        resource["link"] = [
            {"other": {"reference": f"Patient/{row['linked_to']}"}, "type": "refer"}
        ]
    return resource


def identity_keys(resource: Mapping[str, Any]) -> list[IdentityKey]:
    """The keys of a (checked, see ``check_linked_patient``) Patient's identifiers: one per
    identifier with a value. Without a system, ``assigner.display`` stands for the Issuer
    of Patient ID, as the derived Patient shows it."""
    keys = []
    for identifier in resource.get("identifier", []):
        value = identifier.get("value", "")
        if not value:
            continue
        system = identifier.get("system", "")
        issuer = "" if system else identifier.get("assigner", {}).get("display", "")
        keys.append(IdentityKey(value, system, issuer))
    return keys


_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
MAX_IDENTIFIERS = 100


class ResourceProblem(ValueError):
    """What is wrong with a resource, and where (a FHIRPath expression)."""

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(message)
        self.expression = expression


def check_linked_patient(resource: Any, path_id: str) -> dict[str, Any]:
    """A Patient written to ``Patient/{path_id}``, checked for what linking relies on, and
    without ``meta`` (the server's). Raises ``ResourceProblem``."""
    if not isinstance(resource, dict):
        raise ResourceProblem("the body is not a JSON object", "Patient")
    if resource.get("resourceType") != "Patient":
        raise ResourceProblem("resourceType must be Patient", "Patient.resourceType")
    if not _ID.fullmatch(path_id):
        raise ResourceProblem(f"{path_id!r} is not a FHIR id", "Patient.id")
    if resource.get("id") != path_id:
        raise ResourceProblem(
            f"the resource's id must be the id in the URL ({path_id})", "Patient.id"
        )
    identifiers = resource.get("identifier", [])
    if not isinstance(identifiers, list) or len(identifiers) > MAX_IDENTIFIERS:
        raise ResourceProblem(
            f"identifier must be a list of at most {MAX_IDENTIFIERS}", "Patient.identifier"
        )
    for number, identifier in enumerate(identifiers):
        _check_identifier(identifier, f"Patient.identifier[{number}]")
    return {k: v for k, v in resource.items() if k != "meta"}


def _check_identifier(identifier: Any, where: str) -> None:
    if not isinstance(identifier, dict):
        raise ResourceProblem("an Identifier is a JSON object", where)
    for element in ("system", "value"):
        value = identifier.get(element, "")
        if not isinstance(value, str) or (element in identifier and not value.strip()):
            raise ResourceProblem(f"{element} must be a non-empty string", f"{where}.{element}")
    assigner = identifier.get("assigner", {})
    if not isinstance(assigner, dict) or not isinstance(assigner.get("display", ""), str):
        raise ResourceProblem("assigner.display must be a string", f"{where}.assigner")


def linked_patient(
    resource: Mapping[str, Any],
    version_id: int,
    last_updated: int,
    linked: Sequence[str],
) -> dict[str, Any]:
    """An EHR patient as served: as written, with the server's meta, and a ``seealso``
    link to each DICOM patient linked to it (``linked``) after the links it came with."""
    served: dict[str, Any] = {
        "resourceType": "Patient",
        "id": resource["id"],
        "meta": {"versionId": str(version_id), "lastUpdated": format_instant(last_updated)},
    }
    served.update((k, v) for k, v in resource.items() if k not in ("resourceType", "id", "meta"))
    own_links = [
        link
        for link in served.get("link", [])
        if not (
            link.get("type") == "seealso" and _reference(link) in {f"Patient/{i}" for i in linked}
        )
    ]
    links = own_links + [
        {"other": {"reference": f"Patient/{i}"}, "type": "seealso"} for i in linked
    ]
    if links:
        served["link"] = links
    return served


def _reference(link: Mapping[str, Any]) -> str | None:
    other = link.get("other")
    return other.get("reference") if isinstance(other, dict) else None
