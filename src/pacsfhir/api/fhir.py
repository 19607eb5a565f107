"""The FHIR R4 surface: metadata, read of ImagingStudy / Patient / Endpoint, ImagingStudy
search (GET, POST _search, and the Patient compartment)."""

from __future__ import annotations

from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from sqlalchemy import ColumnElement, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from pacsfhir.api.guards import NUL_MESSAGE
from pacsfhir.api.responses import FhirResponse, check_format
from pacsfhir.archive import Archive
from pacsfhir.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    TooCostly,
    UnsupportedMediaType,
)
from pacsfhir.index import queries
from pacsfhir.index.engine import read_connection
from pacsfhir.index.schema import patient as patient_table
from pacsfhir.index.schema import study as study_table
from pacsfhir.index.search import search_page
from pacsfhir.mapping.bundle import (
    link_url,
    operation_outcome,
    searchset,
    select_elements,
    summarise,
)
from pacsfhir.mapping.capability import capability_statement
from pacsfhir.mapping.dates import fhir_period, from_micros
from pacsfhir.mapping.endpoint import endpoint as endpoint_resource
from pacsfhir.mapping.ids import ENDPOINT_ID, endpoint_patient, patient_endpoint_id
from pacsfhir.mapping.imagingstudy import imaging_study
from pacsfhir.mapping.patient import patient as patient_resource
from pacsfhir.search.parse import encode_cursor, parse_search

router = APIRouter(prefix="/fhir")

MAX_QUERY_BYTES = 16_384


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def _pretty(request: Request) -> bool:
    return request.query_params.get("_pretty") == "true"


def _read_headers(resource: dict[str, Any]) -> dict[str, str]:
    meta = resource.get("meta", {})
    headers = {"ETag": f'W/"{meta.get("versionId", "1")}"'}
    if "lastUpdated" in meta:
        period = fhir_period(meta["lastUpdated"])
        if period is not None:
            moment = from_micros(period.low)
            headers["Last-Modified"] = format_datetime(moment, usegmt=True)
    return headers


def _read_response(request: Request, resource: dict[str, Any]) -> Response:
    headers = _read_headers(resource)
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return FhirResponse(resource, headers=headers, pretty=_pretty(request))


@router.get("/metadata")
def metadata(request: Request) -> Response:
    check_format(request)
    settings = _archive(request).settings
    return FhirResponse(capability_statement(settings.fhir_base_url), pretty=_pretty(request))


@router.get("/ImagingStudy/{study_id}")
def read_imaging_study(request: Request, study_id: str) -> Response:
    check_format(request)
    archive = _archive(request)
    with read_connection(archive.engine) as conn:
        rows = queries.load_studies(conn, study_uid=study_id)
    if not rows:
        raise NotFound(f"ImagingStudy/{study_id} is not known")
    row = rows[0]
    resource = imaging_study(
        row.study, row.patient, row.series, timezone=archive.settings.dicom_timezone
    )
    return _read_response(request, resource)


@router.get("/Patient/{patient_id}")
def read_patient(request: Request, patient_id: str) -> Response:
    check_format(request)
    with read_connection(_archive(request).engine) as conn:
        row = queries.patient_by_resource_id(conn, patient_id)
    if row is None:
        raise NotFound(f"Patient/{patient_id} is not known")
    return _read_response(request, patient_resource(row))


@router.get("/Endpoint/{endpoint_id}")
def read_endpoint(request: Request, endpoint_id: str) -> Response:
    check_format(request)
    archive = _archive(request)
    patient_id = endpoint_patient(endpoint_id)
    if endpoint_id == ENDPOINT_ID:
        resource = endpoint_resource(archive.settings.dicomweb_base_url)
    elif patient_id is not None and _patient_exists(archive, patient_id):
        resource = _patient_endpoint(archive, patient_id)
    else:
        raise NotFound(f"Endpoint/{endpoint_id} is not known")
    return FhirResponse(resource, headers={"ETag": 'W/"1"'}, pretty=_pretty(request))


