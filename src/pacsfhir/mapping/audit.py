"""An audit record -> a FHIR R4 AuditEvent (pure), in the DICOM/ATNA vocabulary.

A record is one request to a route that needs a token, allowed or refused. ``type`` is
DICOM 110110 "Patient Record" for a read or a write and 110112 "Query" for a search;
``subtype`` the FHIR restful interaction; ``agent`` the caller (subject, client id,
fhirUser, network address); ``source`` this server; ``entity`` the patients and the study
the request named, and for a search the parameter NAMES only (values may be PHI)."""

from __future__ import annotations

import base64
from typing import Any

from pacsfhir.vocabulary.dates import format_instant
from pacsfhir.vocabulary.records import AuditRecord

DCM = "http://dicom.nema.org/resources/ontology/DCM"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
OBJECT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
CLIENT_ID_SYSTEM = "urn:pacsfhir:client-id"
SUBJECT_SYSTEM = "urn:pacsfhir:token-subject"

# action -> restful interaction
ACTIONS = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "search-type"}
_TYPES = {"E": ("110112", "Query")}  # everything else is 110110 "Patient Record"
_OUTCOME_TEXT = {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}


def outcome_of(status: int) -> int:
    """AuditEvent.outcome of an HTTP status: 0 success, 4 minor failure (a 404, a bad
    parameter), 8 serious failure (refused: 401, 403; or a server error)."""
    if status < 400:
        return 0
    if status in (401, 403) or status >= 500:
        return 8
    return 4


def _agent(record: AuditRecord) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
        "requestor": True,
    }
    who: dict[str, Any] = {}
    if record.subject:
        who["identifier"] = {"system": SUBJECT_SYSTEM, "value": record.subject}
        who["display"] = record.subject
    else:
        who["display"] = "unknown (no valid token)"
    if record.fhir_user:
        who["reference"] = record.fhir_user
    agent["who"] = who
    if record.client_id:
        agent["altId"] = record.client_id
    if record.address:
        agent["network"] = {"address": record.address, "type": "2"}  # 2: IP address
    return agent


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _entities(record: AuditRecord) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    for patient in dict.fromkeys(p for p in (record.patient, record.token_patient) if p):
        entities.append(
            {
                "what": {"reference": f"Patient/{patient}"},
                "type": _coding(OBJECT_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    if record.study_uid:
        entities.append(
            {
                "what": {"reference": f"ImagingStudy/{record.study_uid}"},
                "type": _coding(OBJECT_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "3", "Report"),
            }
        )
    if record.action == "E":
        names = "&".join(record.query_names)
        entity: dict[str, Any] = {
            "type": _coding(OBJECT_TYPE, "2", "System Object"),
            "role": _coding(OBJECT_ROLE, "24", "Query"),
            "description": "search parameter names only (values are not kept)",
        }
        if names:
            entity["query"] = base64.b64encode(names.encode()).decode("ascii")
            entity["detail"] = [{"type": "parameter-names", "valueString": names}]
        entities.append(entity)
    return entities


def audit_event(record: AuditRecord, server: str) -> dict[str, Any]:
    """The AuditEvent of ``record``; ``server`` names the observer (the FHIR base URL)."""
    code, display = _TYPES.get(record.action, ("110110", "Patient Record"))
    interaction = ACTIONS[record.action]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": record.id,
        "type": _coding(DCM, code, display),
        "subtype": [_coding(INTERACTION, interaction, interaction)],
        "action": record.action,
        "recorded": format_instant(record.recorded),
        "outcome": str(record.outcome),
        "outcomeDesc": f"HTTP {record.status} ({_OUTCOME_TEXT.get(record.outcome, '')}) "
        f"to {record.method} {record.route}",
        "agent": [_agent(record)],
        "source": {
            "observer": {"display": server},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
    }
    entities = _entities(record)
    if entities:
        event["entity"] = entities
    return event
