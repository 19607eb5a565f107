"""Hostile requests on every route of the app (derived from its route table, so a new
route joins this gate without an edit here): no 5xx (but a documented 503), every error
well-formed (OperationOutcome on FHIR routes, JSON with a Warning header on DICOMweb
routes), 405 with Allow, and the server still answering ``GET /fhir/metadata``.

Each route gets ``PACSFHIR_FUZZ_EXAMPLES`` (default 30; a third of that on PostgreSQL
unless set) requests drawn by Hypothesis, derandomized (the same requests on every
run). Every problem is collected, not only the first, and the test fails at its end
listing each distinct one with an example."""

from __future__ import annotations

import base64
import os

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from tests.fuzz.conftest import BACKENDS, ServerLog, Target
from tests.fuzz.invariants import LEDGER, Finding, examples, header_problem, problems
from tests.fuzz.routes import Route, app_routes, routes_of
from tests.fuzz.strategies import FuzzRequest, requests

# pydicom warns about the invalid values these files and requests carry; a server runs
# with warnings as warnings, so the suite does too (not as the errors the rest of the
# tests make them).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXAMPLES = examples(30)
SCALED = "PACSFHIR_FUZZ_EXAMPLES" in os.environ  # make fuzz: every backend in full
ROUTES = app_routes()


def send(target: Target, request: FuzzRequest) -> httpx.Response | None:
    try:
        response = target.client.request(
            request.method,
            request.url,
            headers=list(request.headers),
            content=request.body,
        )
    except (httpx.LocalProtocolError, httpx.InvalidURL, httpx.UnsupportedProtocol):
        return None  # the client itself refused to send it (a real HTTP/1.1 client)
    except httpx.RemoteProtocolError as exc:  # the server hung up: only a real server
        response = httpx.Response(
            599,
            request=httpx.Request(request.method, "http://x/"),
            content=f"connection closed: {exc}".encode(),
        )
    LEDGER.requests += 1
    LEDGER.statuses[response.status_code] += 1
    return response


def check(target: Target, route: Route, request: FuzzRequest, found: list[Finding]) -> None:
    response = send(target, request)
    if response is None:
        return
    cause, header_problems = target.recorder.take()
    if isinstance(target.recorder, ServerLog):  # the raw headers as they came
        header_problems = [
            p for name, value in response.headers.raw if (p := header_problem(name, value))
        ]
    for problem in problems(response) + header_problems:
        finding = Finding("request", str(route), problem, cause, request.describe())
        LEDGER.add(finding)
        found.append(finding)


def report(found: list[Finding]) -> str:
    distinct: dict[tuple[str, str], Finding] = {}
    for f in found:
        distinct.setdefault(f.key, f)
    lines = [f"{len(found)} bad answers, {len(distinct)} distinct:"]
    lines += [f"- {f.problem} <- {f.cause or '?'}\n    {f.example}" for f in distinct.values()]
    return "\n".join(lines)