def _patient_exists(archive: Archive, patient_id: str) -> bool:
    with read_connection(archive.engine) as conn:
        return queries.patient_by_resource_id(conn, patient_id) is not None


def _patient_endpoint(archive: Archive, patient_id: str) -> dict[str, Any]:
    """The Endpoint of one patient's DICOMweb base, where only their studies exist."""
    address = f"{archive.settings.fhir_base_url}/Patient/{patient_id}/$wado-rs"
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
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_QUERY_BYTES:
        raise PayloadTooLarge(f"form body of {declared} bytes; the limit is {MAX_QUERY_BYTES}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_QUERY_BYTES:
            raise PayloadTooLarge(f"form body longer than {MAX_QUERY_BYTES} bytes")
    if not body:
        return []
    if content_type != "application/x-www-form-urlencoded":
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


def _search(
    request: Request,
    pairs: list[tuple[str, str]],
    base_path: str,
    compartment_patient: str | None = None,
) -> Response:
    check_format(request)
    archive = _archive(request)
    settings = archive.settings
    search = parse_search(
        pairs,
        strict=_strict(request),
        fhir_base=settings.fhir_base_url,
        default_count=settings.default_count,
        max_count=settings.max_count,
    )
    extra: ColumnElement[bool] | None = None
    if compartment_patient is not None:
        extra = study_table.c.patient_pk.in_(
            select(patient_table.c.pk).where(patient_table.c.resource_id == compartment_patient)
        )
    endpoint_id = ENDPOINT_ID
    if compartment_patient is not None:
        endpoint_id = patient_endpoint_id(compartment_patient)
    with read_connection(archive.engine) as conn:
        page = search_page(
            conn, search, extra, endpoint_id, archive.counts, extra_key=compartment_patient
        )
        with_instances = search.summary not in ("true", "text")
        rows = queries.load_studies(conn, page.study_pks, with_instances=with_instances)
    # _include=ImagingStudy:subject: each study row already holds its whole patient row
    subjects = {r.patient["pk"]: r.patient for r in rows} if "subject" in search.includes else {}
    patients = [subjects[pk] for pk in sorted(subjects)]
    fhir_base = settings.fhir_base_url
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
    included = [(f"{fhir_base}/Patient/{p['resource_id']}", patient_resource(p)) for p in patients]
    if "endpoint" in search.includes and rows:
        endpoint = (
            _patient_endpoint(archive, compartment_patient)
            if compartment_patient is not None
            else endpoint_resource(settings.dicomweb_base_url)
        )
        included.append((f"{fhir_base}/Endpoint/{endpoint_id}", endpoint))
    base = settings.public_base_url + base_path
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
    return FhirResponse(bundle, pretty=_pretty(request))


@router.get("/ImagingStudy")
def search_get(request: Request) -> Response:
    return _search(request, _query_pairs(request), "/fhir/ImagingStudy")


@router.post("/ImagingStudy/_search")
async def search_post(request: Request) -> Response:
    pairs = _query_pairs(request) + await _form_pairs(request)
    return await run_in_threadpool(_search, request, pairs, "/fhir/ImagingStudy")


@router.get("/Patient/{patient_id}/ImagingStudy")
def search_compartment(request: Request, patient_id: str) -> Response:
    return _search(
        request, _query_pairs(request), f"/fhir/Patient/{patient_id}/ImagingStudy", patient_id
    )


@router.post("/Patient/{patient_id}/ImagingStudy/_search")
async def search_compartment_post(request: Request, patient_id: str) -> Response:
    pairs = _query_pairs(request) + await _form_pairs(request)
    base_path = f"/fhir/Patient/{patient_id}/ImagingStudy"
    return await run_in_threadpool(_search, request, pairs, base_path, patient_id)
