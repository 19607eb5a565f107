"""Hostile and careless queries through the real stack, on SQLite and PostgreSQL: every
one answers 400 with a reason (or a normal answer), never 500. The requests are those of
issue 12, sent as given (percent-encoding included)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.search.model import Cursor
from pacsfhir.search.parse import encode_cursor
from tests.conftest import _database_url, make_settings
from tests.support.dicom_factory import load_template, write_variant

STUDIES = 3


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_problem: str | None,
) -> Iterator[TestClient]:
    """A few studies (one at each edge of the calendar) on each backend."""
    tmp = tmp_path_factory.mktemp(f"hostile-{request.param}")
    template = load_template()
    for number, date in enumerate(("20240102", "99991231", "00010101")[:STUDIES]):
        write_variant(
            template,
            tmp / "in" / f"{number}.dcm",
            StudyDate=date,
            StudyTime="235900",
            TimezoneOffsetFromUTC="-1400" if date == "99991231" else "+1400",
            PatientBirthDate=date,
            PatientName=f"Doe^Jane{number}",
            PatientID=f"hostile-{number}",
        )
    for url in _database_url(str(request.param), tmp, postgres_problem):
        archive = Archive.open(make_settings(tmp, url))
        try:
            ingest([str(tmp / "in")], archive.engine, archive.blobs, workers=1)
            with TestClient(create_app(archive.settings, archive)) as test_client:
                yield test_client
        finally:
            archive.close()


def reason_of(response: Any) -> str:
    """The reason of a 400: an OperationOutcome's diagnostics, or a DICOMweb message."""
    assert response.status_code == 400, (response.status_code, response.text[:500])
    body = response.json()
    if body.get("resourceType") == "OperationOutcome":
        return str(body["issue"][0]["diagnostics"])
    return str(body["message"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _words(count: int) -> str:
    return "%20".join(f"w{i}" for i in range(count))


# -- numbers ------------------------------------------------------------------------

SUPERSCRIPT_TWO = "%C2%B2"  # "²": str.isdigit() says yes, int() says no


@pytest.mark.parametrize(
    "url",
    [
        f"/fhir/ImagingStudy?_count={SUPERSCRIPT_TWO}",
        f"/dicom-web/studies?limit={SUPERSCRIPT_TWO}",
        f"/dicom-web/studies?offset={SUPERSCRIPT_TWO}",
        f"/dicom-web/series?offset={SUPERSCRIPT_TWO}",
        "/dicom-web/studies?limit=%EF%BC%93",  # a fullwidth 3
        "/fhir/ImagingStudy?_count=%D9%A3",  # an Arabic-Indic 3
    ],
)
def test_numbers_take_ascii_digits_only(client: TestClient, url: str) -> None:
    assert "integer" in reason_of(client.get(url))


@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_an_offset_beyond_any_index_is_past_the_last_match(client: TestClient, level: str) -> None:
    response = client.get(f"/dicom-web/{level}?offset=99999999999999999999")
    assert response.status_code == 204, response.text
    huge = client.get(f"/dicom-web/{level}?offset=" + "9" * 5000)
    assert huge.status_code == 204, huge.text


def test_a_huge_limit_or_count_is_the_maximum(client: TestClient) -> None:
    assert client.get("/dicom-web/studies?limit=99999999999999999999").status_code == 200
    response = client.get("/fhir/ImagingStudy?_count=99999999999999999999")
    assert response.status_code == 200, response.text
    assert len(response.json()["entry"]) == STUDIES


# -- cursors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "_cursor=" + encode_cursor(Cursor((), 10**20)),
        "_cursor=" + encode_cursor(Cursor((), -(10**20))),
        "_sort=started&_cursor=" + encode_cursor(Cursor((10**20,), 1)),
        "_sort=_id&_cursor=" + encode_cursor(Cursor(("x" * 100,), 1)),
        "_cursor=" + _b64(b"[" * 1500),
        "_cursor=" + _b64(b'[[],1,"more"]'),
        "_cursor=" + _b64(b"[[true],1]"),
        "_cursor=" + _b64(b"[[1.5],1]"),
        "_cursor=" + _b64(b"[[],true]"),
        "_cursor=" + _b64(b"\xff\xfe"),
        "_cursor=%E6%97%A5",
        "_sort=started&_cursor=" + encode_cursor(Cursor(("abc",), 1)),
        "_sort=_id&_cursor=" + encode_cursor(Cursor((7,), 1)),
        "_sort=_lastUpdated&_cursor=" + encode_cursor(Cursor((None,), 1)),
        "_sort=_id&_cursor=" + encode_cursor(Cursor(("a", "b"), 1)),
    ],
)
def test_forged_cursors_are_not_ours(client: TestClient, query: str) -> None:
    reason = reason_of(client.get(f"/fhir/ImagingStudy?{query}"))
    assert "not a cursor this server issued" in reason


