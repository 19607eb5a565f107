"""QIDO-RS search (PS3.18 10.6): query parameters -> ``QidoQuery`` (pure, ``parse_query``),
and ``QidoQuery`` -> SQL over the index (``search``).

Matching follows PS3.4 C.2.2.2: single value, wildcard (``*`` ``?``), list of UIDs (or of
values, comma- or backslash-separated), and date / time / datetime ranges. Person names
match case-insensitively in any component group; ``fuzzymatching=true`` matches each
word of the query as the start of a name part, ignoring case, carets and order.

Attributes the index does not hold cannot be matched: such keys (and keys of a level
below the one searched) are ignored and reported in ``ignored`` (PS3.4 C.2.2.1.3 lets an
SCP treat optional keys it does not support as universal matching).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
)

from pacsfhir.dicom.uids import is_valid_uid
from pacsfhir.errors import BadRequest, TooCostly
from pacsfhir.index.counts import CountCache
from pacsfhir.index.schema import instance, patient, series, study
from pacsfhir.index.scope import Scope
from pacsfhir.search.limits import MAX_WORDS, non_negative_integer, shown
from pacsfhir.vocabulary.levels import Level, attribute_level, keyword_of, tag_of, vr_of
from pacsfhir.vocabulary.names import normalise

Clause = ColumnElement[bool]

MAX_RESULTS = 10_000  # the most results one response carries (PS3.18 8.3.4.4.1 maxResults)
MAX_VALUES = 100  # values in one list match
MAX_QUERY_VALUES = 200  # over all the keys of a query (SQL terms: see search.parse)
MAX_VALUE_LENGTH = 1024  # characters in one value (longer than any value the index keeps)
_RESERVED = frozenset({"includefield", "fuzzymatching", "limit", "offset", "accept", "charset"})
_SINGLE = frozenset({"fuzzymatching", "limit", "offset"})
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# re.ASCII: a digit is 0-9 (``\d`` alone also takes "٣", which int() reads as 3)
_DA = re.compile(r"\d{8}", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d{1,12}", re.ASCII)
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?", re.ASCII)
_DT = re.compile(
    r"(\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?)([+-]\d{4})?",
    re.ASCII,
)
_TM_TOP = "235959.999999"  # a partial time's upper bound: itself + the rest of this
_DT_TOP = "99991231235959.999999"
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_LIST_BY_COMMA = frozenset({"UI", "CS", "IS"})  # no comma can occur in their values
_LIKE_ESCAPE = "!"
_OLD_SEPARATORS = {"DA": ".", "TM": ":"}
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_DAY_MICROS = 86_400_000_000


@dataclass(frozen=True)
class ValueMatch:
    """Any of ``values`` (single values, or wildcard patterns for text VRs)."""

    keyword: str
    vr: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class RangeMatch:
    """``low`` <= value <= ``high`` as DICOM strings; None: open. A partial time or
    datetime bound stands for its whole implicit range."""

    keyword: str
    vr: str
    low: str | None
    high: str | None


Match = ValueMatch | RangeMatch


@dataclass(frozen=True)
class QidoQuery:
    level: Level
    study_uid: str | None = None  # from the path
    series_uid: str | None = None
    matches: tuple[Match, ...] = ()
    includes: frozenset[int] = frozenset()  # tags asked for (includefield, return keys)
    include_all: bool = False
    fuzzy: bool = False
    limit: int = MAX_RESULTS
    offset: int = 0
    ignored: tuple[str, ...] = field(default=())  # keys that did not take part in matching


# -- the index columns that can be matched -----------------------------------------

_PATIENT_COLUMNS: dict[str, Any] = {
    k: patient.c[k] for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
}
_STUDY_COLUMNS: dict[str, Any] = {
    **{
        k: study.c[k]
        for k in (
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "StudyDescription",
            "ReferringPhysicianName",
        )
    },
    "ModalitiesInStudy": study.c.modalities,
}
_SERIES_COLUMNS: dict[str, Any] = {
    k: series.c[k]
    for k in (
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "SeriesDate",
        "SeriesTime",
    )
}
_INSTANCE_COLUMNS: dict[str, Any] = {
    k: instance.c[k] for k in ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")
}
MATCHABLE = (
    frozenset(_PATIENT_COLUMNS)
    | set(_STUDY_COLUMNS)
    | set(_SERIES_COLUMNS)
    | set(_INSTANCE_COLUMNS)
)


# -- parsing ------------------------------------------------------------------------


def parse_attribute(text: str) -> int:
    """An attribute ID: a keyword or eight hex digits; for a sequence path
    (``00400275.00400009``) the top-level attribute."""
    head = text.split(".")[0]
    for part in text.split("."):
        if not (_TAG.fullmatch(part) or _KEYWORD.fullmatch(part)):
            raise BadRequest(f"{shown(text)} is not a DICOM keyword or tag")
    if _TAG.fullmatch(head):
        return int(head, 16)
    try:
        return tag_of(head)
    except KeyError:
        raise BadRequest(f"{shown(head)} is not a DICOM keyword") from None


def _check_date(value: str, key: str) -> str:
    if not _DA.fullmatch(value):
        raise BadRequest(f"{key}={shown(value)}: a date is YYYYMMDD")
    try:
        datetime.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise BadRequest(f"{key}={shown(value)}: no such date") from None
    return value


def _check_time(value: str, key: str) -> str:
    found = _TM.fullmatch(value)
    if not found:
        raise BadRequest(f"{key}={shown(value)}: a time is HH[MM[SS[.FFFFFF]]]")
    hours, minutes, seconds = (int(g) if g else 0 for g in found.groups())
    if hours > 23 or minutes > 59 or seconds > 60:
        raise BadRequest(f"{key}={shown(value)}: no such time")
    return value


def _check_datetime(value: str, key: str) -> str:
    found = _DT.fullmatch(value)
    if not found:
        raise BadRequest(f"{key}={shown(value)}: a datetime is YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]")
    moment = found.group(1)
    if len(moment) >= 8:
        _check_date(moment[:8], key)
    elif len(moment) == 6 and not 1 <= int(moment[4:6]) <= 12:
        raise BadRequest(f"{key}={shown(value)}: no such month")
    if len(moment) > 8:
        _check_time(moment[8:], key)
    return moment  # the offset from UTC is not used: stored values are local times


def _split_range(value: str, vr: str, key: str) -> tuple[str, str] | None:
    """(low, high) when ``value`` is a range; None for a single value."""
    if vr != "DT":
        if "-" not in value:
            return None
        low, _, high = value.partition("-")
        if "-" in high:
            raise BadRequest(f"{key}={shown(value)}: a range has one '-'")
        return low, high
    candidates = []
    for position, char in enumerate(value):
        if char != "-":
            continue
        low, high = value[:position], value[position + 1 :]
        if all(not part or _DT.fullmatch(part) for part in (low, high)) and (low or high):
            candidates.append((low, high))
    if _DT.fullmatch(value):
        return None  # a single value with a negative offset from UTC
    if len(candidates) != 1:
        raise BadRequest(f"{key}={shown(value)}: not a datetime or datetime range")
    return candidates[0]


def _temporal(keyword: str, vr: str, value: str, key: str) -> Match:
    check = {"DA": _check_date, "TM": _check_time, "DT": _check_datetime}[vr]
    top = {"DA": "", "TM": _TM_TOP, "DT": _DT_TOP}[vr]
    bounds = _split_range(value, vr, key)
    if bounds is None:
        single = check(value, key)
        if vr == "DA":
            return ValueMatch(keyword, vr, (single,))
        return RangeMatch(keyword, vr, single, single + top[len(single) :])
    low = check(bounds[0], key) if bounds[0] else None
    high = check(bounds[1], key) if bounds[1] else None
    if low is None and high is None:
        raise BadRequest(f"{key}={shown(value)}: a range needs a start or an end")
    if high is not None:
        high += top[len(high) :]
    if low is not None and high is not None and low > high:
        raise BadRequest(f"{key}={shown(value)}: the range ends before it starts")
    return RangeMatch(keyword, vr, low, high)


def _values(vr: str, value: str, key: str) -> tuple[str, ...]:
    parts = re.split(r"[\\,]", value) if vr in _LIST_BY_COMMA else value.split("\\")
    if len(parts) > MAX_VALUES:
        raise TooCostly(f"{key}: more than {MAX_VALUES} values")
    if any(len(p) > MAX_VALUE_LENGTH for p in parts):
        raise TooCostly(f"{key}: a value longer than {MAX_VALUE_LENGTH} characters")
    if vr == "UI":
        for uid in parts:
            if not is_valid_uid(uid):
                raise BadRequest(f"{key}={shown(value)}: {shown(uid)} is not a valid UID")
    elif vr == "IS":
        if not all(_INTEGER.fullmatch(p.strip()) for p in parts):
            raise BadRequest(f"{key}={shown(value)}: expected integers")
        parts = [str(int(p)) for p in parts]
    elif vr not in _WILDCARD_VRS and any(c in value for c in "*?"):
        raise BadRequest(f"{key}={shown(value)}: wildcards are not allowed for VR {vr}")
    return tuple(dict.fromkeys(parts))


def parse_match(keyword: str, vr: str, value: str, key: str | None = None) -> Match | None:
    """The match for one key; None for universal matching (empty, or only ``*``)."""
    key = key or keyword
    if value == "" or (value.strip("*") == "" and vr in _WILDCARD_VRS):
        return None
    if vr in ("DA", "TM", "DT"):
        if "\\" in value or "," in value:
            raise BadRequest(f"{key}={shown(value)}: one date, time or range only")
        return _temporal(keyword, vr, value, key)
    return ValueMatch(keyword, vr, _values(vr, value, key))


def _parse_includes(values: Sequence[str]) -> tuple[frozenset[int], bool]:
    tags: set[int] = set()
    include_all = False
    for value in values:
        for item in value.split(","):
            if item == "all":
                include_all = True
            elif item:
                tags.add(parse_attribute(item))
    return frozenset(tags), include_all


def _split_pairs(
    pairs: Sequence[tuple[str, str]],
) -> tuple[dict[int, tuple[str, list[str]]], dict[str, str], list[str]]:
    """Match keys (tag -> first name used, values), single options, includefields. A
    key given more than once (as dicomweb-client sends a list) adds values to match."""
    keys: dict[int, tuple[str, list[str]]] = {}
    options: dict[str, str] = {}
    include_values: list[str] = []
    for name, value in pairs:
        if name == "includefield":
            include_values.append(value)
        elif name in _RESERVED:
            if name in _SINGLE and name in options:
                raise BadRequest(f"{name} given more than once")
            options[name] = value
        else:
            keys.setdefault(parse_attribute(name), (name, []))[1].append(value)
    return keys, options, include_values


def _key_match(
    tag: int, name: str, values: list[str], level: Level
) -> tuple[Match | None, bool, bool]:
    """(the match, whether the attribute is returned, whether the key is ignored)."""
    value = "\\".join(v for v in values if v)
    keyword = keyword_of(tag) if "." not in name else ""
    match = parse_match(keyword, vr_of(tag), value, name) if keyword else None
    if attribute_level(tag) > level:
        return None, False, bool(value)
    if match is None:
        return None, True, bool(value) and not keyword
    if keyword not in MATCHABLE:
        return None, True, True
    return match, True, False


def _check_fuzzy_words(matches: Sequence[Match]) -> None:
    """Fuzzy matching makes one SQL term per word: a bounded number of them."""
    for match in matches:
        if isinstance(match, ValueMatch) and match.vr == "PN":
            words = sum(len(_words(v)) for v in match.values)
            if words > MAX_WORDS:
                raise TooCostly(
                    f"{match.keyword}: fuzzy matching takes at most {MAX_WORDS} words, not {words}"
                )


def parse_query(
    level: Level,
    pairs: Sequence[tuple[str, str]],
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> QidoQuery:
    """Parse a QIDO-RS query string (PS3.18 8.3.4) searched at ``level``, under the
    study (and series) of the request path. Malformed input raises ``BadRequest``."""
    for name, uid in (("study", study_uid), ("series", series_uid)):
        if uid is not None and not is_valid_uid(uid):
            raise BadRequest(f"{shown(uid)} in the path is not a valid {name} UID")
    keys, options, include_values = _split_pairs(pairs)
    matches: list[Match] = []
    returned: set[int] = set()
    ignored: list[str] = []
    for tag, (name, values) in keys.items():
        match, is_returned, is_ignored = _key_match(tag, name, values, level)
        if match is not None:
            matches.append(match)
        if is_returned:
            returned.add(tag)
        if is_ignored:
            ignored.append(name)
    includes, include_all = _parse_includes(include_values)
    includes = frozenset(t for t in includes | returned if attribute_level(t) <= level)
    fuzzy = options.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise BadRequest(f"fuzzymatching={shown(fuzzy)}: expected true or false")
    total = sum(len(m.values) for m in matches if isinstance(m, ValueMatch))
    if total > MAX_QUERY_VALUES:
        raise TooCostly(f"more than {MAX_QUERY_VALUES} values in one query")
    if fuzzy == "true":
        _check_fuzzy_words(matches)
    limit = non_negative_integer("limit", options["limit"]) if "limit" in options else MAX_RESULTS
    return QidoQuery(
        level=level,
        study_uid=study_uid,
        series_uid=series_uid,
        matches=tuple(matches),
        includes=includes,
        include_all=include_all,
        fuzzy=fuzzy == "true",
        limit=min(limit, MAX_RESULTS),
        offset=non_negative_integer("offset", options["offset"]) if "offset" in options else 0,
        ignored=tuple(ignored),
    )


# -- SQL ----------------------------------------------------------------------------


def _like_pattern(value: str) -> str:
    escaped = "".join(_LIKE_ESCAPE + c if c in "%_!" else c for c in value)
    return escaped.replace("*", "%").replace("?", "_")


def _text_clause(column: Any, value: str) -> Clause:
    if "*" in value or "?" in value:
        clause: Clause = column.like(_like_pattern(value), escape=_LIKE_ESCAPE)
        return clause
    equal: Clause = column == value
    return equal


def _person_name_clause(column: Any, value: str) -> Clause:
    """Case-insensitive, against any component group: ``=group=`` in ``=value=``."""
    groups = func.lower(literal("=") + column + literal("="))
    pattern = func.lower(literal("%=" + _like_pattern(value) + "=%"))
    clause: Clause = groups.like(pattern, escape=_LIKE_ESCAPE)
    return clause


def _words(value: str) -> list[str]:
    return [w.rstrip("*") for w in re.split(r"[\s^=,]+", value) if w.rstrip("*")]


def _fuzzy_clause(keyword: str, column: Any, value: str) -> Clause:
    """Every word of the query starts a word of the name (case, carets, order ignored;
    on Patient's Name also accents, through the index's normalised name parts)."""
    words = _words(value)
    if not words:
        return true()
    if keyword == "PatientName":
        return and_(
            *(
                patient.c.name_search.like(
                    "%|" + _like_pattern(normalise(w)) + "%", escape=_LIKE_ESCAPE
                )
                for w in words
            )
        )
    spaced = func.lower(literal(" ") + func.replace(func.replace(column, "^", " "), "=", " "))
    return and_(
        *(
            spaced.like(func.lower(literal("% " + _like_pattern(w) + "%")), escape=_LIKE_ESCAPE)
            for w in words
        )
    )


def _multi_value_clause(column: Any, value: str) -> Clause:
    """One of the backslash-separated values of ``column`` (Modalities in Study)."""
    clause: Clause = (literal("\\") + column + literal("\\")).like(
        "%\\" + _like_pattern(value) + "\\%", escape=_LIKE_ESCAPE
    )
    return clause


def match_clause(match: Match, column: Any, fuzzy: bool = False) -> Clause:
    if match.vr in _OLD_SEPARATORS:  # ACR-NEMA dates and times: 1997.04.24, 11:20:00
        column = func.replace(column, _OLD_SEPARATORS[match.vr], "")
    if isinstance(match, RangeMatch):
        bounds: list[Clause] = [column != ""]
        if match.low is not None:
            bounds.append(column >= match.low)
        if match.high is not None:
            bounds.append(column <= match.high)
        return and_(*bounds)
    values = match.values
    if match.vr == "PN":
        if fuzzy:
            return or_(*(_fuzzy_clause(match.keyword, column, v) for v in values))
        return or_(*(_person_name_clause(column, v) for v in values))
    if match.keyword == "ModalitiesInStudy":
        exact = [v for v in values if "*" not in v and "?" not in v]
        clauses = [_multi_value_clause(column, v) for v in values if v not in exact]
        if exact:  # through the index on series Modality (the study's are its series')
            clauses.append(
                study.c.pk.in_(select(series.c.study_pk).where(series.c.Modality.in_(exact)))
            )
        return or_(*clauses)
    if match.vr in _WILDCARD_VRS:
        return or_(*(_text_clause(column, v) for v in values))
    clause: Clause = column.in_(values) if len(values) > 1 else column == values[0]
    return clause


def _clauses(query: QidoQuery, columns: dict[str, Any]) -> list[Clause]:
    return [
        match_clause(m, columns[m.keyword], query.fuzzy)
        for m in query.matches
        if m.keyword in columns
    ]


def _date_micros(date: str) -> int:
    moment = datetime.datetime(int(date[:4]), int(date[4:6]), int(date[6:8]), tzinfo=datetime.UTC)
    return (moment - _EPOCH) // datetime.timedelta(microseconds=1)


def _study_date_window(match: Match) -> tuple[int, int]:
    """The ``started_low`` values a Study Date match can have: the index's start of the
    study (Study Date and Time in UTC, see ``index.writer``) lies within a day of its
    Study Date whatever the offset from UTC (at most 14:59)."""
    if isinstance(match, ValueMatch):
        low, high = min(match.values), max(match.values)
    else:
        low, high = match.low or "00010101", match.high or "99991231"
    return _date_micros(low) - _DAY_MICROS, _date_micros(high) + 2 * _DAY_MICROS


def _study_date_index(match: Match, scan: bool) -> Clause:
    """A Study Date match narrowed through the index on ``started_low``; with ``scan``,
    through the same window written so that no index serves it (see ``_broad_dates``).
    Studies whose date the index could not read (``started_low`` NULL) are left to the
    text match."""
    column = study.c.started_low + literal_column("0") if scan else study.c.started_low
    low, high = _study_date_window(match)
    return or_(column.between(low, high), study.c.started_low.is_(None))


def _broad_dates(conn: Connection, query: QidoQuery) -> bool:
    """Does a Study Date range hold a tenth of the studies or more? SQLite, with no
    statistics on value ranges, then still walks the date index and sorts every match
    (100,000 studies, half matching: 109 ms for a page), where reading the table in
    primary key order finds a page at once (0.1 ms) and counts in 20 ms. Counting the
    index entries up to that tenth costs under a millisecond. PostgreSQL's planner has
    the statistics to choose by itself."""
    dates = [m for m in query.matches if m.keyword == "StudyDate"]
    if conn.dialect.name != "sqlite" or not dates:
        return False
    tenth = (conn.execute(select(func.max(study.c.pk))).scalar() or 0) // 10
    if tenth < 1000:
        return False
    for match in dates:
        low, high = _study_date_window(match)
        in_window = select(study.c.pk).where(study.c.started_low.between(low, high))
        capped = select(func.count()).select_from(in_window.limit(tenth).subquery())
        if int(conn.execute(capped).scalar_one()) < tenth:
            return False
    return True


def _study_condition(query: QidoQuery, scope: Scope, scan_dates: bool = False) -> list[Clause]:
    clauses = _clauses(query, _STUDY_COLUMNS)
    clauses += [_study_date_index(m, scan_dates) for m in query.matches if m.keyword == "StudyDate"]
    patient_clauses = _clauses(query, _PATIENT_COLUMNS)
    if patient_clauses:
        clauses.append(study.c.patient_pk.in_(select(patient.c.pk).where(*patient_clauses)))
    if query.study_uid is not None:
        clauses.append(study.c.StudyInstanceUID == query.study_uid)
    if not scope.everything:
        clauses.append(scope.clause())
    return clauses


def _series_condition(query: QidoQuery, scope: Scope, scan_dates: bool = False) -> list[Clause]:
    clauses = _clauses(query, _SERIES_COLUMNS)
    if query.series_uid is not None:
        clauses.append(series.c.SeriesInstanceUID == query.series_uid)
    study_clauses = _study_condition(query, scope, scan_dates)
    if study_clauses:
        clauses.append(series.c.study_pk.in_(select(study.c.pk).where(*study_clauses)))
    return clauses


def _condition(
    query: QidoQuery, scope: Scope, scan_dates: bool = False
) -> tuple[Any, list[Clause]]:
    """The table searched (its primary key) and the WHERE clauses over it."""
    if query.level is Level.STUDY:
        return study.c.pk, _study_condition(query, scope, scan_dates)
    if query.level is Level.SERIES:
        return series.c.pk, _series_condition(query, scope, scan_dates)
    clauses = _clauses(query, _INSTANCE_COLUMNS)
    series_clauses = _series_condition(query, scope, scan_dates)
    if series_clauses:
        clauses.append(instance.c.series_pk.in_(select(series.c.pk).where(*series_clauses)))
    return instance.c.pk, clauses


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]  # keyed by DICOM keyword; "_pk", "_blob" (instances)
    remaining: int  # matches after this page


def _details(level: Level) -> Select[Any]:
    columns: list[Any] = [
        patient.c.PatientName,
        patient.c.PatientID,
        patient.c.PatientBirthDate,
        patient.c.PatientSex,
        *(study.c[k] for k in _STUDY_COLUMNS if k != "ModalitiesInStudy"),
        study.c.TimezoneOffsetFromUTC,
        study.c.NameOfPhysiciansReadingStudy,
        study.c.modalities.label("ModalitiesInStudy"),
        study.c.number_of_series.label("NumberOfStudyRelatedSeries"),
        study.c.number_of_instances.label("NumberOfStudyRelatedInstances"),
    ]
    joins: Any = study.join(patient, study.c.patient_pk == patient.c.pk)
    pk: Any = study.c.pk
    if level >= Level.SERIES:
        columns += [
            *_SERIES_COLUMNS.values(),
            series.c.PerformingPhysicianName,
            series.c.OperatorsName,
            series.c.number_of_instances.label("NumberOfSeriesRelatedInstances"),
        ]
        joins = series.join(joins, series.c.study_pk == study.c.pk)
        pk = series.c.pk
    if level is Level.INSTANCE:
        columns += [*_INSTANCE_COLUMNS.values(), instance.c.NumberOfFrames, instance.c.blob]
        joins = instance.join(joins, instance.c.series_pk == series.c.pk)
        pk = instance.c.pk
    return select(pk.label("_pk"), *columns).select_from(joins)


def _matching(query: QidoQuery) -> QidoQuery:
    """``query`` without what does not change which rows match (page, return keys)."""
    return replace(query, includes=frozenset(), include_all=False, limit=0, offset=0, ignored=())


def search(
    conn: Connection, query: QidoQuery, scope: Scope, counts: CountCache | None = None
) -> Page:
    """One page of matches in ``scope``, in the order they were indexed, and how many
    matches remain after it (the count remembered in ``counts`` when given)."""
    pk, clauses = _condition(query, scope, _broad_dates(conn, query))
    if query.limit == 0:
        return Page([], 0)
    # One round trip: the page's pks as a subquery of the details query.
    page = (
        select(pk).where(*clauses).order_by(pk).limit(query.limit).offset(query.offset)
    ).correlate(None)
    details = _details(query.level).where(pk.in_(page)).order_by(pk)
    rows = [dict(row._mapping) for row in conn.execute(details)]
    remaining = 0
    if len(rows) == query.limit:
        statement = select(func.count()).select_from(pk.table).where(*clauses)
        if counts is None:
            total = int(conn.execute(statement).scalar_one())
        else:
            total = counts.count(conn, ("qido", _matching(query), scope), statement)
        remaining = max(0, total - query.offset - len(rows))
    for row in rows:
        if "blob" in row:
            row["_blob"] = row.pop("blob")
    return Page(rows, remaining)


def representative_blobs(conn: Connection, level: Level, pks: Sequence[int]) -> dict[int, str]:
    """For each study (or series) pk, the blob of its first indexed instance."""
    if not pks or level is Level.INSTANCE:
        return {}
    owner = series.c.study_pk if level is Level.STUDY else instance.c.series_pk
    first = (
        select(owner.label("owner"), func.min(instance.c.pk).label("first"))
        .select_from(instance.join(series, instance.c.series_pk == series.c.pk))
        .where(owner.in_(pks))
        .group_by(owner)
        .subquery()
    )
    rows = conn.execute(
        select(first.c.owner, instance.c.blob).join(first, instance.c.pk == first.c.first)
    )
    return {owner_pk: blob for owner_pk, blob in rows}


def exists(conn: Connection, query: QidoQuery, scope: Scope) -> bool:
    """Does the study (and series) of the request path exist in ``scope``?"""
    clauses: list[Clause] = [study.c.StudyInstanceUID == query.study_uid]
    if not scope.everything:
        clauses.append(scope.clause())
    found: Select[Any] = select(study.c.pk).where(*clauses)
    if query.series_uid is not None:
        found = (
            select(series.c.pk)
            .join(study, series.c.study_pk == study.c.pk)
            .where(series.c.SeriesInstanceUID == query.series_uid, *clauses)
        )
    return conn.execute(found.limit(1)).first() is not None
