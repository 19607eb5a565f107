"""``SearchRequest`` -> SQL over the index: one WHERE clause per criterion, keyset
paging so pages stay correct while new studies arrive.

What each parameter matches is the R4 FHIRPath expression of the parameter evaluated
over the ImagingStudy that ``mapping.imagingstudy`` builds; tests compare the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.sql.elements import False_

from pacsfhir.errors import InvalidSearchParameter
from pacsfhir.index.counts import CountCache
from pacsfhir.index.schema import (
    instance,
    linked_identifier,
    linked_patient,
    patient,
    series,
    study,
    study_code,
)
from pacsfhir.search.model import (
    Criterion,
    Cursor,
    DateValue,
    Reference,
    SearchRequest,
    SortKey,
    Token,
)
from pacsfhir.vocabulary import codes
from pacsfhir.vocabulary.body_part_table import BODY_PART_SNOMED
from pacsfhir.vocabulary.ids import DICOM_UID_SYSTEM, ENDPOINT_ID
from pacsfhir.vocabulary.names import normalise

Clause = ColumnElement[bool]
_NO_VALUE = 2**62  # sorts a missing `started` last, whichever the direction
_DAY = 86_400_000_000
_GENDER_TO_DICOM = {"male": "M", "female": "F", "other": "O"}


@dataclass(frozen=True)
class Page:
    study_pks: list[int]
    total: int | None
    next_cursor: Cursor | None


# -- tokens -------------------------------------------------------------------------


def _system_ok(token: Token, system: str) -> bool:
    """Does a fixed system satisfy the token's system part?"""
    return token.system is None or token.system == system


def _system_clause(token: Token, column: Any) -> Clause:
    if token.system is None:
        return true()
    clause: Clause = column == token.system
    return clause


def _fixed_system_code(
    token: Token, system: str, column: Any, code_to_value: Callable[[str], Any] | None = None
) -> Clause:
    """A field whose system is constant and whose code is ``column`` (mapped)."""
    if not _system_ok(token, system):
        return false()
    if token.code is None:
        present: Clause = column != ""
        return present
    value = code_to_value(token.code) if code_to_value else token.code
    if value is None:
        return false()
    if isinstance(value, list | tuple | set | frozenset):
        return column.in_(sorted(value)) if value else false()
    clause: Clause = column == value
    return clause


def _urn_oid(code: str) -> str | None:
    return code[len("urn:oid:") :] if code.startswith("urn:oid:") else None


def _body_part_terms(code: str) -> list[str]:
    return [term for term, (sct, _) in BODY_PART_SNOMED.items() if sct == code]


def _modality_values(code: str) -> list[str]:
    return [code, ""] if code == "OT" else [code]  # an empty Modality is shown as OT


def _identifier_clause(token: Token) -> Clause:
    uid = _fixed_system_code(token, DICOM_UID_SYSTEM, study.c.StudyInstanceUID, _urn_oid)
    accession = and_(
        study.c.AccessionNumber != "",
        _system_clause(token, study.c.accession_system),
        true() if token.code is None else study.c.AccessionNumber == token.code,
    )
    study_id = and_(
        study.c.StudyID != "",
        true() if token.system is None or token.system == "" else false(),
        true() if token.code is None else study.c.StudyID == token.code,
    )
    return or_(uid, accession, study_id)


def _identifiers_clause(tokens: list[Token]) -> Clause:
    """Any of ``tokens`` (``_identifier_clause`` each), the tokens that have a code
    grouped by system into IN lists: SQLite's planner spends time quadratic in OR'ed
    terms, and each token would otherwise be three."""
    by_system: dict[str | None, set[str]] = {}
    alternatives: list[Clause] = []
    for token in dict.fromkeys(tokens):
        if token.code:
            by_system.setdefault(token.system, set()).add(token.code)
        else:
            alternatives.append(_identifier_clause(token))
    for system, code_set in by_system.items():
        values = sorted(code_set)
        if system in (None, DICOM_UID_SYSTEM):
            uids = sorted({uid for uid in map(_urn_oid, values) if uid is not None})
            if uids:
                alternatives.append(study.c.StudyInstanceUID.in_(uids))
        accession: Clause = study.c.AccessionNumber.in_(values)
        if system is not None:
            accession = and_(study.c.accession_system == system, accession)
        alternatives.append(and_(study.c.AccessionNumber != "", accession))
        if system in (None, ""):
            alternatives.append(and_(study.c.StudyID != "", study.c.StudyID.in_(values)))
    return or_(*alternatives) if alternatives else false()


# "Some series (instance) of the study matches" as ``study.pk IN (subquery)``: SQLite plans
# this several times faster than a correlated EXISTS for broad searches (measured at
# 100,000 studies: count 250 -> 55 ms); study_pk is NOT NULL, so NOT IN is safe for :not.


