"""The AuditEvent routes: search and read the audit log the server keeps (``api.recorder``
writes it). They need ``AuditEvent`` scopes at user or system level (``auth.policy``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from starlette.responses import Response

from pacsfhir.api.context import context_of
from pacsfhir.api.recorder import AuditWriter
from pacsfhir.api.responses import FhirResponse, check_format
from pacsfhir.errors import BadRequest, InvalidSearchParameter, NotFound, UnknownSearchParameter
from pacsfhir.index import audit
from pacsfhir.index.audit import AuditQuery
from pacsfhir.index.engine import read_connection
from pacsfhir.mapping.audit import audit_event
from pacsfhir.mapping.bundle import link_url, searchset
from pacsfhir.vocabulary.dates import fhir_period

router = APIRouter(prefix="/fhir")

MAX_COUNT = 1000
_IGNORED = {"_format", "_pretty"}
_TOTALS = ("none", "estimate", "accurate")  # an estimate is the accurate count here
_PREFIXES = ("ge", "le", "gt", "lt", "eq")
_OUTCOMES = {"0", "4", "8", "12"}


def _date(query: AuditQuery, value: str) -> AuditQuery:
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    period = fhir_period(value[2:] if value[:2] in _PREFIXES else value)
    if period is None:
        raise InvalidSearchParameter(f"date: {value!r} is not a FHIR date")
    low, high = period.low, period.high + 1  # [low, high)
    since, until = {
        "ge": ((low,), ()),
        "gt": ((high,), ()),
        "le": ((), (high,)),
        "lt": ((), (low,)),
        "eq": ((low,), (high,)),
    }[prefix]
    return replace(query, since=query.since + since, until=query.until + until)


def _reference(value: str, resource_type: str) -> str:
    """``Patient/x`` or ``x`` (the given type only) -> ``x``."""
    kind, _, rest = value.rpartition("/")
    if kind and kind.rsplit("/", 1)[-1] != resource_type:
        raise InvalidSearchParameter(f"{value!r} is not a {resource_type} reference")
    if not rest:
        raise InvalidSearchParameter(f"{value!r} is not a {resource_type} reference")
    return rest


def _entity(query: AuditQuery, value: str) -> AuditQuery:
    kind = value.rpartition("/")[0].rsplit("/", 1)[-1]
    if kind == "Patient":
        return replace(query, patient=_reference(value, "Patient"))
    if kind == "ImagingStudy":
        return replace(query, study_uid=_reference(value, "ImagingStudy"))
    raise InvalidSearchParameter("entity: a Patient/{id} or ImagingStudy/{uid} reference")


def parse_audit_search(pairs: Sequence[tuple[str, str]], default_count: int) -> AuditQuery:
    """AuditEvent search parameters -> an ``AuditQuery`` (pure); 400 on anything else."""
    query = AuditQuery(count=default_count)
    for name, value in pairs:
        if name in _IGNORED:
            continue
        if name == "date":
            query = _date(query, value)
        elif name == "patient":
            query = replace(query, patient=_reference(value, "Patient"))
        elif name == "agent":
            query = replace(query, agent=value)
        elif name == "outcome":
            if value not in _OUTCOMES:
                raise InvalidSearchParameter("outcome: one of 0, 4, 8, 12")
            query = replace(query, outcome=int(value))
        elif name == "entity":
            query = _entity(query, value)
        elif name == "_total":
            if value not in _TOTALS:
                raise InvalidSearchParameter("_total: one of none, estimate, accurate")
            query = replace(query, total=value != "none")
        elif name in ("_count", "_after"):
            if not (value.isascii() and value.isdigit() and len(value) < 19):
                raise InvalidSearchParameter(f"{name}: a non-negative integer")
            if name == "_count":
                query = replace(query, count=min(int(value), MAX_COUNT))
            else:
                query = replace(query, after=int(value))
        else:
            raise UnknownSearchParameter(f"AuditEvent does not support the parameter {name!r}")
    return query


def _writer(request: Request) -> AuditWriter:
    writer: AuditWriter = request.app.state.audit
    writer.flush()  # what this server recorded so far is searchable at once
    return writer


@router.get("/AuditEvent")
def search_audit_events(request: Request) -> Response:
    check_format(request)
    context = context_of(request)
    try:
        pairs = parse_qsl(request.url.query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise BadRequest("query string holds a percent-escape that is not UTF-8") from exc
    query = parse_audit_search(pairs, context.settings.default_count)
    _writer(request)
    with read_connection(context.archive.engine) as conn:
        records, more = audit.search(conn, query)
        total = audit.count(conn, query) if query.total else None
    base = f"{context.fhir_base}/AuditEvent"
    kept = [(n, v) for n, v in pairs if n != "_after"]
    next_url = None
    if more and records:
        next_url = link_url(base, [*kept, ("_after", records[-1].id)])
    bundle = searchset(
        matches=[(f"{base}/{r.id}", audit_event(r, context.fhir_base)) for r in records],
        total=total,
        self_url=link_url(base, pairs),
        next_url=next_url,
    )
    return FhirResponse(bundle, pretty=request.query_params.get("_pretty") == "true")


@router.get("/AuditEvent/{event_id}")
def read_audit_event(request: Request, event_id: str) -> Response:
    check_format(request)
    context = context_of(request)
    if not (event_id.isascii() and event_id.isdigit() and len(event_id) < 19):
        raise NotFound(f"AuditEvent/{event_id} is not known")
    _writer(request)
    with read_connection(context.archive.engine) as conn:
        record = audit.by_id(conn, int(event_id))
    if record is None:
        raise NotFound(f"AuditEvent/{event_id} is not known")
    resource = audit_event(record, context.fhir_base)
    return FhirResponse(resource, pretty=request.query_params.get("_pretty") == "true")