# -- dates at the edge of the calendar -----------------------------------------------


def fhir_ids(client: TestClient, query: str) -> list[str]:
    response = client.get(f"/fhir/ImagingStudy?{query}")
    assert response.status_code == 200, response.text
    return [e["resource"]["id"] for e in response.json().get("entry", [])]


@pytest.mark.parametrize(
    ("query", "matches"),
    [
        ("started=9999-12-31T23:00:00-14:00", 0),
        ("started=0001-01-01T00:00:00%2B14:00", 0),
        ("started=ge9999-12-31T23:00:00-14:00", 1),  # 10000-01-01T13:59Z
        ("started=9999-12-31T23:59:00-14:00", 1),
        ("started=le0001-01-01T00:00:00%2B14:00", 0),
        ("started=ap9999-12-31T23:59:59-14:00", 1),
        ("started=9999", 0),  # in UTC, that study started in the year 10000
        ("started=0001", 1),
        ("started=ge9999-12-31", 1),
        ("started=lt0001-01-02", 1),
        ("patient.birthdate=9999-12-31T23:59:59-12:00", 0),
        ("patient.birthdate=0001-01-01T00:00:00%2B14:00", 0),
        ("patient.birthdate=9999-12-31", 1),
        ("patient.birthdate=0001-01-01", 1),
        ("_lastUpdated=9999-12-31T23:59:59.999-14:00", 0),
        ("_lastUpdated=gt0001-01-01T00:00:00%2B14:00", STUDIES),
    ],
)
def test_dates_at_the_edge_of_the_calendar(client: TestClient, query: str, matches: int) -> None:
    assert len(fhir_ids(client, query)) == matches


@pytest.mark.parametrize(
    ("query", "matches"),
    [
        ("StudyDate=99991231", 1),
        ("StudyDate=00010101", 1),
        ("StudyDate=99991231-", 1),
        ("StudyDate=-00010101", 1),
        ("StudyDate=00010101-99991231", STUDIES),
        ("StudyDate=99991231&StudyTime=2359-", 1),
        ("StudyTime=235959.999999-", 0),
        ("StudyTime=-000000", 0),
        ("PatientBirthDate=99991231", 1),
        ("SeriesDate=00010101-", STUDIES),
    ],
)
def test_qido_dates_at_the_edge_of_the_calendar(
    client: TestClient, query: str, matches: int
) -> None:
    response = client.get(f"/dicom-web/studies?{query}")
    assert response.status_code in (200, 204), response.text
    assert len(response.json() if response.status_code == 200 else []) == matches


@pytest.mark.parametrize(
    "query",
    ["StudyDate=00000101", "StudyDate=99991232", "StudyDate=100000101", "StudyTime=240000"],
)
def test_qido_dates_off_the_calendar_are_400(client: TestClient, query: str) -> None:
    reason_of(client.get(f"/dicom-web/studies?{query}"))


