"""STOW-RS (PS3.18 10.5): ``POST /studies`` and ``/studies/{study}`` with
``multipart/related; type="application/dicom"``, through the same ingest path as the CLI.
Handlers take their scope from the request context (``api.context``).

Status (PS3.18 Table 10.5.3-1): 200 all stored (or already present), 202 some failed,
409 none stored, 400 bad syntax or no parts, 413 a body or a part over its limit
(``max_upload_mb``, ``max_part_mb``), 415 unsupported media type. Failure reasons
(Table I.2-2 and our own, documented in docs/conformance.md): ``FAILURE_REASONS``.
The body is received off the event loop (``dicom.upload``); storing and building the
answer run in a worker thread too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import APIRouter, Request
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from pacsfhir.api.context import context_of
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import Outcome, commit_batch
from pacsfhir.dicom.prepare import Prepared, Rejected, prepare_staged
from pacsfhir.dicom.reader import InstanceAttributes
from pacsfhir.dicom.uids import is_valid_uid
from pacsfhir.dicom.upload import ReceivedPart, UploadLimits, receive_parts, related_boundary
from pacsfhir.errors import BadRequest, NotAcceptable, NotFound
from pacsfhir.index import links
from pacsfhir.index.engine import read_connection
from pacsfhir.index.scope import Scope
from pacsfhir.index.writer import patient_key, patient_row

router = APIRouter()

DICOM_JSON = "application/dicom+json"
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000
NOT_DICOM_PART = 0xC001  # ours: a part whose Content-Type is not application/dicom
STUDY_MISMATCH = 0xC409  # ours: the instance is not of the study in the request URL
PATIENT_MISMATCH = 0xC410  # ours: under /Patient/{id}/$wado-rs, another patient's instance
OUT_OF_RESOURCES = 0xA700
FAILURE_REASONS = {
    CANNOT_UNDERSTAND: "not DICOM, truncated, or without valid Study/Series/SOP UIDs",
    NOT_DICOM_PART: "part Content-Type is not application/dicom",
    STUDY_MISMATCH: "Study Instance UID differs from the study in the request URL",
    PATIENT_MISMATCH: "instance belongs to another patient than the scoped one",
    OUT_OF_RESOURCES: "out of storage",
    PROCESSING_FAILURE: "processing failure",
}


@dataclass(frozen=True)
class Failure:
    sop_class_uid: str
    sop_uid: str
    reason: int


def _check_accept(request: Request) -> None:
    accept = request.headers.get("accept", "")
    if not accept or any(
        media.split(";")[0].strip() in (DICOM_JSON, "application/json", "*/*", "application/*")
        for media in accept.split(",")
    ):
        return
    raise NotAcceptable(f"Accept: {accept}; STOW-RS responses are {DICOM_JSON}")


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def _response_module(
    stored: list[Prepared], failures: list[Failure], base: str, study_uid: str | None
) -> dict[str, Any]:
    module: dict[str, Any] = {}
    if study_uid:
        module["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_uid}"]}
    if failures:
        module["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    **({"00081150": _uid(f.sop_class_uid)} if f.sop_class_uid else {}),
                    **({"00081155": _uid(f.sop_uid)} if f.sop_uid else {}),
                    "00081197": {"vr": "US", "Value": [f.reason]},
                }
                for f in failures
            ],
        }
    if stored:
        module["00081199"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _uid(p.attributes.instance["SOPClassUID"]),
                    "00081155": _uid(p.attributes.sop_uid),
                    "00081190": {
                        "vr": "UR",
                        "Value": [
                            f"{base}/studies/{p.attributes.study_uid}"
                            f"/series/{p.attributes.series_uid}/instances/{p.attributes.sop_uid}"
                        ],
                    },
                }
                for p in stored
            ],
        }
    return module


def _link_of(engine: Engine, attrs: InstanceAttributes) -> str | None:
    """The EHR patient an instance's patient is (or will be) linked to (index.links)."""
    row = patient_row(attrs)
    system = row["identifier_system"]
    key = (row["PatientID"], system, "" if system else row["IssuerOfPatientID"])
    with read_connection(engine) as conn:
        return links.owner_of(conn, key)


