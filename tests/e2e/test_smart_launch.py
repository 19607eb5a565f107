"""A SMART standalone launch as a real app does it, the browser part in Debian's headless
Chromium, against pacsfhir checking the test authorization server's JWTs.

- pacsfhir runs under uvicorn (``auth=jwt``, the issuer being ``tests/support/authserver``
  on loopback) and advertises that server's endpoints in its CapabilityStatement.
- ``fhirclient`` (the Python SMART client) reads the CapabilityStatement's ``oauth-uris``
  and builds the authorization URL (PKCE S256, ``aud``, ``state``, ``launch/patient``).
- Chromium opens it, sees the patient picker, presses patient A's button, and is
  redirected to the app's redirect URI, a loopback HTTP server of this test.
- ``fhirclient`` takes that URL, checks ``state``, exchanges the code at the token
  endpoint and keeps the token and the ``patient`` launch context.
- With that token the app searches ImagingStudy for A (fhirclient's models), reads the
  Endpoint each study names and retrieves a study's DICOM from its address (httpx); the
  same token on patient B's study is answered 404 on every path tried.

The picker is kept as ``tests/artifacts/smart-launch-picker.png``. Nothing here is a
stand-in: every hop is real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pydicom
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fhirclient import client as smart_client
from fhirclient.models.endpoint import Endpoint
from fhirclient.models.imagingstudy import ImagingStudy
from fhirclient.server import FHIRNotFoundException

from pacsfhir.archive import Archive
from tests.conftest import LiveServer
from tests.e2e.support import ARTIFACTS, CallbackServer, multipart_parts
from tests.support.authserver import AuthServer

with contextlib.suppress(ImportError):  # without it the fixtures skip (fail under CI)
    from playwright.sync_api import Browser

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.parametrize("sample_archive", ["sqlite"], indirect=True),
]

APP = "smart-imaging-app"  # a public client: PKCE, no secret
BACKEND = "smart-launch-setup"  # finds two patients with studies before the launch
BACKEND_SECRET = secrets.token_urlsafe(16)
# What the app asks for; fhirclient itself adds "launch/patient" (no patient known yet).
APP_SCOPE = "openid fhirUser patient/ImagingStudy.rs patient/Patient.rs"
DICOM = 'multipart/related; type="application/dicom"'
PAGE_TIMEOUT_MS = 15_000
PICKER_SHOT = ARTIFACTS / "smart-launch-picker.png"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def study_uid(study: dict[str, Any]) -> str:
    """The Study Instance UID from an ImagingStudy's ``urn:dicom:uid`` identifier."""
    for identifier in study.get("identifier", []):
        if identifier.get("system") == "urn:dicom:uid":
            return str(identifier["value"]).removeprefix("urn:oid:")
    raise AssertionError(f"ImagingStudy/{study['id']} has no urn:dicom:uid identifier")


def patient_label(patient: dict[str, Any]) -> str:
    name = (patient.get("name") or [{}])[0]
    given = " ".join(name.get("given", []))
    return ", ".join(p for p in (name.get("family", ""), given) if p) or str(patient["id"])


@dataclass(frozen=True)
class Patients:
    """Two patients of the samples, as the archive knows them (found with a system token)."""

    a: str
    b: str
    studies: dict[str, list[dict[str, Any]]]  # patient id -> its ImagingStudy resources
    labels: dict[str, str]


@dataclass(frozen=True)
class Stack:
    pacsfhir: LiveServer
    callback: CallbackServer
    auth: AuthServer
    fhir_base: str
    system_token: str


@dataclass(frozen=True)
class Launched:
    """What the launch left the app with."""

    smart: smart_client.FHIRClient
    authorize_url: str
    callback_url: str
    token: str


