"""The FHIR R4 surface: metadata, read of ImagingStudy / Patient / Endpoint, ImagingStudy
search (GET, POST _search, and the Patient compartment)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from pacsfhir.api.bodies import bounded_body, media_type
from pacsfhir.api.context import RequestContext, context_of
from pacsfhir.api.guards import NUL_MESSAGE
from pacsfhir.api.responses import FhirResponse, check_format, pretty_requested, read_response
from pacsfhir.errors import (
    BadRequest,
    NotFound,
    TooCostly,
    UnsupportedMediaType,
)
from pacsfhir.index.scope import Scope
from pacsfhir.mapping.bundle import (
    link_url,
    operation_outcome,
    searchset,
    select_elements,
    summarise,
)
from pacsfhir.mapping.capability import capability_statement
from pacsfhir.mapping.endpoint import endpoint as endpoint_resource
from pacsfhir.mapping.imagingstudy import imaging_study
from pacsfhir.mapping.smart import OAuthUris, smart_configuration
from pacsfhir.search.parse import encode_cursor, parse_search
from pacsfhir.settings import Settings
from pacsfhir.vocabulary.ids import ENDPOINT_ID, endpoint_patient, patient_endpoint_id

router = APIRouter(prefix="/fhir")

MAX_QUERY_BYTES = 16_384


@router.get("/metadata")
def metadata(request: Request) -> Response:
    check_format(request)
    context = context_of(request)
    statement = capability_statement(context.fhir_base, _oauth_uris(context.settings))
    return FhirResponse(statement, pretty=pretty_requested(request))


def _oauth_uris(settings: Settings) -> OAuthUris | None:
    """The authorization server's endpoints apps are told of; None until both are set."""
    if not (settings.smart_authorize_url and settings.smart_token_url):
        return None
    introspection = settings.introspection_url if settings.auth == "introspection" else ""
    return OAuthUris(settings.smart_authorize_url, settings.smart_token_url, introspection)


@router.get("/.well-known/smart-configuration")
def smart_configuration_document(request: Request) -> Response:
    """SMART App Launch discovery (public); 404 until the SMART endpoints are configured."""
    uris = _oauth_uris(context_of(request).settings)
    if uris is None:
        raise NotFound(
            "SMART is not configured (PACSFHIR_SMART_AUTHORIZE_URL, PACSFHIR_SMART_TOKEN_URL)"
        )
    return Response(json.dumps(smart_configuration(uris)), media_type="application/json")


@router.get("/ImagingStudy/{study_id}")
def read_imaging_study(request: Request, study_id: str) -> Response:
    check_format(request)
    context = context_of(request)
    row = context.store.study(study_id, context.scope)
    if row is None:
        raise NotFound(f"ImagingStudy/{study_id} is not known")
    resource = imaging_study(
        row.study,
        row.patient,
        row.series,
        timezone=context.settings.dicom_timezone,
        endpoint_id=_endpoint_id(context.scope),
    )
    return read_response(request, resource)


@router.get("/Endpoint/{endpoint_id}")
def read_endpoint(request: Request, endpoint_id: str) -> Response:
    check_format(request)
    context = context_of(request)
    store, scope = context.store, context.scope
    patient_id = endpoint_patient(endpoint_id, [*scope.patients, *store.long_patient_ids()])
    if endpoint_id == ENDPOINT_ID:
        resource = endpoint_resource(context.archive_dicomweb_base)
    elif (
        patient_id is not None
        and scope.admits(patient_id)
        and store.patient_visible(patient_id, scope)
    ):
        resource = _patient_endpoint(context, patient_id)
    else:
        raise NotFound(f"Endpoint/{endpoint_id} is not known")
    return FhirResponse(resource, headers={"ETag": 'W/"1"'}, pretty=pretty_requested(request))


def _endpoint_id(scope: Scope) -> str:
    """The Endpoint studies seen in ``scope`` reference: one patient's base when the scope
    is one patient's, else the archive's."""
    return patient_endpoint_id(scope.patient_id) if scope.patient_id else ENDPOINT_ID


def _patient_endpoint(context: RequestContext, patient_id: str) -> dict[str, Any]:
    """The Endpoint of one patient's DICOMweb base, where only their studies exist."""
    address = context.patient_dicomweb_base(patient_id)
    return endpoint_resource(address, patient_endpoint_id(patient_id))


def _query_pairs(request: Request) -> list[tuple[str, str]]:
    raw = request.url.query
    if len(raw) > MAX_QUERY_BYTES:
        raise TooCostly(f"query string longer than {MAX_QUERY_BYTES} bytes")
    return _parse_pairs(raw, "query string")


