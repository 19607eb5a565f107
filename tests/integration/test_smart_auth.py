"""SMART authorization on every route, against a real authorization server
(``tests/support/authserver.py``: authlib's grants, real JWTs from its JWKS, RFC 7662
introspection): 401 without a good token, 403 out of scope, a patient's token narrowed
to that patient on FHIR and DICOMweb alike, the same token on both surfaces, and no
access when the authorization server cannot be asked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from tests.support.authserver import AuthServer

FHIR_BASE = "http://pacsfhir.test/fhir"
DICOMWEB_BASE = "http://pacsfhir.test/dicom-web"
APP = "imaging-viewer"  # a public SMART app (PKCE)
BACKEND = "ai-pipeline"  # a confidential backend client
BACKEND_SECRET = "backend-secret"
PATIENT_SCOPES = "launch/patient openid fhirUser patient/ImagingStudy.rs patient/Patient.rs"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def studies_by_patient(archive: Archive) -> dict[str, list[str]]:
    """Patient id -> its study UIDs, as a development-mode FHIR search lists them."""
    with TestClient(create_app(archive.settings, archive)) as client:
        bundle = client.get("/fhir/ImagingStudy?_count=500").json()
    found: dict[str, list[str]] = {}
    for entry in bundle["entry"]:
        study = entry["resource"]
        found.setdefault(study["subject"]["reference"].split("/")[1], []).append(study["id"])
    return found


@pytest.fixture(scope="module")
def patients(sample_archive: Archive) -> dict[str, list[str]]:
    return studies_by_patient(sample_archive)


@pytest.fixture(scope="module")
def a_and_b(patients: dict[str, list[str]]) -> tuple[str, str]:
    a, b = sorted(patients, key=lambda p: -len(patients[p]))[:2]
    return a, b


def jwt_mode(auth_server: AuthServer) -> dict[str, str]:
    return {"auth": "jwt", "jwt_issuer": auth_server.issuer}


def introspection_mode(auth_server: AuthServer) -> dict[str, str]:
    return {
        "auth": "introspection",
        "introspection_url": auth_server.introspection_url,
        "introspection_client_id": auth_server.introspection_client_id,
        "introspection_client_secret": auth_server.introspection_client_secret,
    }


def _client(sample_archive: Archive, **auth: Any) -> Iterator[TestClient]:
    settings = sample_archive.settings.replace(**auth)
    shared = Archive(settings, sample_archive.engine, sample_archive.blobs)
    with TestClient(create_app(settings, shared)) as client:
        yield client


@pytest.fixture(scope="module", params=["jwt", "introspection"])
def secured(
    request: pytest.FixtureRequest, sample_archive: Archive, auth_server: AuthServer
) -> Iterator[TestClient]:
    """pacsfhir checking tokens of the test authorization server, either way."""
    auth = jwt_mode(auth_server) if request.param == "jwt" else introspection_mode(auth_server)
    yield from _client(sample_archive, **auth)


@pytest.fixture(scope="module")
def tokens(auth_server: AuthServer, a_and_b: tuple[str, str]) -> dict[str, str]:
    a, b = a_and_b
    auth_server.register_client(APP)
    auth_server.register_client(BACKEND, secret=BACKEND_SECRET)
    auth_server.set_patients([{"id": a, "name": "Patient A"}, {"id": b, "name": "Patient B"}])
    launch = auth_server.authorization_code_token(APP, PATIENT_SCOPES, a, aud=FHIR_BASE)
    assert launch["patient"] == a
    return {
        "patient_a": launch["access_token"],
        "system": auth_server.client_credentials_token(
            BACKEND, BACKEND_SECRET, "system/*.rs", aud=FHIR_BASE
        ),
        "openid_only": auth_server.client_credentials_token(
            BACKEND, BACKEND_SECRET, "openid", aud=FHIR_BASE
        ),
        "dicomweb_aud": auth_server.client_credentials_token(
            BACKEND, BACKEND_SECRET, "system/ImagingStudy.rs", aud=DICOMWEB_BASE
        ),
    }


def test_metadata_is_public(secured: TestClient) -> None:
    assert secured.get("/fhir/metadata").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/ImagingStudy",
        "/dicom-web/studies",
        "/fhir/Patient/x/$wado-rs/studies",
        "/wado?requestType=WADO&studyUID=1&seriesUID=2&objectUID=3",
        "/fhir/Patient/x/$wado-rs/wado?requestType=WADO&studyUID=1&seriesUID=2&objectUID=3",
    ],
)
def test_no_token_is_401_with_a_bearer_challenge(secured: TestClient, path: str) -> None:
    response = secured.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="pacsfhir"'


@pytest.mark.parametrize(
    "authorization", ["Bearer", "Bearer not-a-token", "Basic dXNlcjpwYXNz", "bearer x.y.z"]
)
def test_a_bad_token_is_401_invalid_token(secured: TestClient, authorization: str) -> None:
    response = secured.get("/fhir/ImagingStudy", headers={"Authorization": authorization})
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="pacsfhir"')


def test_a_system_token_sees_every_study(
    secured: TestClient, tokens: dict[str, str], patients: dict[str, list[str]]
) -> None:
    bundle = secured.get("/fhir/ImagingStudy?_count=500", headers=bearer(tokens["system"]))
    assert bundle.status_code == 200
    assert bundle.json()["total"] == sum(len(s) for s in patients.values())


def test_a_token_without_imaging_scopes_is_403(secured: TestClient, tokens: dict[str, str]) -> None:
    response = secured.get("/fhir/ImagingStudy", headers=bearer(tokens["openid_only"]))
    assert response.status_code == 403
    assert response.json()["issue"][0]["code"] == "forbidden"


def test_the_same_token_works_on_both_surfaces(secured: TestClient, tokens: dict[str, str]) -> None:
    """The app's token names the FHIR base; it retrieves from the DICOMweb base too, and a
    token naming the DICOMweb base works on FHIR (one token for both surfaces)."""
    for token in (tokens["system"], tokens["dicomweb_aud"]):
        assert secured.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 200
        assert secured.get("/dicom-web/studies", headers=bearer(token)).status_code == 200


def test_a_patient_token_is_narrowed_to_its_patient(
    secured: TestClient,
    tokens: dict[str, str],
    patients: dict[str, list[str]],
    a_and_b: tuple[str, str],
) -> None:
    a, _ = a_and_b
    auth = bearer(tokens["patient_a"])
    bundle = secured.get("/fhir/ImagingStudy?_count=500", headers=auth).json()
    assert sorted(e["resource"]["id"] for e in bundle["entry"]) == sorted(patients[a])
    references = {e["resource"]["endpoint"][0]["reference"] for e in bundle["entry"]}
    assert len(references) == 1
    endpoint = secured.get(f"/fhir/{references.pop()}", headers=auth).json()
    assert endpoint["address"] == f"{FHIR_BASE}/Patient/{a}/$wado-rs"
    found = {
        s["0020000D"]["Value"][0] for s in secured.get("/dicom-web/studies", headers=auth).json()
    }
    assert found == set(patients[a])


def _leaks(client: TestClient, token: str, a: str, b: str, b_study: str) -> list[str]:
    """Every route and trick by which a token for A might reach B's study."""
    auth = bearer(token)
    leaks = []
    must_be_empty = [
        ("GET", f"/fhir/ImagingStudy?_id={b_study}", None),
        ("GET", f"/fhir/ImagingStudy?identifier=urn:oid:{b_study}", None),
        ("GET", f"/fhir/ImagingStudy?patient={b}", None),
        ("GET", f"/fhir/ImagingStudy?subject=Patient/{b}", None),
        ("GET", f"/fhir/ImagingStudy?patient._id={b}", None),
        ("GET", f"/fhir/Patient/{b}/ImagingStudy", None),
        ("POST", "/fhir/ImagingStudy/_search", {"_id": b_study}),
        ("POST", f"/fhir/Patient/{b}/ImagingStudy/_search", {"patient": b}),
        ("GET", f"/fhir/ImagingStudy?_id={b_study}&_include=ImagingStudy:subject", None),
    ]
    for method, path, form in must_be_empty:
        response = client.request(method, path, headers=auth, data=form)
        if response.status_code != 200 or response.json().get("entry"):
            leaks.append(f"{method} {path} {form or ''}: {response.status_code}")
    must_be_404 = [
        f"/fhir/ImagingStudy/{b_study}",
        f"/fhir/Patient/{b}",
        f"/dicom-web/studies/{b_study}",
        f"/dicom-web/studies/{b_study}/metadata",
        f"/dicom-web/studies/{b_study}/rendered",
        f"/dicom-web/studies/{b_study}/thumbnail",
        f"/dicom-web/studies/{b_study}/pixeldata",
        f"/fhir/Patient/{a}/$wado-rs/studies/{b_study}/metadata",
        f"/fhir/Patient/{b}/$wado-rs/studies/{b_study}/metadata",
        f"/fhir/Patient/{b}/$wado-rs/studies/{b_study}",
    ]
    for path in must_be_404:
        response = client.get(path, headers=auth)
        if response.status_code != 404:
            leaks.append(f"GET {path}: {response.status_code}")
    for path in (
        f"/dicom-web/studies?StudyInstanceUID={b_study}",
        f"/fhir/Patient/{b}/$wado-rs/studies",
    ):
        response = client.get(path, headers=auth)
        if response.status_code == 200 and response.json():
            leaks.append(f"GET {path}: {len(response.json())} studies")
    return leaks