def _check_target(
    engine: Engine, prepared: Prepared, study_uid: str | None, scope: Scope
) -> int | None:
    attrs = prepared.attributes
    if study_uid is not None and attrs.study_uid != study_uid:
        return STUDY_MISMATCH
    if not scope.everything and not scope.admits(patient_key(attrs), _link_of(engine, attrs)):
        return PATIENT_MISMATCH
    return None


def _store(
    archive: Archive, parts: list[ReceivedPart], study_uid: str | None, scope: Scope
) -> tuple[list[Prepared], list[Failure]]:
    """Read, check and commit the staged parts (blocking: runs in a worker thread)."""
    accepted: list[Prepared] = []
    failures: list[Failure] = []
    for number, part in enumerate(parts, start=1):
        if part.content_type != "application/dicom":
            archive.blobs.discard(part.staged.path)
            failures.append(Failure("", "", NOT_DICOM_PART))
            continue
        prepared = prepare_staged(f"part {number}", part.staged, archive.blobs)
        if isinstance(prepared, Rejected):
            failures.append(Failure("", "", CANNOT_UNDERSTAND))
            continue
        reason = _check_target(archive.engine, prepared, study_uid, scope)
        if reason is not None:
            archive.blobs.discard(prepared.staged.path)
            attrs = prepared.attributes
            failures.append(Failure(attrs.instance["SOPClassUID"], attrs.sop_uid, reason))
            continue
        accepted.append(prepared)
    try:
        results = commit_batch(
            archive.engine, archive.blobs, accepted, archive.settings.dicom_timezone
        )
    except OSError:
        for item in accepted:
            archive.blobs.discard(item.staged.path)
        attrs_list = [p.attributes for p in accepted]
        failures += [
            Failure(a.instance["SOPClassUID"], a.sop_uid, OUT_OF_RESOURCES) for a in attrs_list
        ]
        return [], failures
    assert all(r.outcome is not Outcome.REJECTED for r in results)
    return accepted, failures


def _answer(
    archive: Archive, parts: list[ReceivedPart], study_uid: str | None, scope: Scope, base: str
) -> tuple[int, bytes]:
    """Store the parts and build the response (blocking: runs in a worker thread)."""
    stored, failures = _store(archive, parts, study_uid, scope)
    if failures and not stored:
        status = 409
    elif failures:
        status = 202
    else:
        status = 200
    return status, json.dumps(_response_module(stored, failures, base, study_uid)).encode()


def _discard(archive: Archive, parts: list[ReceivedPart]) -> None:
    for part in parts:  # what _store has placed or discarded is no longer there
        archive.blobs.discard(part.staged.path)


async def _stow(request: Request, study_uid: str | None) -> Response:
    _check_accept(request)
    if study_uid is not None and not is_valid_uid(study_uid):
        raise NotFound(f"{study_uid!a} is not a Study Instance UID")
    archive = context_of(request).archive
    boundary = related_boundary(request.headers.get("content-type", ""), "application/dicom")
    limits = UploadLimits.of(archive.settings)
    limits.check_declared(request.headers.get("content-length"))
    parts = await receive_parts(request.stream(), boundary, archive.blobs, limits)
    if not parts:
        raise BadRequest("the multipart body holds no parts")
    scope, base = context_of(request).scope, context_of(request).dicomweb_base
    try:
        status, body = await run_in_threadpool(_answer, archive, parts, study_uid, scope, base)
    except BaseException:  # an error, or cancelled: nothing stays staged
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(_discard, archive, parts)
        raise
    return Response(body, status_code=status, media_type=DICOM_JSON)


@router.post("/studies")
async def store_instances(request: Request) -> Response:
    return await _stow(request, None)


@router.post("/studies/{study_uid}")
async def store_study_instances(request: Request, study_uid: str) -> Response:
    return await _stow(request, study_uid)
