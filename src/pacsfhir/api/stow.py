"""STOW-RS (PS3.18 10.5): ``POST /studies`` and ``/studies/{study}`` with
``multipart/related; type="application/dicom"``, through the same ingest path as the CLI.
Handlers take their scope from the request context (``api.context``).

Status (PS3.18 Table 10.5.3-1): 200 all stored (or already present), 202 some failed,
400 none stored and every part bad syntax (not DICOM, truncated, required attributes
missing; or no parts, or a malformed body), 409 none stored for any other reason (a
conflict: an instance of another study than the path's, or another patient's), 413 a
body or a part over its limit (``max_upload_mb``, ``max_part_mb``), 415 unsupported
media type. Failure reasons (Table I.2-2 and our own, documented in
docs/conformance.md): ``store.local.FAILURE_REASONS``.

The answer is the Store Instances Response Module (PS3.18 Annex I): Retrieve URL of the
study (Type 2: empty when the instances stored belong to several studies, or none was
stored and the path names no study), Specific Character Set ISO_IR 192 (the JSON is
UTF-8), and a Failed SOP item naming the instance whenever its file says which it is.
The body is received off the event loop (``dicom.upload``); storing and building the
answer run in a worker thread too.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from pacsfhir.api.context import context_of
from pacsfhir.dicom.prepare import Prepared
from pacsfhir.dicom.uids import is_valid_uid
from pacsfhir.dicom.upload import ReceivedPart, UploadLimits, receive_parts, related_boundary
from pacsfhir.errors import BadRequest, NotAcceptable
from pacsfhir.index.scope import Scope
from pacsfhir.store.base import Failure, Store
from pacsfhir.store.local import SYNTAX_FAILURES

router = APIRouter()

DICOM_JSON = "application/dicom+json"


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


def study_of(stored: list[Prepared], study_uid: str | None) -> str | None:
    """The study the response's top-level Retrieve URL names: the path's, else the one
    study of every instance stored (None: several, or none stored)."""
    if study_uid is not None:
        return study_uid if is_valid_uid(study_uid) else None
    studies = {p.attributes.study_uid for p in stored}
    return studies.pop() if len(studies) == 1 else None


def status_of(stored: list[Prepared], failures: list[Failure]) -> int:
    """PS3.18 Table 10.5.3-1: 200 all stored, 202 some, 400 none for bad syntax alone,
    409 none for a conflict (or a mixture of reasons)."""
    if not failures:
        return 200
    if stored:
        return 202
    if all(f.reason in SYNTAX_FAILURES for f in failures):
        return 400
    return 409


def _response_module(
    stored: list[Prepared], failures: list[Failure], base: str, study_uid: str | None
) -> dict[str, Any]:
    module: dict[str, Any] = {"00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}}
    study = study_of(stored, study_uid)
    module["00081190"] = (
        {"vr": "UR", "Value": [f"{base}/studies/{study}"]} if study else {"vr": "UR"}
    )
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


def _answer(
    store: Store, parts: list[ReceivedPart], study_uid: str | None, scope: Scope, base: str
) -> tuple[int, bytes]:
    """Store the parts and build the response (blocking: runs in a worker thread)."""
    outcome = store.store(parts, study_uid, scope)
    stored, failures = outcome.stored, outcome.failures
    module = _response_module(stored, failures, base, study_uid)
    return status_of(stored, failures), json.dumps(module).encode()


async def _stow(request: Request, study_uid: str | None) -> Response:
    _check_accept(request)
    context = context_of(request)
    store = context.store
    boundary = related_boundary(request.headers.get("content-type", ""), "application/dicom")
    limits = UploadLimits.of(context.settings)
    limits.check_declared(request.headers.get("content-length"))
    parts = await receive_parts(request.stream(), boundary, store.staging, limits)
    if not parts:
        raise BadRequest("the multipart body holds no parts")
    scope, base = context.scope, context.dicomweb_base
    try:
        status, body = await run_in_threadpool(_answer, store, parts, study_uid, scope, base)
    except BaseException:  # an error, or cancelled: nothing stays staged
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(store.discard, parts)
        raise
    return Response(body, status_code=status, media_type=DICOM_JSON)


@router.post("/studies")
async def store_instances(request: Request) -> Response:
    return await _stow(request, None)


@router.post("/studies/{study_uid}")
async def store_study_instances(request: Request, study_uid: str) -> Response:
    return await _stow(request, study_uid)
