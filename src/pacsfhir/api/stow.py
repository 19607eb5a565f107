"""STOW-RS (PS3.18 10.5): ``POST /studies`` and ``/studies/{study}`` with
``multipart/related; type="application/dicom"``, through the same ingest path as the CLI.
Handlers take their scope from the request context (``api.context``).

Status (PS3.18 Table 10.5.3-1): 200 all stored (or already present), 202 some failed,
409 none stored, 400 bad syntax or no parts, 413 a body or a part over its limit
(``max_upload_mb``, ``max_part_mb``), 415 unsupported media type. Failure reasons
(Table I.2-2 and our own, documented in docs/conformance.md): ``store.local.FAILURE_REASONS``.
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
from pacsfhir.errors import BadRequest, NotAcceptable, NotFound
from pacsfhir.index.scope import Scope
from pacsfhir.store.base import Failure, Store

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


def _answer(
    store: Store, parts: list[ReceivedPart], study_uid: str | None, scope: Scope, base: str
) -> tuple[int, bytes]:
    """Store the parts and build the response (blocking: runs in a worker thread)."""
    outcome = store.store(parts, study_uid, scope)
    stored, failures = outcome.stored, outcome.failures
    if failures and not stored:
        status = 409
    elif failures:
        status = 202
    else:
        status = 200
    return status, json.dumps(_response_module(stored, failures, base, study_uid)).encode()


async def _stow(request: Request, study_uid: str | None) -> Response:
    _check_accept(request)
    if study_uid is not None and not is_valid_uid(study_uid):
        raise NotFound(f"{study_uid!a} is not a Study Instance UID")
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