@pytest.fixture(scope="module")
def stack(
    chromium_ready: None, sample_archive: Archive, auth_server: AuthServer
) -> Iterator[Stack]:
    with CallbackServer() as callback:
        server = LiveServer(
            sample_archive,
            auth="jwt",
            jwt_issuer=auth_server.issuer,
            smart_authorize_url=auth_server.authorize_url,
            smart_token_url=auth_server.token_url,
        )
        with server:
            fhir_base = f"{server.base_url}/fhir"
            auth_server.register_client(APP, redirect_uris=[callback.redirect_uri])
            auth_server.register_client(BACKEND, secret=BACKEND_SECRET)
            system = auth_server.client_credentials_token(
                BACKEND, BACKEND_SECRET, "system/*.rs", aud=fhir_base
            )
            yield Stack(server, callback, auth_server, fhir_base, system)


@pytest.fixture(scope="module")
def patients(stack: Stack) -> Patients:
    """A = the patient with the most studies, B = the next; the picker offers both."""
    auth = bearer(stack.system_token)
    bundle = httpx.get(f"{stack.fhir_base}/ImagingStudy?_count=500", headers=auth)
    assert bundle.status_code == 200, bundle.text
    studies: dict[str, list[dict[str, Any]]] = {}
    for entry in bundle.json()["entry"]:
        subject = entry["resource"]["subject"]["reference"].removeprefix("Patient/")
        studies.setdefault(subject, []).append(entry["resource"])
    a, b = sorted(studies, key=lambda p: (-len(studies[p]), p))[:2]
    labels = {}
    for pid in (a, b):
        patient = httpx.get(f"{stack.fhir_base}/Patient/{pid}", headers=auth)
        assert patient.status_code == 200, patient.text
        labels[pid] = patient_label(patient.json())
    stack.auth.set_patients([{"id": pid, "name": labels[pid]} for pid in (a, b)])
    return Patients(a, b, studies, labels)


@pytest.fixture(scope="module")
def launched(stack: Stack, patients: Patients, chromium: Browser) -> Launched:
    """The standalone launch: fhirclient builds the authorization URL, Chromium picks
    patient A, the redirect lands on the app, fhirclient exchanges the code."""
    smart = smart_client.FHIRClient(
        settings={
            "app_id": APP,
            "api_base": stack.fhir_base,
            "redirect_uri": stack.callback.redirect_uri,
            "scope": APP_SCOPE,
        }
    )
    authorize_url = smart.authorize_url  # GET /fhir/metadata, then the URL
    assert authorize_url, "fhirclient found no authorization endpoint in the metadata"

    context = chromium.new_context(viewport={"width": 900, "height": 700})
    try:
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(authorize_url)
        button = page.locator(f'#patients button[name="patient"][value="{patients.a}"]')
        button.wait_for(state="visible")
        assert page.locator("#patients button").count() == 2
        page.screenshot(path=str(PICKER_SHOT), full_page=True)
        print(f"screenshot: {PICKER_SHOT}")
        with page.expect_navigation(url=lambda url: url.startswith(stack.callback.redirect_uri)):
            button.click()
        page.locator("#done").wait_for(state="visible")
        landed = page.url
    finally:
        context.close()

    arrived = stack.callback.received()
    assert arrived == [landed], f"the app's redirect URI saw {arrived}, the browser is at {landed}"
    smart.handle_callback(landed)  # state checked, code + verifier exchanged for tokens
    token = smart.server.auth.access_token
    assert token, "fhirclient holds no access token"
    return Launched(smart, authorize_url, landed, token)


def test_fhirclient_builds_the_authorization_request_from_the_capability_statement(
    stack: Stack, launched: Launched
) -> None:
    auth = launched.smart.server.auth
    # the endpoints, from the CapabilityStatement's oauth-uris extension
    assert (auth._authorize_uri, auth._token_uri) == (
        stack.auth.authorize_url,
        stack.auth.token_url,
    )
    url = urlsplit(launched.authorize_url)
    assert f"{url.scheme}://{url.netloc}{url.path}" == stack.auth.authorize_url
    params = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert params["response_type"] == "code"
    assert params["client_id"] == APP
    assert params["redirect_uri"] == stack.callback.redirect_uri
    assert params["aud"] == stack.fhir_base
    assert "launch/patient" in params["scope"].split()  # added by fhirclient
    assert set(APP_SCOPE.split()) <= set(params["scope"].split())
    # PKCE: S256 of the verifier fhirclient kept and later sent with the code
    assert params["code_challenge_method"] == "S256"
    assert params["code_challenge"] == create_s256_code_challenge(auth.code_verifier)
    assert params["state"] == auth.auth_state


