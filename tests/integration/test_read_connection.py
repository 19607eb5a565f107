"""Read connections: on PostgreSQL no transaction is opened around a request's reads (no
BEGIN / ROLLBACK round trips), yet they see every committed write; writes through
the same engine stay transactional afterwards."""

from __future__ import annotations

from sqlalchemy import func, select

from pacsfhir.archive import Archive
from pacsfhir.index.engine import read_connection
from pacsfhir.index.schema import index_state


def _generation(archive: Archive) -> int:
    with read_connection(archive.engine) as conn:
        return int(conn.execute(select(index_state.c.generation)).scalar_one())


def test_reads_leave_no_transaction_open(archive: Archive) -> None:
    with read_connection(archive.engine) as conn:
        conn.execute(select(func.count()).select_from(index_state)).scalar_one()
        driver = conn.connection.driver_connection
        if archive.engine.dialect.name == "postgresql":
            # psycopg: IDLE (0), not INTRANS: no BEGIN was sent, no ROLLBACK will be
            assert driver.info.transaction_status == 0  # type: ignore[union-attr]
        else:
            assert not driver.in_transaction  # type: ignore[union-attr]


def test_reads_see_committed_writes_and_writes_stay_transactional(archive: Archive) -> None:
    before = _generation(archive)
    with archive.engine.begin() as conn:
        conn.execute(index_state.update().values(generation=index_state.c.generation + 1))
    assert _generation(archive) == before + 1
    # a failed write transaction on a connection a read used before leaves nothing
    try:
        with archive.engine.begin() as conn:
            conn.execute(index_state.update().values(generation=index_state.c.generation + 1))
            raise RuntimeError("abort")
    except RuntimeError:
        pass
    assert _generation(archive) == before + 1