@pytest.mark.parametrize("fuzz_archive", BACKENDS, indirect=True)
@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_route_answers_hostile_requests_with_4xx(
    fuzz_target: Target, route: Route, fuzz_archive: Archive
) -> None:
    found: list[Finding] = []
    postgres = fuzz_archive.engine.dialect.name == "postgresql"

    @settings(
        max_examples=EXAMPLES if SCALED or not postgres else max(1, EXAMPLES // 3),
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests(route, fuzz_target.context))
    def run(request: FuzzRequest) -> None:
        check(fuzz_target, route, request, found)

    run()
    metadata = fuzz_target.client.get("/fhir/metadata")
    assert metadata.status_code == 200, "the server no longer answers GET /fhir/metadata"
    assert not found, report(found)


# The requests the issue reproduced, each sent as given (ahead of any fix).
ISSUE_REQUESTS = [
    FuzzRequest("GET", "/dicom-web/studies/%E6%97%A5/metadata", ""),
    FuzzRequest("GET", "/dicom-web/studies", "StudyDate=%E6%97%A5"),
    FuzzRequest("GET", "/dicom-web/studies", "%E6%97%A5=1"),
    FuzzRequest(
        "POST",
        "/dicom-web/studies/%E6%97%A5",
        "",
        ((b"content-type", b'multipart/related; type="application/dicom"; boundary=x'),),
        b"--x--\r\n",
    ),
    FuzzRequest("GET", "/dicom-web/studies", "accept=a%01b"),
    FuzzRequest("GET", "/dicom-web/studies", "limit=%C2%B2"),
    FuzzRequest("GET", "/dicom-web/studies", "offset=%C2%B2"),
    FuzzRequest("GET", "/fhir/ImagingStudy", "_count=%C2%B2"),
    FuzzRequest("GET", "/dicom-web/studies", "offset=99999999999999999999"),
    FuzzRequest("GET", "/fhir/ImagingStudy", "started=9999-12-31T23:00:00-14:00"),
    FuzzRequest("GET", "/fhir/ImagingStudy", "started=0001-01-01T00:00:00%2B14:00"),
    FuzzRequest("GET", "/fhir/ImagingStudy", "patient.birthdate=9999-12-31T23:59:59-12:00"),
    FuzzRequest(
        "GET",
        "/fhir/ImagingStudy",
        "_cursor=" + base64.urlsafe_b64encode(b"[" * 1500).decode(),
    ),
    FuzzRequest(
        "POST",
        "/fhir/ImagingStudy/_search",
        "",
        ((b"content-type", b"application/x-www-form-urlencoded"),),
        b"_count=\xff\xfe",
    ),
    FuzzRequest(
        "POST",
        "/dicom-web/studies",
        "",
        (
            (
                b"content-type",
                ('multipart/related; type="application/dicom"; boundary=' + "b" * 300).encode(),
            ),
        ),
        b"--" + b"b" * 300 + b"--\r\n",
    ),
    FuzzRequest(
        "GET", "/dicom-web/studies", "fuzzymatching=true&PatientName=" + "+".join(["w"] * 2000)
    ),
    FuzzRequest(
        "POST",
        "/dicom-web/studies",
        "",
        ((b"content-type", b'multipart/related; type="application/dicom"; boundary=x'),),
        b"",
    ),
    FuzzRequest("PUT", "/fhir/metadata", ""),
    # found by the fuzz suite: a NUL reaches PostgreSQL, which refuses it in text
    FuzzRequest("GET", "/fhir/Patient/%00/$wado-rs/studies", ""),
    FuzzRequest("GET", "/fhir/Patient/%00/$wado-rs/studies/1.2.3", ""),
    FuzzRequest("GET", "/fhir/Patient/%00", ""),
    FuzzRequest("GET", "/fhir/ImagingStudy", "patient=%00"),
    FuzzRequest("GET", "/fhir/ImagingStudy", "patient.identifier=a%00b"),
    FuzzRequest("GET", "/dicom-web/studies", "PatientID=a%00b"),
    FuzzRequest("GET", "/fhir/Endpoint/wado-%00", ""),
]


@pytest.mark.parametrize("fuzz_archive", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize(
    "request_",
    ISSUE_REQUESTS,
    ids=[f"{i}: {r.method} {r.url[:50]}" for i, r in enumerate(ISSUE_REQUESTS)],
)
def test_issue_request_answers_4xx(fuzz_target: Target, request_: FuzzRequest) -> None:
    found: list[Finding] = []
    check(fuzz_target, Route(request_.method, request_.path), request_, found)
    assert not found, report(found)


@pytest.mark.parametrize("fuzz_archive", ["sqlite"], indirect=True)
def test_a_new_route_joins_the_fuzzed_routes(fuzz_archive: Archive) -> None:
    """The route list comes from the app: a route added to it is fuzzed with no edit."""
    app = create_app(fuzz_archive.settings, fuzz_archive)
    before = [str(r) for r in routes_of(app)]

    @app.get("/fhir/NewResource/{new_id}")
    def new_route(new_id: str) -> dict[str, str]:
        return {"id": new_id}

    @app.post("/dicom-web/new/{study_uid}")
    def new_post(study_uid: str) -> dict[str, str]:
        return {"id": study_uid}

    after = [str(r) for r in routes_of(app)]
    assert after == [*before, "GET /fhir/NewResource/{new_id}", "POST /dicom-web/new/{study_uid}"]
    # the parametrized test above runs over the same table, both mounts included
    assert [str(r) for r in ROUTES] == before
    assert {"GET /fhir/metadata", "POST /dicom-web/studies"} <= set(before)
    assert any("$wado-rs" in r.path for r in ROUTES)
