"""QIDO-RS Study Date ranges at a scale where the plan matters: on SQLite a range that
holds a tenth of the studies or more is read in primary key order instead of through
the date index (``qido._broad_dates``). Whichever way, the matches are the same."""

from __future__ import annotations

import datetime
import random

import pytest
from sqlalchemy import insert, select

from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.index import qido
from pacsfhir.index.schema import study
from pacsfhir.index.scope import Scope
from pacsfhir.search.qido import QidoQuery, parse_query
from pacsfhir.vocabulary.levels import Level
from tests.conftest import PYDICOM_DATA

STUDIES = 12_000
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _micros(day: datetime.date) -> int:
    moment = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
    return (moment - _EPOCH) // datetime.timedelta(microseconds=1)


@pytest.fixture
def dated(archive: Archive) -> Archive:
    """One real study, then copies of its row with new UIDs and dates spread over
    2000-2019; a few with no date (``started_low`` NULL, StudyDate empty)."""
    ingest([str(PYDICOM_DATA / "test_files" / "CT_small.dcm")], archive.engine, archive.blobs)
    rng = random.Random(7)
    with archive.engine.begin() as conn:
        template = dict(conn.execute(select(study)).one()._mapping)
        del template["pk"]
        rows = []
        for n in range(STUDIES):
            day = datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randrange(7300))
            undated = n % 997 == 0
            low = None if undated else _micros(day)
            rows.append(
                {
                    **template,
                    "StudyInstanceUID": f"2.25.{n + 1}",
                    "StudyDate": "" if undated else day.strftime("%Y%m%d"),
                    "started_low": low,
                    "started_high": None if low is None else low + 86_400_000_000 - 1,
                }
            )
        conn.execute(insert(study), rows)
    return archive


def _pks(archive: Archive, query: QidoQuery, scan: bool) -> list[int]:
    pk, clauses = qido._condition(query, Scope(), scan)
    with archive.engine.connect() as conn:
        return list(conn.execute(select(pk).where(*clauses).order_by(pk)).scalars())


RANGES = [  # (StudyDate, holds a tenth of the studies or more)
    ("-20100101", True),  # about half
    ("20150101-", True),  # about a quarter, open at the top
    ("20040101-20051231", True),  # a tenth
    ("20070301-20070331", False),
    ("20120701-20120707", False),
]


def test_both_plans_find_the_same_studies(dated: Archive) -> None:
    for value, broad in RANGES:
        query = parse_query(Level.STUDY, [("StudyDate", value), ("limit", "100")])
        through_index = _pks(dated, query, scan=False)
        in_pk_order = _pks(dated, query, scan=True)
        assert through_index == in_pk_order, value
        assert through_index, f"{value}: every range here holds studies"
        with dated.engine.connect() as conn:
            chosen = qido._broad_dates(conn, query)
            page = qido.search(conn, query, Scope())
        assert chosen is (broad and dated.engine.dialect.name == "sqlite"), value
        assert [row["_pk"] for row in page.rows] == through_index[:100], value
        assert page.remaining == max(0, len(through_index) - 100), value


def test_series_level_dates_use_the_same_plan(dated: Archive) -> None:
    query = parse_query(Level.SERIES, [("StudyDate", "-20100101")])
    assert _pks(dated, query, scan=False) == _pks(dated, query, scan=True)