def _series_exists(condition: Clause) -> Clause:
    if isinstance(condition, False_):
        return condition
    return study.c.pk.in_(select(series.c.study_pk).where(condition))


def _instance_exists(condition: Clause) -> Clause:
    if isinstance(condition, False_):
        return condition
    return study.c.pk.in_(
        select(series.c.study_pk)
        .select_from(series.join(instance, instance.c.series_pk == series.c.pk))
        .where(condition)
    )


def _token_clause(param: str, token: Token) -> Clause:
    if param == "_id":
        return _fixed_system_code(token, "", study.c.StudyInstanceUID)
    if param == "identifier":
        return _identifier_clause(token)
    if param == "status":
        matches = _system_ok(token, codes.IMAGINGSTUDY_STATUS) and token.code in (None, "available")
        return true() if matches else false()
    if param == "modality":
        return _series_exists(
            _fixed_system_code(token, codes.DCM, series.c.Modality, _modality_values)
            if token.code is not None
            else true()
            if _system_ok(token, codes.DCM)
            else false()
        )
    if param == "series":
        return _series_exists(_fixed_system_code(token, "", series.c.SeriesInstanceUID))
    if param == "instance":
        return _instance_exists(_fixed_system_code(token, "", instance.c.SOPInstanceUID))
    if param == "dicom-class":
        return _instance_exists(
            _fixed_system_code(token, codes.RFC3986, instance.c.SOPClassUID, _urn_oid)
        )
    if param == "bodysite":
        if token.code is None:  # `system|`: only the terms that have a SNOMED code
            coded = _system_ok(token, codes.SNOMED)
            terms = sorted(BODY_PART_SNOMED) if coded else []
            return _series_exists(series.c.BodyPartExamined.in_(terms) if terms else false())
        return _series_exists(
            _fixed_system_code(token, codes.SNOMED, series.c.BodyPartExamined, _body_part_terms)
        )
    if param == "reason":
        return exists().where(
            study_code.c.study_pk == study.c.pk,
            study_code.c.param == "reason",
            _system_clause(token, study_code.c.system),
            true() if token.code is None else study_code.c.code == token.code,
        )
    raise AssertionError(f"no token clause for {param}")


# -- dates --------------------------------------------------------------------------