def test_the_picked_patient_comes_back_with_the_code_and_the_token(
    stack: Stack, patients: Patients, launched: Launched
) -> None:
    sent = parse_qs(urlsplit(launched.authorize_url).query)
    back = parse_qs(urlsplit(launched.callback_url).query)
    assert back["state"] == sent["state"]
    assert back["code"][0]
    assert PICKER_SHOT.stat().st_size > 0  # the picker, as Chromium showed it
    assert launched.smart.patient_id == patients.a  # the token response's `patient`
    context = launched.smart.launch_context
    assert context["patient"] == patients.a
    assert "patient/ImagingStudy.rs" in context["scope"].split()


def test_the_token_finds_and_retrieves_patient_a_s_studies(
    stack: Stack, patients: Patients, launched: Launched
) -> None:
    server = launched.smart.server
    a = patients.a
    found = list(ImagingStudy.where(struct={"patient": a}).perform_resources_iter(server))
    expected = {s["id"] for s in patients.studies[a]}
    assert {s.id for s in found} == expected
    assert all(s.subject.reference == f"Patient/{a}" for s in found)

    # Each study names an Endpoint: A's own $wado-rs base (a patient token's address).
    endpoints = {ref.reference for s in found for ref in s.endpoint or []}
    assert len(endpoints) == 1, endpoints
    endpoint = Endpoint.read(endpoints.pop().removeprefix("Endpoint/"), server)
    assert endpoint.address == f"{stack.fhir_base}/Patient/{a}/$wado-rs"
    assert endpoint.status == "active"

    # Retrieve the smallest of A's studies there with the same token.
    study = min(patients.studies[a], key=lambda s: s.get("numberOfInstances", 0))
    uid = study_uid(study)
    url = f"{endpoint.address}/studies/{uid}"
    response = httpx.get(url, headers={"Accept": DICOM, **bearer(launched.token)}, timeout=30)
    assert response.status_code == 200, response.text[:500]
    parts = multipart_parts(response.headers["content-type"], response.content)
    assert len(parts) == study["numberOfInstances"]
    for part in parts:
        assert part.get_content_type() == "application/dicom"
        body = part.get_payload(decode=True)
        assert isinstance(body, bytes)
        ds = pydicom.dcmread(io.BytesIO(body))
        assert ds.StudyInstanceUID == uid

    print(f"retrieved {len(parts)} instance(s), {len(response.content)} bytes, from {url}")

    # Without the token the same URL is refused: the 200 above was the token's doing.
    assert httpx.get(url, headers={"Accept": DICOM}).status_code == 401


def test_the_token_does_not_reach_patient_b(
    stack: Stack, patients: Patients, launched: Launched
) -> None:
    a, b = patients.a, patients.b
    b_uid = study_uid(patients.studies[b][0])
    a_base = f"{stack.fhir_base}/Patient/{a}/$wado-rs"
    dicom_web = f"{stack.pacsfhir.base_url}/dicom-web"
    for url in (f"{dicom_web}/studies/{b_uid}", f"{a_base}/studies/{b_uid}"):
        response = httpx.get(url, headers={"Accept": DICOM, **bearer(launched.token)})
        assert response.status_code == 404, f"{url}: {response.status_code}"
    with pytest.raises(FHIRNotFoundException):
        ImagingStudy.read(patients.studies[b][0]["id"], launched.smart.server)
    searched = ImagingStudy.where(struct={"patient": b}).perform_resources_iter(
        launched.smart.server
    )
    assert list(searched) == []
    # B's study is there for a token allowed to see it: the 404s can fail.
    control = httpx.get(f"{dicom_web}/studies/{b_uid}/metadata", headers=bearer(stack.system_token))
    assert control.status_code == 200, control.text[:500]
