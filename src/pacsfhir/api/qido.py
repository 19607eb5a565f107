"""QIDO-RS (PS3.18 10.6): search for studies, series and instances at every level and
nesting. Handlers take their scope from the request context (``api.context``): under
``/fhir/Patient/{id}/$wado-rs`` only that patient's studies exist.

Responses are ``application/dicom+json`` (``application/json`` when only that is
accepted), or ``multipart/related; type="application/dicom+xml"`` with one Native DICOM
Model part per match (PS3.18 10.6.3.3, PS3.19 A.1) when asked for; no match is 204 No
Content (PS3.18 8.3.4.4.1); a page cut short by ``limit`` or by ``MAX_RESULTS`` carries
``Warning: 299 {service}: "There are N additional results that can be requested"``.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from starlette.responses import Response

from pacsfhir.api.context import context_of
from pacsfhir.api.dicom_xml import DICOM_JSON, Answer, choose, multipart_xml
from pacsfhir.dicom.multipart import parse_accept
from pacsfhir.dicom.native_xml import DICOM_XML
from pacsfhir.errors import BadRequest, NotAcceptable
from pacsfhir.mapping.dicom_json import default_tags, from_index, result_objects
from pacsfhir.search.limits import shown
from pacsfhir.search.qido import QidoQuery, parse_query
from pacsfhir.vocabulary.levels import Level

router = APIRouter()

MAX_QUERY_BYTES = 16_384


def negotiate(accept: str) -> Answer:
    """The form of the answer (``api.dicom_xml.choose``: DICOM JSON by default,
    ``application/json`` when only that is acceptable, ``multipart/related;
    type="application/dicom+xml"`` when asked for); 406 for anything else."""
    chosen = choose(parse_accept(accept), single_ok=False)
    if chosen is None:
        raise NotAcceptable(
            f"Accept: {shown(accept)} cannot be served; search results are {DICOM_JSON} "
            f'or multipart/related; type="{DICOM_XML}"'
        )
    return chosen


def _pairs(request: Request) -> list[tuple[str, str]]:
    raw = request.url.query
    if len(raw) > MAX_QUERY_BYTES:
        raise BadRequest(f"query string longer than {MAX_QUERY_BYTES} bytes")
    return parse_qsl(raw, keep_blank_values=True)


def _warning(base: str, text: str) -> str:
    return f'299 {base}: "{text}"'


def _search(
    request: Request, level: Level, study_uid: str | None = None, series_uid: str | None = None
) -> Response:
    pairs = _pairs(request)
    accept = dict(pairs).get("accept") or request.headers.get("accept", "")
    form = negotiate(accept)
    query = parse_query(level, pairs, study_uid, series_uid)
    context = context_of(request)
    defaults = default_tags(level, study_uid is not None, series_uid is not None)
    tags = defaults | query.includes
    details = query.include_all or not all(from_index(t) for t in tags)
    answer = context.store.qido(query, context.scope, details)
    base = context.dicomweb_base
    headers = _warnings(base, query, answer.remaining)
    if not answer.rows:
        return Response(status_code=204, headers=headers)
    rows = answer.rows
    results = result_objects(level, tags, rows, base, query.include_all, defaults)
    if form is Answer.MULTIPART_XML:
        body, content_type = multipart_xml(results)
        return Response(body, media_type=content_type, headers=headers)
    body = json.dumps(results, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, media_type=form.value, headers=headers)


def _warnings(base: str, query: QidoQuery, remaining: int) -> dict[str, str]:
    texts = []
    if remaining > 0:
        texts.append(
            _warning(base, f"There are {remaining} additional results that can be requested")
        )
    if query.ignored:
        texts.append(
            _warning(
                base,
                "The following attributes are not supported as matching keys and were "
                "ignored: " + ", ".join(query.ignored),
            )
        )
    return {"Warning": ", ".join(texts)} if texts else {}


@router.get("/studies")
def search_studies(request: Request) -> Response:
    return _search(request, Level.STUDY)


@router.get("/studies/{study_uid}/series")
def search_study_series(request: Request, study_uid: str) -> Response:
    return _search(request, Level.SERIES, study_uid)


@router.get("/series")
def search_series(request: Request) -> Response:
    return _search(request, Level.SERIES)


@router.get("/studies/{study_uid}/series/{series_uid}/instances")
def search_series_instances(request: Request, study_uid: str, series_uid: str) -> Response:
    return _search(request, Level.INSTANCE, study_uid, series_uid)


@router.get("/studies/{study_uid}/instances")
def search_study_instances(request: Request, study_uid: str) -> Response:
    return _search(request, Level.INSTANCE, study_uid)


@router.get("/instances")
def search_instances(request: Request) -> Response:
    return _search(request, Level.INSTANCE)
