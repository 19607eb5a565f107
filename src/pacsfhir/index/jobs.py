"""Jobs in the index: the SQL of upstream work shared between requests and processes.

A job is one distinct piece of work, named by its ``key`` (the same query of the same
upstream, the same study to fetch): ``submit`` of a key that is queued, running, or done
and not yet expired returns that job, so identical requests share one job, in one process
or in several on one PostgreSQL. A worker ``claim``s the oldest queued job (PostgreSQL:
``FOR UPDATE SKIP LOCKED``, so workers never take the same one; SQLite: one writer at a
time anyway), keeps it alive with ``beat``, and ends it with ``finish`` or ``fail``. A
running job whose heartbeat stopped (its process died) is taken back by
``recover_stuck``: queued again while it has attempts left, then failed with a clear
error. Rows live across restarts: nothing queued is lost.

These transactions are short and do not take the index's write lock (``writer``): jobs
must not wait behind an ingest batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from pacsfhir.index.schema import job

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass(frozen=True)
class Job:
    pk: int
    key: str
    kind: str
    payload: dict[str, Any]
    state: str
    attempts: int
    created: int
    started: int | None
    finished: int | None
    expires: int | None
    result: Any
    error: str | None

    @property
    def ended(self) -> bool:
        return self.state in (DONE, FAILED)


def _job(row: Any) -> Job:
    return Job(
        pk=row.pk,
        key=row.key,
        kind=row.kind,
        payload=json.loads(row.payload),
        state=row.state,
        attempts=row.attempts,
        created=row.created,
        started=row.started,
        finished=row.finished,
        expires=row.expires,
        result=None if row.result is None else json.loads(row.result),
        error=row.error,
    )


def get(conn: Connection, key: str) -> Job | None:
    row = conn.execute(select(job).where(job.c.key == key)).first()
    return None if row is None else _job(row)


def submit(engine: Engine, key: str, kind: str, payload: dict[str, Any], now: int) -> Job:
    """The job of ``key``: the live one (queued, running, or done and unexpired), else a
    new one queued (a failed or expired job is queued again, its attempts reset)."""
    text = json.dumps(payload, sort_keys=True)
    with engine.begin() as conn:
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            dialect_insert(job)
            .values(key=key, kind=kind, payload=text, state=QUEUED, attempts=0, created=now)
            .on_conflict_do_nothing(index_elements=["key"])
        )
        conn.execute(
            update(job)
            .where(
                job.c.key == key,
                or_(
                    job.c.state == FAILED,
                    and_(job.c.state == DONE, job.c.expires <= now),
                ),
            )
            .values(
                state=QUEUED,
                payload=text,
                attempts=0,
                created=now,
                owner=None,
                started=None,
                heartbeat=None,
                finished=None,
                expires=None,
                result=None,
                error=None,
            )
        )
        found = get(conn, key)
    assert found is not None
    return found


def claim(engine: Engine, owner: str, now: int, kinds: tuple[str, ...]) -> Job | None:
    """Take the oldest queued job of ``kinds`` for ``owner``; None when there is none."""
    with engine.begin() as conn:
        oldest = (
            select(job.c.pk)
            .where(job.c.state == QUEUED, job.c.kind.in_(kinds))
            .order_by(job.c.pk)
            .limit(1)
        )
        if conn.dialect.name == "postgresql":
            oldest = oldest.with_for_update(skip_locked=True)
        pk = conn.execute(oldest).scalar()
        if pk is None:
            return None
        taken = conn.execute(
            update(job)
            .where(job.c.pk == pk, job.c.state == QUEUED)
            .values(
                state=RUNNING,
                owner=owner,
                attempts=job.c.attempts + 1,
                started=now,
                heartbeat=now,
            )
        )
        if taken.rowcount != 1:
            return None  # another worker (SQLite) took it first
        row = conn.execute(select(job).where(job.c.pk == pk)).one()
    return _job(row)


def beat(engine: Engine, pks: list[int], owner: str, now: int) -> None:
    """Running jobs of ``owner`` are alive."""
    if not pks:
        return
    with engine.begin() as conn:
        conn.execute(
            update(job)
            .where(job.c.pk.in_(pks), job.c.owner == owner, job.c.state == RUNNING)
            .values(heartbeat=now)
        )


def finish(engine: Engine, pk: int, owner: str, result: Any, now: int, expires: int) -> bool:
    """End a running job with ``result`` (JSON), valid until ``expires``; False when it
    was no longer this owner's (taken back as stuck)."""
    with engine.begin() as conn:
        done = conn.execute(
            update(job)
            .where(job.c.pk == pk, job.c.owner == owner, job.c.state == RUNNING)
            .values(state=DONE, finished=now, expires=expires, result=json.dumps(result))
        )
    return done.rowcount == 1


def fail(engine: Engine, pk: int, owner: str, error: str, now: int) -> bool:
    with engine.begin() as conn:
        failed = conn.execute(
            update(job)
            .where(job.c.pk == pk, job.c.owner == owner, job.c.state == RUNNING)
            .values(state=FAILED, finished=now, error=error[:2000])
        )
    return failed.rowcount == 1


def recover_stuck(engine: Engine, older_than: int, max_attempts: int, now: int) -> int:
    """Running jobs with no heartbeat since ``older_than``: queued again while attempts
    remain, else failed saying so. Returns how many were taken back."""
    stale = and_(job.c.state == RUNNING, job.c.heartbeat < older_than)
    with engine.begin() as conn:
        failed = conn.execute(
            update(job)
            .where(stale, job.c.attempts >= max_attempts)
            .values(
                state=FAILED,
                finished=now,
                error="stuck: its worker stopped sending heartbeats (its process gone?) "
                "on the last attempt allowed",
            )
        )
        requeued = conn.execute(
            update(job).where(stale).values(state=QUEUED, owner=None, heartbeat=None)
        )
    return int(failed.rowcount) + int(requeued.rowcount)


def recent_durations(conn: Connection, kind: str, limit: int = 20) -> list[int]:
    """How long the last ``limit`` finished jobs of ``kind`` ran (microseconds)."""
    rows = conn.execute(
        select(job.c.finished - job.c.started)
        .where(job.c.kind == kind, job.c.state == DONE, job.c.started.is_not(None))
        .order_by(job.c.finished.desc())
        .limit(limit)
    )
    return [int(d) for (d,) in rows if d is not None]


def forget_expired(engine: Engine, before: int) -> int:
    """Drop ended jobs whose result expired before ``before`` (a result is only a cache)."""
    with engine.begin() as conn:
        gone = conn.execute(
            job.delete().where(
                or_(
                    and_(job.c.state == DONE, job.c.expires < before),
                    and_(job.c.state == FAILED, job.c.finished < before),
                )
            )
        )
    return int(gone.rowcount)
