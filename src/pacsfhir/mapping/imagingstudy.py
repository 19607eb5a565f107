"""DICOM study -> FHIR R4 ImagingStudy, following the spec's DICOM mapping (pure).

Inputs are the index's rows as plain mappings keyed by DICOM keyword (JSON columns
already decoded); references are relative (``Patient/{id}``, ``Endpoint/{id}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pacsfhir.vocabulary import codes
from pacsfhir.vocabulary.body_part_table import BODY_PART_SNOMED, LATERALITY_SNOMED
from pacsfhir.vocabulary.dates import dicom_datetime, format_instant
from pacsfhir.vocabulary.ids import DICOM_UID_SYSTEM, ENDPOINT_ID, uid_urn
from pacsfhir.vocabulary.names import display_name
from pacsfhir.vocabulary.records import Row, SeriesRows


def _unsigned(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _number_key(text: str) -> tuple[int, int, str]:
    stripped = text.strip().lstrip("+-")
    if stripped.isdigit():
        return (0, int(text), "")
    return (1, 0, text)


def _codeable_concept(code: dict[str, str]) -> dict[str, Any]:
    concept: dict[str, Any] = {}
    coding = codes.dicom_code_coding(code)
    if coding.get("code"):
        concept["coding"] = [coding]
    if code.get("CodeMeaning"):
        concept["text"] = code["CodeMeaning"]
    return concept


def identifiers(study: Row) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {"use": "official", "system": DICOM_UID_SYSTEM, "value": uid_urn(study["StudyInstanceUID"])}
    ]
    if study["AccessionNumber"]:
        accession: dict[str, Any] = {
            "use": "usual",
            "type": {"coding": [{"system": codes.V2_0203, "code": "ACSN"}]},
        }
        if study.get("accession_system"):
            accession["system"] = study["accession_system"]
        accession["value"] = study["AccessionNumber"]
        if study.get("accession_issuer"):
            accession["assigner"] = {"display": study["accession_issuer"]}
        result.append(accession)
    if study["StudyID"]:
        result.append({"use": "secondary", "value": study["StudyID"]})
    return result


def _performers(series: Row) -> list[dict[str, Any]]:
    performers = []
    for keyword, function in (("PerformingPhysicianName", "PRF"), ("OperatorsName", "SPRF")):
        for name in series[keyword]:
            display = display_name(name)
            if display:
                performers.append(
                    {
                        "function": {
                            "coding": [{"system": codes.V3_PARTICIPATION, "code": function}]
                        },
                        "actor": {"display": display},
                    }
                )
    return performers


def _body_site(term: str) -> dict[str, Any] | None:
    if not term:
        return None
    known = BODY_PART_SNOMED.get(term)
    if known is None:
        return {"display": term}
    return {"system": codes.SNOMED, "code": known[0], "display": known[1]}


def _laterality(value: str) -> dict[str, Any] | None:
    known = LATERALITY_SNOMED.get(value)
    if known is None:
        return None
    return {"system": codes.SNOMED, "code": known[0], "display": known[1]}


def _instance(row: Row) -> dict[str, Any]:
    result: dict[str, Any] = {
        "uid": row["SOPInstanceUID"],
        "sopClass": codes.sop_class_coding(row["SOPClassUID"]),
    }
    number = _unsigned(row["InstanceNumber"])
    if number is not None:
        result["number"] = number
    if row["title"]:
        result["title"] = row["title"]
    return result


def _series(rows: SeriesRows, offset: str, timezone: str) -> dict[str, Any]:
    series = rows.series
    result: dict[str, Any] = {"uid": series["SeriesInstanceUID"]}
    number = _unsigned(series["SeriesNumber"])
    if number is not None:
        result["number"] = number
    result["modality"] = codes.modality_coding(series["Modality"] or "OT")
    if series["SeriesDescription"]:
        result["description"] = series["SeriesDescription"]
    result["numberOfInstances"] = series["number_of_instances"]
    body_site = _body_site(series["BodyPartExamined"])
    if body_site:
        result["bodySite"] = body_site
    laterality = _laterality(series["Laterality"])
    if laterality:
        result["laterality"] = laterality
    started = dicom_datetime(series["SeriesDate"], series["SeriesTime"], offset, timezone)
    if started:
        result["started"] = started
    performers = _performers(series)
    if performers:
        result["performer"] = performers
    instances = sorted(
        rows.instances, key=lambda r: (_number_key(r["InstanceNumber"]), r["SOPInstanceUID"])
    )
    if instances:
        result["instance"] = [_instance(r) for r in instances]
    return result


def study_modalities(series_modalities: Sequence[str]) -> list[str]:
    """ImagingStudy.modality: in R4, only the series modalities that are acquisition
    modalities (DICOM CID 29); a study of reports only has none."""
    return sorted({m for m in series_modalities if codes.is_acquisition_modality(m)})


def imaging_study(
    study: Row,
    patient: Row,
    series: Sequence[SeriesRows],
    *,
    timezone: str = "",
    elements_series: bool = True,
    endpoint_id: str = ENDPOINT_ID,
) -> dict[str, Any]:
    """The ImagingStudy for one study; ``series`` may be empty when not wanted."""
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": study["StudyInstanceUID"],
        "meta": {
            "versionId": str(study["version_id"]),
            "lastUpdated": format_instant(study["last_updated"]),
        },
        "identifier": identifiers(study),
        "status": "available",
    }
    modalities = study_modalities(study["modalities"].split("\\"))
    if modalities:
        resource["modality"] = [codes.modality_coding(m) for m in modalities]
    # A DICOM patient linked to an EHR patient (index.links) is the EHR's patient here.
    subject_id = patient.get("linked_to") or patient["resource_id"]
    subject: dict[str, Any] = {"reference": f"Patient/{subject_id}"}
    patient_display = display_name(patient["PatientName"])
    if patient_display:
        subject["display"] = patient_display
    resource["subject"] = subject
    started = dicom_datetime(
        study["StudyDate"], study["StudyTime"], study["TimezoneOffsetFromUTC"], timezone
    )
    if started:
        resource["started"] = started
    referrer = display_name(study["ReferringPhysicianName"])
    if referrer:
        resource["referrer"] = {"display": referrer}
    interpreters = [display_name(n) for n in study["NameOfPhysiciansReadingStudy"]]
    if any(interpreters):
        resource["interpreter"] = [{"display": n} for n in interpreters if n]
    resource["endpoint"] = [{"reference": f"Endpoint/{endpoint_id}"}]
    resource["numberOfSeries"] = study["number_of_series"]
    resource["numberOfInstances"] = study["number_of_instances"]
    procedures = [_codeable_concept(c) for c in study["ProcedureCodeSequence"]]
    if any(procedures):
        resource["procedureCode"] = [p for p in procedures if p]
    reasons = [_codeable_concept(c) for c in study["ReasonForRequestedProcedureCodeSequence"]]
    reasons = [r for r in reasons if r]
    if study["ReasonForTheRequestedProcedure"]:
        reasons.append({"text": study["ReasonForTheRequestedProcedure"]})
    if reasons:
        resource["reasonCode"] = reasons
    if study["StudyDescription"]:
        resource["description"] = study["StudyDescription"]
    if series and elements_series:
        ordered = sorted(
            series,
            key=lambda s: (_number_key(s.series["SeriesNumber"]), s.series["SeriesInstanceUID"]),
        )
        # Timezone Offset From UTC (SOP Common) applies to every DA/TM in the instance
        offset = study["TimezoneOffsetFromUTC"]
        resource["series"] = [_series(s, offset, timezone) for s in ordered]
    return resource