# -- sizes: words, values, parameters ------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"/dicom-web/studies?fuzzymatching=true&PatientName={_words(2000)}",
        f"/dicom-web/studies?fuzzymatching=true&ReferringPhysicianName={_words(2000)}",
        f"/dicom-web/studies?PatientName={_words(2000)}",
        f"/fhir/ImagingStudy?patient.name={_words(2000)}",
        f"/fhir/ImagingStudy?patient.family={_words(2000)}",
    ],
)
def test_many_words_are_refused_or_harmless(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code in (200, 204, 400), response.text
    if response.status_code == 400:
        assert "words" in reason_of(response) or "characters" in reason_of(response)


def test_fuzzy_words_are_capped(client: TestClient) -> None:
    reason = reason_of(
        client.get(f"/dicom-web/studies?fuzzymatching=true&PatientName={_words(200)}")
    )
    assert "at most 32 words" in reason
    found = client.get("/dicom-web/studies?fuzzymatching=true&PatientName=jane1%20doe")
    assert found.status_code == 200, found.text
    assert [r["00100010"]["Value"][0]["Alphabetic"] for r in found.json()] == ["Doe^Jane1"]


def _uids(count: int) -> list[str]:
    return [generate_uid() for _ in range(count)]


@pytest.mark.parametrize(
    "url",
    [
        "/dicom-web/studies?ModalitiesInStudy=" + ",".join(["CT", "MR"] * 5000),
        "/dicom-web/studies?StudyInstanceUID=" + ",".join(_uids(200)),
        "/dicom-web/studies?StudyInstanceUID=" + ",".join(_uids(900)),  # past 16 KB
        "/dicom-web/studies?" + "&".join(f"StudyInstanceUID={u}" for u in _uids(300)),
        "/dicom-web/series?" + "&".join(f"Modality=M{i}" for i in range(150)),
        "/dicom-web/studies?" + "&".join(f"PatientID=p{i}" for i in range(150)),
        "/fhir/ImagingStudy?modality=" + ",".join(["CT", "MR"] * 5000),
        "/fhir/ImagingStudy?identifier=" + ",".join(_uids(200)),
        "/fhir/ImagingStudy?identifier=" + ",".join(_uids(900)),
        "/fhir/ImagingStudy?" + "&".join(f"modality=M{i}" for i in range(70)),
        "/fhir/ImagingStudy?" + "&".join(f"modality=M{i}" for i in range(3000)),
    ],
)
def test_too_many_values_are_400(client: TestClient, url: str) -> None:
    reason_of(client.get(url))


def _list(count: int, pattern: str = "v{}") -> str:
    return ",".join(pattern.format(i) for i in range(count))


@pytest.mark.parametrize(
    "url",
    [
        "/fhir/ImagingStudy?" + "&".join(f"_id={_list(100)}" for _ in range(3)),
        "/fhir/ImagingStudy?" + "&".join(f"identifier={_list(100)}" for _ in range(3)),
        "/fhir/ImagingStudy?" + "&".join(f"patient.name={_list(70)}" for _ in range(3)),
        "/dicom-web/studies?"
        + "&".join(
            f"{k}={_list(100).replace(',', '%5C')}"
            for k in ("PatientID", "StudyID", "AccessionNumber")
        ),
        "/dicom-web/series?"
        + "&".join(
            f"{k}={_list(100, 'a{}*').replace(',', '%5C')}"
            for k in ("PatientName", "SeriesDescription", "StudyDescription")
        ),
    ],
)
def test_a_search_takes_a_bounded_number_of_values(client: TestClient, url: str) -> None:
    assert "values in one" in reason_of(client.get(url))


@pytest.mark.parametrize(
    "url",
    [
        "/fhir/ImagingStudy?" + "&".join(f"_id={_list(100)}" for _ in range(2)),
        "/fhir/ImagingStudy?" + "&".join(f"identifier={_list(100)}" for _ in range(2)),
        "/fhir/ImagingStudy?" + "&".join(f"modality:not={_list(100)}" for _ in range(2)),
        "/fhir/ImagingStudy?" + "&".join(f"_id=v{i}" for i in range(64)),
        "/dicom-web/instances?"
        + "&".join(
            f"{k}={_list(100, 'a{}*').replace(',', '%5C')}"
            for k in ("PatientName", "StudyDescription")
        ),
        "/dicom-web/studies?fuzzymatching=true&PatientName="
        + "%20".join(f"w{i}" for i in range(32)),
    ],
)
def test_a_search_at_the_caps_runs(client: TestClient, url: str) -> None:
    """Every cap reached at once: the SQL is bounded, and both engines run it."""
    response = client.get(url)
    assert response.status_code in (200, 204), response.text[:300]


# -- parameter names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/fhir/ImagingStudy?%E6%97%A5=1", 200),
        ("/fhir/ImagingStudy?patient.%E6%97%A5=1", 200),
        ("/fhir/ImagingStudy?modality:%E6%97%A5=CT", 200),
        ("/fhir/ImagingStudy?%FF=1", 400),  # not UTF-8: malformed, not merely unknown
        ("/dicom-web/studies?%E6%97%A5=1", 400),
        ("/dicom-web/studies?%FF=1", 400),
        ("/dicom-web/studies?PatientName.%E6%97%A5=1", 400),
        ("/dicom-web/studies?includefield=%E6%97%A5", 400),
        ("/dicom-web/studies?StudyDate=%E6%97%A5", 400),
    ],
)
def test_unknown_and_non_ascii_parameter_names(client: TestClient, url: str, status: int) -> None:
    response = client.get(url)
    assert response.status_code == status, response.text
    strict = client.get(url, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400, strict.text


def test_still_serving(client: TestClient) -> None:
    assert client.get("/fhir/metadata").status_code == 200
    assert client.get("/dicom-web/studies").status_code == 200


@pytest.mark.parametrize("accept", ["%E6%97%A5", "a%01b", "text/%FF"])
def test_an_unservable_accept_parameter_is_406(client: TestClient, accept: str) -> None:
    response = client.get(f"/dicom-web/studies?accept={accept}")
    assert response.status_code == 406, response.text
    assert response.headers["warning"].isascii()