def test_a_patient_token_never_reaches_another_patients_study(
    secured: TestClient,
    tokens: dict[str, str],
    patients: dict[str, list[str]],
    a_and_b: tuple[str, str],
) -> None:
    a, b = a_and_b
    assert _leaks(secured, tokens["patient_a"], a, b, patients[b][0]) == []
    # and the system token does see B's study by the same routes: the probes can fail
    system = bearer(tokens["system"])
    assert secured.get(f"/fhir/ImagingStudy/{patients[b][0]}", headers=system).status_code == 200


def test_wado_uri_reaches_only_what_the_token_may_read(
    secured: TestClient,
    tokens: dict[str, str],
    patients: dict[str, list[str]],
    a_and_b: tuple[str, str],
) -> None:
    """WADO-URI names an instance in its query: a patient's token gets 404 for another
    patient's at ``/wado`` and under either patient's base, as on WADO-RS, while the
    system token and the patient's own instance are served (the probes can fail)."""
    a, b = a_and_b
    system = bearer(tokens["system"])

    def first_instance(study: str) -> str:
        found = secured.get(f"/dicom-web/studies/{study}/instances", headers=system).json()[0]
        series, sop = found["0020000E"]["Value"][0], found["00080018"]["Value"][0]
        return f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"

    theirs = first_instance(patients[b][0]) + "&contentType=application/dicom"
    mine = first_instance(patients[a][0]) + "&contentType=application/dicom"
    patient = bearer(tokens["patient_a"])
    for path in (f"/wado?{theirs}", f"/fhir/Patient/{a}/$wado-rs/wado?{theirs}"):
        assert secured.get(path, headers=patient).status_code == 404, path
    assert secured.get(
        f"/fhir/Patient/{b}/$wado-rs/wado?{theirs}", headers=patient
    ).status_code in (
        403,
        404,
    )
    assert secured.get(f"/wado?{theirs}", headers=system).status_code == 200
    assert secured.get(f"/wado?{mine}", headers=patient).status_code == 200
    assert (
        secured.get(f"/fhir/Patient/{a}/$wado-rs/wado?{mine}", headers=patient).status_code == 200
    )
    no_imaging = bearer(tokens["openid_only"])
    assert secured.get(f"/wado?{mine}", headers=no_imaging).status_code == 403


