"""QIDO-RS search over the index: a ``QidoQuery`` (parsed in ``search.qido``) -> SQL.

Matching follows PS3.4 C.2.2.2 as ``search.qido`` describes; ``match_clause`` turns one
match into a condition on a column.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, replace
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

from pacsfhir.index.counts import CountCache
from pacsfhir.index.schema import instance, patient, series, study
from pacsfhir.index.scope import Scope
from pacsfhir.search.qido import (
    WILDCARD_VRS,
    Match,
    QidoQuery,
    RangeMatch,
    ValueMatch,
    name_words,
)
from pacsfhir.vocabulary.levels import Level
from pacsfhir.vocabulary.names import normalise

Clause = ColumnElement[bool]

_LIKE_ESCAPE = "!"
_OLD_SEPARATORS = {"DA": ".", "TM": ":"}
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_DAY_MICROS = 86_400_000_000


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
# Returned, not matched: 0 in the index is "the file has none", NULL "not indexed yet"
IMAGE_PIXEL_KEYWORDS = ("Rows", "Columns", "BitsAllocated")
_INSTANCE_COLUMNS: dict[str, Any] = {
    k: instance.c[k] for k in ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")
}


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


def _fuzzy_clause(keyword: str, column: Any, value: str) -> Clause:
    """Every word of the query starts a word of the name (case, carets, order ignored;
    on Patient's Name also accents, through the index's normalised name parts)."""
    words = name_words(value)
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
    if match.vr in WILDCARD_VRS:
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
        columns += [
            *_INSTANCE_COLUMNS.values(),
            *(instance.c[k] for k in IMAGE_PIXEL_KEYWORDS),
            instance.c.NumberOfFrames,
            instance.c.blob,
        ]
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