def date_clause(value: DateValue, low: Any, high: Any, now: int) -> Clause:
    """R4 3.1.1.5.6: prefixes compare the value's implicit range with the target's."""
    pl, ph = value.low, value.high
    contained = and_(low >= pl, high <= ph)
    clause: Clause
    if value.prefix == "eq":
        clause = contained
    elif value.prefix == "ne":
        clause = not_(contained)
    elif value.prefix == "gt":
        clause = high > ph
    elif value.prefix == "lt":
        clause = low < pl
    elif value.prefix == "ge":
        clause = or_(high > ph, contained)
    elif value.prefix == "le":
        clause = or_(low < pl, contained)
    elif value.prefix == "sa":
        clause = low > ph
    elif value.prefix == "eb":
        clause = high < pl
    else:  # ap: overlap, widened by 10% of the distance from now (at least a day)
        margin = max(abs(now - pl) // 10, _DAY)
        clause = and_(low <= ph + margin, high >= pl - margin)
    return and_(low.is_not(None), clause)


# -- references, strings, patients --------------------------------------------------


def _local_ids(values: tuple[Any, ...], resource_type: str) -> list[str]:
    return [
        v.resource_id
        for v in values
        if isinstance(v, Reference) and not v.external and v.resource_type in (None, resource_type)
    ]


def _string_clause(criterion: Criterion, value: str) -> Clause:
    column_base = {"name": "name", "family": "family", "given": "given"}[criterion.param]
    if criterion.modifier == "exact":
        column = patient.c[f"{column_base}_exact"]
        return column.like("%|" + _like_escape(value) + "|%", escape="\\")
    column = patient.c[f"{column_base}_search"]
    needle = _like_escape(normalise(value))
    if criterion.modifier == "contains":
        return column.like("%" + needle + "%", escape="\\")
    return column.like("%|" + needle + "%", escape="\\")


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _patient_clause(criterion: Criterion, now: int) -> Clause:
    if criterion.missing is not None:
        present = {
            "_id": true(),
            "identifier": patient.c.PatientID != "",
            "name": patient.c.name_search != "",
            "family": patient.c.family_search != "",
            "given": patient.c.given_search != "",
            "birthdate": patient.c.birth_low.is_not(None),
            "gender": patient.c.PatientSex.in_(sorted(_GENDER_TO_DICOM.values())),
        }[criterion.param]
        return not_(present) if criterion.missing else present
    alternatives: list[Clause] = []
    for value in criterion.values:
        if criterion.param in ("name", "family", "given"):
            alternatives.append(_string_clause(criterion, str(value)))
        elif criterion.param == "birthdate":
            assert isinstance(value, DateValue)
            alternatives.append(date_clause(value, patient.c.birth_low, patient.c.birth_high, now))
        elif criterion.param == "_id":
            assert isinstance(value, Token)
            alternatives.append(
                or_(
                    _fixed_system_code(value, "", patient.c.resource_id),
                    _linked_and(_fixed_system_code(value, "", patient.c.linked_to)),
                )
            )
        elif criterion.param == "identifier":
            assert isinstance(value, Token)
            alternatives.append(
                or_(
                    and_(
                        patient.c.PatientID != "",
                        _system_clause(value, patient.c.identifier_system),
                        true() if value.code is None else patient.c.PatientID == value.code,
                    ),
                    _linked_and(patient.c.linked_to.in_(_linked_with_identifier(value))),
                )
            )
        elif criterion.param == "gender":
            assert isinstance(value, Token)
            alternatives.append(
                _fixed_system_code(
                    value, codes.ADMIN_GENDER, patient.c.PatientSex, _GENDER_TO_DICOM.get
                )
            )
    clause = or_(*alternatives) if alternatives else false()
    return not_(clause) if criterion.modifier == "not" else clause


def _linked_and(condition: Clause) -> Clause:
    """``condition`` on ``patient.linked_to``, false (not unknown) for an unlinked patient,
    so that ``:not`` of it holds there."""
    return and_(patient.c.linked_to.is_not(None), condition)


def _linked_with_identifier(value: Token) -> Any:
    """The EHR patients (index.links) holding an identifier that matches ``value``: the
    subject of a linked DICOM patient's studies is the EHR patient, with all its
    identifiers (an EHR identifier without a system has its issuer's name instead)."""
    return (
        select(linked_patient.c.resource_id)
        .join(linked_identifier, linked_identifier.c.linked_pk == linked_patient.c.pk)
        .where(
            _system_clause(value, linked_identifier.c.system),
            true() if value.code is None else linked_identifier.c.value == value.code,
        )
    )


def _patient_subquery(condition: Clause) -> Clause:
    return study.c.patient_pk.in_(select(patient.c.pk).where(condition))


# -- criteria -----------------------------------------------------------------------

_ALWAYS_PRESENT = frozenset(
    {
        "_id",
        "_lastUpdated",
        "identifier",
        "status",
        "patient",
        "subject",
        "endpoint",
        "series",
        "instance",
        "dicom-class",
        "modality",
    }
)
_NEVER_PRESENT = frozenset({"encounter", "basedon"})


def _present_clause(param: str) -> Clause:
    if param in _ALWAYS_PRESENT:
        return true()
    if param in _NEVER_PRESENT:
        return false()
    return {
        "started": study.c.started_low.is_not(None),
        "bodysite": _series_exists(series.c.BodyPartExamined != ""),
        "reason": or_(
            study.c.ReasonForTheRequestedProcedure != "",
            study.c.ReasonForRequestedProcedureCodeSequence != "[]",
        ),
        "referrer": study.c.ReferringPhysicianName != "",
        "interpreter": study.c.NameOfPhysiciansReadingStudy != "[]",
        "performer": _series_exists(
            or_(series.c.PerformingPhysicianName != "[]", series.c.OperatorsName != "[]")
        ),
    }[param]


def criterion_clause(criterion: Criterion, now: int, endpoint_id: str = ENDPOINT_ID) -> Clause:
    """``endpoint_id``: the Endpoint the emitted studies reference (it is patient-scoped in
    a Patient compartment search)."""
    if criterion.chain is not None:
        return _patient_subquery(_patient_clause(criterion.chain, now))
    if criterion.missing is not None:
        present = _present_clause(criterion.param)
        return not_(present) if criterion.missing else present
    param = criterion.param
    alternatives: list[Clause] = []
    if param in ("patient", "subject"):
        ids = _local_ids(criterion.values, "Patient")
        if ids:
            alternatives.append(
                _patient_subquery(or_(patient.c.resource_id.in_(ids), patient.c.linked_to.in_(ids)))
            )
    elif param == "endpoint":
        if endpoint_id in _local_ids(criterion.values, "Endpoint"):
            alternatives.append(true())
    elif param in ("started", "_lastUpdated"):
        low, high = (
            (study.c.started_low, study.c.started_high)
            if param == "started"
            else (study.c.last_updated, study.c.last_updated + 999)
        )
        for value in criterion.values:
            assert isinstance(value, DateValue)
            alternatives.append(date_clause(value, low, high, now))
    elif param in ("encounter", "basedon", "referrer", "interpreter", "performer"):
        pass  # studies made from DICOM carry names, never references, for these
    elif param == "identifier":
        alternatives.append(
            _identifiers_clause([v for v in criterion.values if isinstance(v, Token)])
        )
    else:
        for value in criterion.values:
            assert isinstance(value, Token)
            alternatives.append(_token_clause(param, value))
    clause = or_(*alternatives) if alternatives else false()
    return not_(clause) if criterion.modifier == "not" else clause


# -- sorting and paging -------------------------------------------------------------


def _sort_column(key: SortKey) -> Any:
    if key.param == "started":
        return func.coalesce(study.c.started_low, -_NO_VALUE if key.descending else _NO_VALUE)
    if key.param == "_lastUpdated":
        return study.c.last_updated
    return study.c.StudyInstanceUID


_SORT_TYPES: dict[str, type] = {"started": int, "_lastUpdated": int, "_id": str}


def _cursor_fits(sort: tuple[SortKey, ...], cursor: Cursor) -> bool:
    """One value per sort key, of the key's type (never NULL: ``_sort_column`` gives
    none), so that no engine is asked to compare a bigint with a text."""
    if len(cursor.values) != len(sort):
        return False
    return all(
        isinstance(value, _SORT_TYPES[key.param]) and not isinstance(value, bool)
        for key, value in zip(sort, cursor.values, strict=True)
    )


def _after(columns: list[tuple[Any, bool]], cursor: Cursor) -> Clause:
    """Rows strictly after the cursor in (sort keys..., pk) order."""
    clause: Clause = study.c.pk > cursor.pk
    for (column, descending), value in reversed(list(zip(columns, cursor.values, strict=True))):
        beyond = column < value if descending else column > value
        clause = or_(beyond, and_(column == value, clause))
    return clause


def where_clause(
    request: SearchRequest, now: int | None = None, endpoint_id: str = ENDPOINT_ID
) -> Clause:
    now = now if now is not None else time.time_ns() // 1000
    return and_(true(), *(criterion_clause(c, now, endpoint_id) for c in request.criteria))


def search_page(
    conn: Connection,
    request: SearchRequest,
    extra: Clause | None = None,
    endpoint_id: str = ENDPOINT_ID,
    counts: CountCache | None = None,
    extra_key: Hashable = None,
) -> Page:
    """One page of matching study pks, the total when asked for, and the next cursor.
    ``extra``: a further condition (a compartment), told apart in ``counts`` (where
    totals are remembered) by ``extra_key``."""
    condition = where_clause(request, endpoint_id=endpoint_id)
    if extra is not None:
        condition = and_(condition, extra)
    wants_total = request.total != "none" or request.summary == "count"

    def count() -> int:
        statement = select(func.count()).select_from(study).where(condition)
        key = _count_key(request, endpoint_id, extra_key)
        if counts is None or key is None:
            return int(conn.execute(statement).scalar_one())
        return counts.count(conn, key, statement)

    if request.summary == "count" or request.count == 0:
        return Page([], count() if wants_total else None, None)
    columns = [(_sort_column(k), k.descending) for k in request.sort]
    query = select(study.c.pk, *(c for c, _ in columns)).where(condition)
    if request.cursor is not None:
        if not _cursor_fits(request.sort, request.cursor):
            raise InvalidSearchParameter("_cursor: not a cursor this server issued for this _sort")
        query = query.where(_after(columns, request.cursor))
    order = [c.desc() if d else c.asc() for c, d in columns] + [study.c.pk.asc()]
    rows = conn.execute(query.order_by(*order).limit(request.count + 1)).all()
    has_more = len(rows) > request.count
    rows = rows[: request.count]
    next_cursor = Cursor(tuple(rows[-1][1:]), rows[-1][0]) if has_more and rows else None
    total = None
    if wants_total:
        # a first page that holds every match needs no count
        complete = request.cursor is None and not has_more
        total = len(rows) if complete else count()
    return Page([r[0] for r in rows], total, next_cursor)


def _uses_the_clock(criterion: Criterion) -> bool:
    """``ap`` dates are widened by a share of their distance from now."""
    if criterion.chain is not None and _uses_the_clock(criterion.chain):
        return True
    return any(isinstance(v, DateValue) and v.prefix == "ap" for v in criterion.values)


def _count_key(request: SearchRequest, endpoint_id: str, extra_key: Hashable) -> Hashable:
    """What the total depends on (not the page, sort or elements); None when it also
    depends on the time of the request."""
    if any(_uses_the_clock(c) for c in request.criteria):
        return None
    return ("fhir", request.criteria, endpoint_id, extra_key)
