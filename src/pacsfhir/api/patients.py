"""Patient on the FHIR surface: read of a DICOM patient or an EHR patient (through the
store), and ``PUT /fhir/Patient/{id}``, which writes an EHR patient and links to it the
DICOM patients its identifiers match (``index.links``: patient identity is the local
index's in every mode): their studies' ``subject`` becomes that patient, and a token
whose patient it is sees them all."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from pacsfhir.api.bodies import bounded_body, require_media_type
from pacsfhir.api.context import context_of
from pacsfhir.api.responses import (
    FhirResponse,
    check_format,
    pretty_requested,
    read_response,
    version_headers,
)
from pacsfhir.dicom.ingest import to_micros_now
from pacsfhir.errors import BadRequest, Conflict, InvalidResource, NotFound, PreconditionFailed
from pacsfhir.index import links, queries
from pacsfhir.index.writer import lock_index
from pacsfhir.mapping.bundle import operation_outcome
from pacsfhir.mapping.patient import (
    ResourceProblem,
    check_linked_patient,
    identity_keys,
    linked_patient,
)

router = APIRouter(prefix="/fhir")

MAX_RESOURCE_BYTES = 65_536
FHIR_JSON_TYPES = ("application/fhir+json", "application/json")


@router.get("/Patient/{patient_id}")
def read_patient(request: Request, patient_id: str) -> Response:
    check_format(request)
    context = context_of(request)
    resource = context.store.patient(patient_id, context.scope)
    if resource is None:
        raise NotFound(f"Patient/{patient_id} is not known")
    return read_response(request, resource)


@router.put("/Patient/{patient_id}")
async def update_patient(request: Request, patient_id: str) -> Response:
    """Create or replace EHR patient ``patient_id`` (FHIR update, with create): 201 when
    new, 200 when replaced; ``If-Match`` is honoured (412 on another version)."""
    check_format(request)
    require_media_type(request, FHIR_JSON_TYPES, "PUT Patient")
    body = await bounded_body(request, MAX_RESOURCE_BYTES, "Patient resource")
    return await run_in_threadpool(_update_patient, request, patient_id, body)


def _update_patient(request: Request, patient_id: str, body: bytes) -> Response:
    context = context_of(request)
    try:
        resource = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest("the body is JSON nested too deeply") from exc
    try:
        checked = check_linked_patient(resource, patient_id)
    except ResourceProblem as exc:
        raise InvalidResource(str(exc), exc.expression) from exc
    if_match = request.headers.get("if-match")
    with context.archive.engine.begin() as conn:
        lock_index(conn)
        if queries.patient_by_resource_id(conn, patient_id) is not None:
            raise Conflict(
                f"Patient/{patient_id} is made from DICOM and cannot be written; write the "
                "EHR's patient under its own id with this patient's identifier to link them"
            )
        current = links.linked_record(conn, patient_id)
        if if_match is not None:
            _check_version(if_match, current)
        try:
            record, created = links.save_linked_patient(
                conn,
                patient_id,
                checked,
                identity_keys(checked),
                links.SOURCE_FHIR,
                to_micros_now(),
            )
        except links.LinkConflict as exc:
            raise Conflict(str(exc)) from exc
        linked = links.linked_patients_of(conn, patient_id)
    served = linked_patient(record.resource, record.version_id, record.last_updated, linked)
    headers = {
        **version_headers(served),
        "Location": f"{context.fhir_base}/Patient/{patient_id}/_history/{record.version_id}",
    }
    status = 201 if created else 200
    return _preferred(request, served, status, headers)


def _check_version(if_match: str, current: links.LinkedRecord | None) -> None:
    """``If-Match: W/"n"`` must name the current version (FHIR R4 3.1.0.5.2)."""
    wanted = if_match.strip().removeprefix("W/").strip('"')
    if current is None or str(current.version_id) != wanted:
        held = f"version {current.version_id}" if current else "no version"
        raise PreconditionFailed(f"If-Match {if_match} but the server holds {held}")


def _preferred(
    request: Request, resource: dict[str, Any], status: int, headers: dict[str, str]
) -> Response:
    """The answer ``Prefer: return=`` asks for (representation by default)."""
    prefer = request.headers.get("prefer", "").replace(" ", "").lower()
    if "return=minimal" in prefer:
        return Response(status_code=status, headers=headers)
    if "return=operationoutcome" in prefer:
        outcome = operation_outcome("information", "informational", f"Patient/{resource['id']}")
        return FhirResponse(outcome, status_code=status, headers=headers)
    return FhirResponse(
        resource, status_code=status, headers=headers, pretty=pretty_requested(request)
    )