@pytest.mark.parametrize(
    "forged",
    [
        {"exp": 1},  # expired long ago
        {"nbf": 4_102_444_800, "iat": 4_102_444_800},  # valid from 2100
        {"iss": "https://evil.example.org"},
        {"aud": "https://another-fhir.example.org/fhir"},
    ],
    ids=["expired", "not-yet-valid", "wrong-issuer", "wrong-audience"],
)
def test_bad_claims_are_401(
    auth_server: AuthServer, sample_archive: Archive, forged: dict[str, Any]
) -> None:
    token = auth_server.mint({"aud": FHIR_BASE, "scope": "system/*.rs", **forged})
    for client in _client(sample_archive, **jwt_mode(auth_server)):
        response = client.get("/fhir/ImagingStudy", headers=bearer(token))
        assert response.status_code == 401, response.text
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_alg_none_and_hmac_confusion_are_401(
    auth_server: AuthServer, sample_archive: Archive, alg: str
) -> None:
    token = auth_server.mint({"aud": FHIR_BASE, "scope": "system/*.rs"}, alg=alg)
    for client in _client(sample_archive, **jwt_mode(auth_server)):
        assert client.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 401


def test_a_revoked_token_is_refused_under_introspection(
    auth_server: AuthServer, sample_archive: Archive
) -> None:
    token = auth_server.client_credentials_token(
        BACKEND, BACKEND_SECRET, "system/*.rs", aud=FHIR_BASE
    )
    auth_server.revoke(token)
    for client in _client(sample_archive, **introspection_mode(auth_server)):
        assert client.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 401


def test_an_unreachable_authorization_server_refuses_access_with_503(
    auth_server: AuthServer, sample_archive: Archive, tokens: dict[str, str]
) -> None:
    """A fresh server has no keys yet: with the issuer down it cannot check the token,
    so it refuses (503, the token may be fine), never grants."""
    for client in _client(sample_archive, **jwt_mode(auth_server)):
        with auth_server.down():
            response = client.get("/fhir/ImagingStudy", headers=bearer(tokens["system"]))
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()


def test_introspection_is_asked_once_per_token_while_cached(
    auth_server: AuthServer, sample_archive: Archive
) -> None:
    token = auth_server.client_credentials_token(
        BACKEND, BACKEND_SECRET, "system/*.rs", aud=FHIR_BASE
    )
    for client in _client(sample_archive, **introspection_mode(auth_server)):
        before = auth_server.introspection_calls
        for _ in range(10):
            assert client.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 200
        assert auth_server.introspection_calls - before == 1


@pytest.mark.parametrize("mode", ["jwt", "introspection"])
def test_an_app_started_again_still_checks_tokens(
    auth_server: AuthServer, sample_archive: Archive, tokens: dict[str, str], mode: str
) -> None:
    """Shutdown closes the verifier's connections; a second start (a test client entered
    again) answered 500 (a closed HTTP client) until a check reopened them."""
    auth = jwt_mode(auth_server) if mode == "jwt" else introspection_mode(auth_server)
    settings = sample_archive.settings.replace(**auth)
    app = create_app(settings, Archive(settings, sample_archive.engine, sample_archive.blobs))
    token = auth_server.client_credentials_token(
        BACKEND, BACKEND_SECRET, "system/*.rs", aud=FHIR_BASE
    )
    with TestClient(app):
        pass  # started and shut down: the verifier's connections closed, nothing fetched
    with TestClient(app) as client:
        assert client.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 200
