"""Every route under token checking, fuzzed with a token for patient A aimed at patient
B's ids (issue 13's adversarial suite; the route list is the app's own, so a new route
joins it): no 5xx, every error well-formed, and nothing of B's in any answer but what
the request itself named. The token is a real JWT of the test authorization server;
the app checks it against that server's JWKS."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from sqlalchemy import select

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.index.schema import instance, patient, series, study
from tests.fuzz.conftest import Target
from tests.fuzz.invariants import LEDGER, examples, problems
from tests.fuzz.routes import Route, app_routes
from tests.fuzz.strategies import Chain, FuzzRequest, Ids, requests
from tests.support.authserver import AuthServer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXAMPLES = examples(12)
ROUTES = app_routes()


def uids_of(archive: Archive, patient_id: str) -> set[str]:
    """Every study, series and instance UID of one patient, and the patient's id."""
    query = (
        select(study.c.StudyInstanceUID, series.c.SeriesInstanceUID, instance.c.SOPInstanceUID)
        .join(series, instance.c.series_pk == series.c.pk)
        .join(study, series.c.study_pk == study.c.pk)
        .join(patient, study.c.patient_pk == patient.c.pk)
        .where(patient.c.resource_id == patient_id)
    )
    with archive.engine.connect() as conn:
        return {patient_id, *(uid for row in conn.execute(query) for uid in row)}


@pytest.fixture(scope="module")
def secured(
    fuzz_target: Target, fuzz_archive: Archive, auth_server: AuthServer
) -> dict[str, object]:
    """The fuzz archive served with JWT checks; A is the first chain's patient, B the
    patient of the next chain that is someone else."""
    chains = fuzz_target.ids.chains
    a = chains[0].patient
    b_chains = [c for c in chains if c.patient != a]
    b = b_chains[0].patient
    settings_ = fuzz_archive.settings.replace(auth="jwt", jwt_issuer=auth_server.issuer)
    shared = Archive(settings_, fuzz_archive.engine, fuzz_archive.blobs)
    token = auth_server.mint(
        {"aud": settings_.fhir_base_url, "scope": "patient/*.rs patient/*.cud", "patient": a}
    )
    return {
        "app": create_app(settings_, shared),
        "token": token,
        "b_ids": Ids([c for c in b_chains if c.patient == b]),
        "b_uids": uids_of(fuzz_archive, b) - uids_of(fuzz_archive, a),
    }


def leaked(response: httpx.Response, request: FuzzRequest, b_uids: set[str]) -> list[str]:
    """B's ids in a successful answer that the request did not name itself."""
    if response.status_code >= 400:
        return []
    asked = request.describe(limit=1_000_000)
    body = response.content.decode("latin-1")
    return sorted(uid for uid in b_uids if uid in body and uid not in asked)


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_a_patient_token_aimed_at_another_patient_leaks_nothing(
    secured: dict[str, object], fuzz_target: Target, route: Route
) -> None:
    found: list[str] = []
    b_uids: set[str] = secured["b_uids"]  # type: ignore[assignment]
    bearer = (b"authorization", f"Bearer {secured['token']}".encode())
    context = fuzz_target.context.__class__(
        secured["b_ids"],  # type: ignore[arg-type]
        fuzz_target.sample,
        fuzz_target.h11,
    )
    with TestClient(secured["app"], raise_server_exceptions=False) as client:  # type: ignore[arg-type]

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(request=requests(route, context))
        def run(request: FuzzRequest) -> None:
            heads = [h for h in request.headers if h[0] != b"authorization"] + [bearer]
            try:
                response = client.request(
                    request.method, request.url, headers=heads, content=request.body
                )
            except (httpx.LocalProtocolError, httpx.InvalidURL, httpx.UnsupportedProtocol):
                return  # the client itself refused to send it
            LEDGER.requests += 1
            LEDGER.statuses[response.status_code] += 1
            for problem in problems(response):
                found.append(f"{problem}: {request.describe()} -> {response.text[:200]}")
            for uid in leaked(response, request, b_uids):
                found.append(f"LEAK of {uid} ({response.status_code}): {request.describe()}")

        run()
    assert found == [], "\n".join(found[:20])


def test_the_leak_probe_sees_a_leak(secured: dict[str, object], fuzz_target: Target) -> None:
    """Without a token check (development mode) the same kind of request does show B's
    ids: the probe above can fail."""
    b_uids: set[str] = secured["b_uids"]  # type: ignore[assignment]
    chain: Chain = secured["b_ids"].chains[0]  # type: ignore[attr-defined]
    request = FuzzRequest("GET", "/dicom-web/studies", "PatientID=*&limit=500")
    with TestClient(
        fuzz_target.client.app if hasattr(fuzz_target.client, "app") else secured["app"]
    ) as _:
        pass
    open_app = create_app(
        secured["app"].state.archive.settings.replace(auth="none"),  # type: ignore[attr-defined]
        secured["app"].state.archive,  # type: ignore[attr-defined]
    )
    with TestClient(open_app) as client:
        response = client.get(request.url)
    assert chain.study in b_uids
    assert leaked(response, request, b_uids)
