"""The audit log's SQL: append records in batches, search them, forget the old ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select
from sqlalchemy.sql.elements import ColumnElement

from pacsfhir.index.schema import audit_event
from pacsfhir.vocabulary.records import AuditRecord


@dataclass(frozen=True)
class AuditQuery:
    """An AuditEvent search: every criterion given must hold. Times are microseconds
    since the epoch, ``since`` inclusive and ``until`` exclusive; ``after`` is the paging
    cursor (the last key of the previous page, newest first)."""

    since: tuple[int, ...] = ()
    until: tuple[int, ...] = ()
    patient: str | None = None
    agent: str | None = None
    outcome: int | None = None
    study_uid: str | None = None
    count: int = 50
    after: int | None = None
    total: bool = True  # count every match (``_total=accurate``, the default)


def _row(record: AuditRecord) -> dict[str, Any]:
    return {
        "recorded": record.recorded,
        "subject": record.subject,
        "client_id": record.client_id,
        "fhir_user": record.fhir_user,
        "token_patient": record.token_patient,
        "patient": record.patient,
        "study_uid": record.study_uid,
        "address": record.address,
        "method": record.method,
        "route": record.route,
        "action": record.action,
        "outcome": record.outcome,
        "status": record.status,
        "query_names": "&".join(record.query_names),
    }


def append(engine: Engine, records: Sequence[AuditRecord]) -> None:
    """Insert ``records`` in one transaction (their ``id`` is assigned by the index)."""
    if records:
        with engine.begin() as conn:
            conn.execute(insert(audit_event), [_row(r) for r in records])


def forget_before(engine: Engine, moment: int) -> int:
    """Delete the events recorded before ``moment``; how many went."""
    with engine.begin() as conn:
        return conn.execute(delete(audit_event).where(audit_event.c.recorded < moment)).rowcount


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        id=str(row.pk),
        recorded=row.recorded,
        action=row.action,
        outcome=row.outcome,
        status=row.status,
        method=row.method,
        route=row.route,
        subject=row.subject,
        client_id=row.client_id,
        fhir_user=row.fhir_user,
        token_patient=row.token_patient,
        patient=row.patient,
        study_uid=row.study_uid,
        address=row.address,
        query_names=tuple(n for n in row.query_names.split("&") if n),
    )


def _where(query: AuditQuery) -> list[ColumnElement[bool]]:
    c = audit_event.c
    clauses: list[ColumnElement[bool]] = [c.recorded >= t for t in query.since]
    clauses += [c.recorded < t for t in query.until]
    if query.patient is not None:
        clauses.append(or_(c.patient == query.patient, c.token_patient == query.patient))
    if query.agent is not None:
        clauses.append(or_(c.subject == query.agent, c.client_id == query.agent))
    if query.outcome is not None:
        clauses.append(c.outcome == query.outcome)
    if query.study_uid is not None:
        clauses.append(c.study_uid == query.study_uid)
    if query.after is not None:
        clauses.append(c.pk < query.after)
    return clauses


def search(conn: Connection, query: AuditQuery) -> tuple[list[AuditRecord], bool]:
    """Up to ``query.count`` matching records, newest first, and whether more follow."""
    statement = (
        select(audit_event)
        .where(and_(True, *_where(query)))
        .order_by(audit_event.c.pk.desc())
        .limit(query.count + 1)
    )
    rows = conn.execute(statement).all()
    return [_record(r) for r in rows[: query.count]], len(rows) > query.count


def count(conn: Connection, query: AuditQuery) -> int:
    """How many records match ``query``, paging cursor aside (Bundle.total)."""
    where = _where(replace(query, after=None))
    statement = select(func.count()).select_from(audit_event).where(and_(True, *where))
    return int(conn.execute(statement).scalar_one())


def by_id(conn: Connection, pk: int) -> AuditRecord | None:
    row = conn.execute(select(audit_event).where(audit_event.c.pk == pk)).first()
    return None if row is None else _record(row)