def _parse_pairs(text: str, where: str) -> list[tuple[str, str]]:
    """``a=1&b=2`` into pairs; a percent-escape that is not UTF-8 is 400, not guessed at."""
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{where} holds a percent-escape that is not UTF-8") from exc
    if any("\0" in name or "\0" in value for name, value in pairs):
        raise BadRequest(f"{where}: {NUL_MESSAGE}")
    return pairs


async def _form_pairs(request: Request) -> list[tuple[str, str]]:
    """The parameters of a ``POST _search`` body, read no further than ``MAX_QUERY_BYTES``:
    a longer body is 413 before it is held in memory."""
    body = await bounded_body(request, MAX_QUERY_BYTES, "form body")
    if not body:
        return []
    if media_type(request) != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(
            "POST _search takes application/x-www-form-urlencoded parameters"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"form body is not UTF-8 (byte {exc.start})") from exc
    return _parse_pairs(text, "form body")


def _strict(request: Request) -> bool:
    prefer = request.headers.get("prefer", "").replace(" ", "").lower()
    return "handling=strict" in prefer


def _search(request: Request, pairs: list[tuple[str, str]], base_path: str) -> Response:
    """A search, within the request's scope (under ``/fhir/Patient/{id}/`` the compartment:
    that patient's studies, whatever the parameters say)."""
    check_format(request)
    context = context_of(request)
    settings, scope = context.settings, context.scope
    search = parse_search(
        pairs,
        strict=_strict(request),
        fhir_base=context.fhir_base,
        default_count=settings.default_count,
        max_count=settings.max_count,
    )
    endpoint_id = _endpoint_id(scope)
    with_instances = search.summary not in ("true", "text")
    page = context.store.search_studies(search, scope, endpoint_id, with_instances)
    rows = page.studies
    subjects = context.store.subjects(rows, scope) if "subject" in search.includes else []
    fhir_base = context.fhir_base
    matches = []
    for row in rows:
        resource = imaging_study(
            row.study,
            row.patient,
            row.series,
            timezone=settings.dicom_timezone,
            endpoint_id=endpoint_id,
        )
        if search.elements:
            resource = select_elements(resource, search.elements)
        else:
            resource = summarise(resource, search.summary)
        matches.append((f"{fhir_base}/ImagingStudy/{resource['id']}", resource))
    included = [(f"{fhir_base}/Patient/{p['id']}", p) for p in subjects]
    if "endpoint" in search.includes and rows:
        endpoint = (
            _patient_endpoint(context, scope.patient_id)
            if scope.patient_id is not None
            else endpoint_resource(context.archive_dicomweb_base)
        )
        included.append((f"{fhir_base}/Endpoint/{endpoint_id}", endpoint))
    base = context.base + base_path
    next_url = None
    if page.next_cursor is not None:
        next_url = link_url(base, [*search.used, ("_cursor", encode_cursor(page.next_cursor))])
    outcome = None
    if search.ignored:
        outcome = operation_outcome(
            "warning",
            "not-supported",
            "ignored: " + ", ".join(search.ignored),
        )
    bundle = searchset(
        matches=matches,
        includes=included,
        total=page.total,
        self_url=link_url(base, search.used),
        first_url=link_url(base, search.used) if next_url else None,
        next_url=next_url,
        outcome=outcome,
    )
    return FhirResponse(bundle, pretty=pretty_requested(request))


@router.get("/ImagingStudy")
def search_get(request: Request) -> Response:
    return _search(request, _query_pairs(request), "/fhir/ImagingStudy")


@router.post("/ImagingStudy/_search")
async def search_post(request: Request) -> Response:
    pairs = _query_pairs(request) + await _form_pairs(request)
    return await run_in_threadpool(_search, request, pairs, "/fhir/ImagingStudy")


@router.get("/Patient/{patient_id}/ImagingStudy")
def search_compartment(request: Request, patient_id: str) -> Response:
    return _search(request, _query_pairs(request), f"/fhir/Patient/{patient_id}/ImagingStudy")


@router.post("/Patient/{patient_id}/ImagingStudy/_search")
async def search_compartment_post(request: Request, patient_id: str) -> Response:
    pairs = _query_pairs(request) + await _form_pairs(request)
    base_path = f"/fhir/Patient/{patient_id}/ImagingStudy"
    return await run_in_threadpool(_search, request, pairs, base_path)
