"""FHIR R4 search parameters (as a URL query or form body) -> ``SearchRequest`` (pure).

Unknown parameters and unsupported modifiers are ignored (listed in ``ignored``) unless
``strict`` (``Prefer: handling=strict``), where they raise; malformed values of known
parameters always raise, since guessing would return the wrong patient's data.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pacsfhir.errors import InvalidSearchParameter, TooCostly, UnknownSearchParameter
from pacsfhir.search.limits import is_int64, non_negative_integer, shown
from pacsfhir.search.model import (
    Criterion,
    Cursor,
    DateValue,
    ParamType,
    Reference,
    SearchRequest,
    SortKey,
    Token,
    Value,
)
from pacsfhir.vocabulary.dates import fhir_period

T = ParamType


@dataclass(frozen=True)
class ParamDef:
    type: ParamType
    targets: tuple[str, ...] = ()  # reference target types


IMAGING_STUDY_PARAMS: dict[str, ParamDef] = {
    "_id": ParamDef(T.TOKEN),
    "_lastUpdated": ParamDef(T.DATE),
    "identifier": ParamDef(T.TOKEN),
    "status": ParamDef(T.TOKEN),
    "started": ParamDef(T.DATE),
    "modality": ParamDef(T.TOKEN),
    "series": ParamDef(T.TOKEN),
    "instance": ParamDef(T.TOKEN),
    "dicom-class": ParamDef(T.TOKEN),
    "bodysite": ParamDef(T.TOKEN),
    "reason": ParamDef(T.TOKEN),
    "patient": ParamDef(T.REFERENCE, ("Patient",)),
    "subject": ParamDef(T.REFERENCE, ("Patient", "Device", "Group")),
    "endpoint": ParamDef(T.REFERENCE, ("Endpoint",)),
    "encounter": ParamDef(T.REFERENCE, ("Encounter",)),
    "basedon": ParamDef(
        T.REFERENCE, ("ServiceRequest", "Appointment", "AppointmentResponse", "Task", "CarePlan")
    ),
    "referrer": ParamDef(T.REFERENCE, ("Practitioner", "PractitionerRole")),
    "interpreter": ParamDef(T.REFERENCE, ("Practitioner", "PractitionerRole")),
    "performer": ParamDef(
        T.REFERENCE,
        (
            "Practitioner",
            "PractitionerRole",
            "Organization",
            "CareTeam",
            "Patient",
            "Device",
            "RelatedPerson",
        ),
    ),
}

# Patient parameters usable in a chain (patient.X, subject:Patient.X).
PATIENT_PARAMS: dict[str, ParamDef] = {
    "_id": ParamDef(T.TOKEN),
    "identifier": ParamDef(T.TOKEN),
    "name": ParamDef(T.STRING),
    "family": ParamDef(T.STRING),
    "given": ParamDef(T.STRING),
    "birthdate": ParamDef(T.DATE),
    "gender": ParamDef(T.TOKEN),
}

MODIFIERS: dict[ParamType, frozenset[str]] = {
    T.TOKEN: frozenset({"missing", "not"}),
    T.REFERENCE: frozenset({"missing"}),
    T.DATE: frozenset({"missing"}),
    T.STRING: frozenset({"missing", "exact", "contains"}),
    T.URI: frozenset({"missing"}),
}
SORTABLE = ("started", "_lastUpdated", "_id")
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
CONTROL_PARAMS = frozenset(
    {
        "_count",
        "_sort",
        "_total",
        "_summary",
        "_elements",
        "_include",
        "_format",
        "_cursor",
        "_pretty",
    }
)
INCLUDES = {
    "ImagingStudy:subject": "subject",
    "ImagingStudy:subject:Patient": "subject",
    "ImagingStudy:patient": "subject",
    "ImagingStudy:patient:Patient": "subject",
    "ImagingStudy:endpoint": "endpoint",
    "ImagingStudy:endpoint:Endpoint": "endpoint",
}

MAX_PARAMETERS = 64
MAX_VALUES = 100  # in one parameter
# in one search, over all its parameters: each value is an SQL term, and SQLite's planner
# spends time quadratic in the terms of a conjunction of disjunctions (docs/conformance.md)
MAX_SEARCH_VALUES = 200
MAX_VALUE_LENGTH = 2048

_ESCAPED_SPLIT = re.compile(r"(?<!\\),")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def split_values(raw: str) -> list[str]:
    """Split on unescaped commas; undo the FHIR escapes (\\, \\| \\$ \\\\)."""
    return [_unescape(v) for v in _ESCAPED_SPLIT.split(raw)]


def _unescape(value: str) -> str:
    return re.sub(r"\\([,|$\\])", r"\1", value)


def _split_token(raw: str) -> Token:
    parts = re.split(r"(?<!\\)\|", raw, maxsplit=1)
    if len(parts) == 1:
        return Token(None, _unescape(parts[0]))
    system, code = (_unescape(p) for p in parts)
    return Token(system, code or None)


def parse_date(raw: str) -> DateValue:
    prefix = raw[:2] if raw[:2] in DATE_PREFIXES else "eq"
    text = raw[2:] if raw[:2] in DATE_PREFIXES else raw
    period = fhir_period(text)
    if period is None:
        raise InvalidSearchParameter(f"{shown(raw)} is not a FHIR date, dateTime or instant")
    return DateValue(prefix, period.low, period.high)


def parse_reference(raw: str, type_hint: str, targets: Sequence[str], fhir_base: str) -> Reference:
    value = raw.strip()
    if fhir_base and value.startswith(fhir_base + "/"):
        value = value[len(fhir_base) + 1 :]
    elif re.match(r"[a-z][a-z0-9+.-]*:", value):
        return Reference(None, value, external=True)
    value = value.split("/_history/")[0]
    parts = value.split("/")
    resource_type: str | None
    if len(parts) == 2:
        resource_type, resource_id = parts
    elif len(parts) == 1:
        resource_type, resource_id = type_hint or None, parts[0]
    else:
        raise InvalidSearchParameter(f"{shown(raw)} is not a reference")
    if resource_type is not None and resource_type not in targets:
        raise InvalidSearchParameter(
            f"{shown(raw)}: a {resource_type} cannot be the target here ({', '.join(targets)})"
        )
    if not _ID.fullmatch(resource_id):
        raise InvalidSearchParameter(f"{shown(raw)}: {shown(resource_id)} is not a FHIR id")
    return Reference(resource_type, resource_id)


def _parse_values(
    name: str, definition: ParamDef, modifier: str, raw: str, fhir_base: str
) -> tuple[Value, ...]:
    pieces = _ESCAPED_SPLIT.split(raw)
    if len(pieces) > MAX_VALUES:
        raise TooCostly(f"{name}: more than {MAX_VALUES} values")
    if definition.type is T.TOKEN:
        return tuple(_split_token(p) for p in pieces)  # unescapes after splitting on |
    values = [_unescape(p) for p in pieces]
    if definition.type is T.DATE:
        return tuple(parse_date(v) for v in values)
    if definition.type is T.REFERENCE:
        return tuple(parse_reference(v, modifier, definition.targets, fhir_base) for v in values)
    return tuple(values)


class _Rejector:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.ignored: list[str] = []

    def unknown(self, key: str, why: str) -> None:
        if self.strict:
            raise UnknownSearchParameter(f"{key}: {why}")
        self.ignored.append(key)


def _criterion(
    key: str,
    raw: str,
    params: dict[str, ParamDef],
    fhir_base: str,
    reject: _Rejector,
    allow_chain: bool = True,
) -> Criterion | None:
    name, _, chain_rest = key.partition(".")
    name, _, modifier = name.partition(":")
    definition = params.get(name)
    if definition is None:
        reject.unknown(key, "unknown search parameter")
        return None
    if chain_rest:
        if (
            not allow_chain
            or definition.type is not T.REFERENCE
            or name
            not in (
                "patient",
                "subject",
            )
        ):
            reject.unknown(key, "chaining is supported on patient and subject only")
            return None
        if modifier not in ("", "Patient"):
            reject.unknown(key, f"chaining to {modifier} is not supported")
            return None
        inner = _criterion(chain_rest, raw, PATIENT_PARAMS, fhir_base, reject, allow_chain=False)
        if inner is None:
            return None
        return Criterion(name, definition.type, chain=inner)
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise InvalidSearchParameter(f"{key}: :missing takes true or false")
        return Criterion(name, definition.type, missing=raw == "true")
    type_modifier = definition.type is T.REFERENCE and modifier in definition.targets
    if modifier and not type_modifier and modifier not in MODIFIERS[definition.type]:
        reject.unknown(key, f"modifier :{modifier} is not supported")
        return None
    if not raw:
        return None  # an empty value is no criterion (R4 3.1.1.1)
    values = _parse_values(name, definition, modifier if type_modifier else "", raw, fhir_base)
    return Criterion(name, definition.type, values, "" if type_modifier else modifier)


def encode_cursor(cursor: Cursor) -> str:
    data = json.dumps([list(cursor.values), cursor.pk], separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


_CURSOR_TEXT = 64  # the longest sort value a cursor holds: a Study Instance UID


def _cursor_value_ok(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= _CURSOR_TEXT
    return value is None or is_int64(value)


def decode_cursor(raw: str) -> Cursor:
    """A cursor ``encode_cursor`` made: ``[[sort values...], pk]``, every integer within
    64 bits (what the index can compare), every text the length of a UID at most.
    Anything else (forged, corrupted, nested until json recurses too deep) is a 400."""
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidSearchParameter("_cursor: not a cursor this server issued") from exc
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], list)):
        raise InvalidSearchParameter("_cursor: not a cursor this server issued")
    values, pk = data
    if not (
        is_int64(pk)
        and pk >= 0
        and len(values) <= len(SORTABLE)
        and all(_cursor_value_ok(v) for v in values)
    ):
        raise InvalidSearchParameter("_cursor: not a cursor this server issued")
    return Cursor(tuple(values), pk)


def parse_search(
    pairs: Sequence[tuple[str, str]],
    *,
    strict: bool = False,
    fhir_base: str = "",
    default_count: int = 50,
    max_count: int = 1000,
) -> SearchRequest:
    if len(pairs) > MAX_PARAMETERS:
        raise TooCostly(f"more than {MAX_PARAMETERS} search parameters")
    reject = _Rejector(strict)
    criteria: list[Criterion] = []
    used: list[tuple[str, str]] = []
    sort: list[SortKey] = []
    count = default_count
    total = "accurate"
    summary = ""
    elements: list[str] = []
    includes: list[str] = []
    cursor: Cursor | None = None
    values = 0
    for key, raw in pairs:
        if len(raw) > MAX_VALUE_LENGTH:
            raise TooCostly(f"{key}: value longer than {MAX_VALUE_LENGTH} characters")
        if key in CONTROL_PARAMS:
            if key == "_count":
                count = min(non_negative_integer(key, raw), max_count)
            elif key == "_sort":
                sort = []
                for field_name in raw.split(","):
                    bare = field_name.lstrip("-")
                    if bare not in SORTABLE:
                        reject.unknown(f"_sort={field_name}", "not a sortable parameter")
                        continue
                    if any(k.param == bare for k in sort):
                        continue  # a second key on the same parameter orders nothing
                    sort.append(SortKey(bare, field_name.startswith("-")))
                raw = ",".join(("-" if s.descending else "") + s.param for s in sort)
                if not raw:
                    continue
            elif key == "_total":
                if raw not in ("none", "estimate", "accurate"):
                    raise InvalidSearchParameter("_total must be none, estimate or accurate")
                total = raw
            elif key == "_summary":
                if raw not in ("true", "false", "count", "data", "text"):
                    raise InvalidSearchParameter(
                        "_summary must be true, false, count, data or text"
                    )
                summary = raw
            elif key == "_elements":
                elements = [e.strip() for e in raw.split(",") if e.strip()]
            elif key == "_include":
                if raw not in INCLUDES:
                    reject.unknown(f"_include={raw}", "supported: " + ", ".join(sorted(INCLUDES)))
                    continue
                includes.append(INCLUDES[raw])
            elif key == "_cursor":
                cursor = decode_cursor(raw)
                continue
            if key not in ("_format", "_pretty", "_cursor"):
                used.append((key, raw))
            continue
        criterion = _criterion(key, raw, IMAGING_STUDY_PARAMS, fhir_base, reject)
        if criterion is not None:
            criteria.append(criterion)
            used.append((key, raw))
            values += len(criterion.chain.values if criterion.chain else criterion.values)
            if values > MAX_SEARCH_VALUES:
                raise TooCostly(f"more than {MAX_SEARCH_VALUES} values in one search")
    return SearchRequest(
        criteria=tuple(criteria),
        sort=tuple(sort),
        count=count,
        total=total,
        summary=summary,
        elements=tuple(elements),
        includes=tuple(dict.fromkeys(includes)),
        cursor=cursor,
        used=tuple(used),
        ignored=tuple(reject.ignored),
    )
