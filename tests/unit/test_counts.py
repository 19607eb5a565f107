"""``index.counts``: counts are remembered per key and index generation, evicted least
recently used first; on a real SQLite index built by the migrations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select

from pacsfhir.index.counts import CountCache, advance_generation, generation
from pacsfhir.index.engine import create_index_engine, migrate
from pacsfhir.index.schema import patient


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_index_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


def _add_patient(engine: Engine, n: int) -> None:
    row = {
        "resource_id": f"p{n}",
        "PatientID": str(n),
        "IssuerOfPatientID": "",
        "identifier_system": "",
        "PatientName": "",
        "PatientBirthDate": "",
        "PatientSex": "",
        "name_search": "",
        "name_exact": "",
        "family_search": "",
        "family_exact": "",
        "given_search": "",
        "given_exact": "",
        "version_id": 1,
        "last_updated": 0,
    }
    with engine.begin() as conn:
        conn.execute(insert(patient).values(**{k: v for k, v in row.items() if k in patient.c}))


def test_a_count_is_remembered_until_the_generation_moves(engine: Engine) -> None:
    cache = CountCache()
    statement = select(func.count()).select_from(patient)
    _add_patient(engine, 1)
    with engine.connect() as conn:
        assert generation(conn) == 0
        assert cache.count(conn, "all", statement) == 1
    _add_patient(engine, 2)  # a write that does not advance the generation...
    with engine.connect() as conn:
        assert cache.count(conn, "all", statement) == 1  # ...is not seen: the contract
        assert cache.count(conn, "other key", statement) == 2
    with engine.begin() as conn:
        advance_generation(conn)
    with engine.connect() as conn:
        assert generation(conn) == 1
        assert cache.count(conn, "all", statement) == 2


def test_least_recently_used_counts_leave_first(engine: Engine) -> None:
    cache = CountCache(size=2)
    statement = select(func.count()).select_from(patient)
    with engine.connect() as conn:
        for key in ("a", "b", "a", "c"):  # "b" is now the least recently used
            assert cache.count(conn, key, statement) == 0
    _add_patient(engine, 1)
    with engine.connect() as conn:
        assert cache.count(conn, "a", statement) == 0
        assert cache.count(conn, "c", statement) == 0
        assert cache.count(conn, "b", statement) == 1  # counted again
