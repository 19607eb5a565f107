"""The request context is the one home of access decisions (issue 13, first step): every
FHIR and DICOMweb route takes it, and a caller limited to one patient sees that patient's
data only, on every surface. Tokens do not exist yet; the caller is set through the
context's one seam (``context.DEVELOPER``), which is what a token will fill."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pacsfhir.api import context
from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.auth.scopes import parse_scopes

PARAM = re.compile(r"\{[^}]+\}")


def test_every_route_takes_the_request_context(
    sample_archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(sample_archive.settings, sample_archive)
    built: list[str] = []
    build = context._build

    def recording(request: Any) -> context.RequestContext:
        built.append(request.url.path)
        return build(request)

    monkeypatch.setattr(context, "_build", recording)
    paths = app.openapi()["paths"]
    assert len(paths) > 40
    with TestClient(app, raise_server_exceptions=False) as client:
        for template, operations in paths.items():
            path = PARAM.sub("1.2.3", template)
            for method in operations:
                built.clear()
                response = client.request(method.upper(), path)
                assert response.status_code != 500, (method, template, response.text)
                assert "authorization policy" not in response.text, (method, template)
                assert built == [path], (method, template)


@pytest.fixture
def two_patients(sample_client: TestClient) -> tuple[str, str, str, str]:
    """(patient A, a study of A, patient B, a study of B), from the FHIR search."""
    bundle = sample_client.get("/fhir/ImagingStudy?_count=200").json()
    by_patient: dict[str, str] = {}
    for entry in bundle["entry"]:
        study = entry["resource"]
        by_patient.setdefault(study["subject"]["reference"].split("/")[1], study["id"])
    (a, study_a), (b, study_b) = list(by_patient.items())[:2]
    return a, study_a, b, study_b


@pytest.fixture
def as_patient_a(
    sample_archive: Archive,
    two_patients: tuple[str, str, str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[TestClient]:
    caller = context.Caller("app", patient=two_patients[0], grant=parse_scopes("patient/*.rs"))
    monkeypatch.setattr(context, "DEVELOPER", caller)
    with TestClient(create_app(sample_archive.settings, sample_archive)) as client:
        yield client


def test_a_patient_limited_caller_sees_only_that_patient(
    as_patient_a: TestClient, two_patients: tuple[str, str, str, str]
) -> None:
    a, study_a, b, study_b = two_patients
    client = as_patient_a
    bundle = client.get("/fhir/ImagingStudy?_count=200").json()
    subjects = {e["resource"]["subject"]["reference"] for e in bundle["entry"]}
    assert subjects == {f"Patient/{a}"}
    endpoints = {e["resource"]["endpoint"][0]["reference"] for e in bundle["entry"]}
    assert len(endpoints) == 1
    assert a in endpoints.pop()
    assert client.get(f"/fhir/ImagingStudy/{study_a}").status_code == 200
    assert client.get(f"/fhir/ImagingStudy/{study_b}").status_code == 404
    assert client.get(f"/fhir/Patient/{a}").status_code == 200
    assert client.get(f"/fhir/Patient/{b}").status_code == 404
    assert client.get(f"/fhir/Patient/{b}/ImagingStudy").json()["total"] == 0
    post = client.post(f"/fhir/Patient/{b}/ImagingStudy/_search", data={"_id": study_b})
    assert post.json()["total"] == 0
    assert client.get(f"/fhir/ImagingStudy?_id={study_b}").json()["total"] == 0


def test_a_patient_limited_caller_sees_only_that_patient_over_dicomweb(
    as_patient_a: TestClient, two_patients: tuple[str, str, str, str]
) -> None:
    a, study_a, b, study_b = two_patients
    client = as_patient_a
    found = {s["0020000D"]["Value"][0] for s in client.get("/dicom-web/studies").json()}
    assert study_a in found
    assert study_b not in found
    assert client.get(f"/dicom-web/studies/{study_a}/metadata").status_code == 200
    assert client.get(f"/dicom-web/studies/{study_b}/metadata").status_code == 404
    assert client.get(f"/fhir/Patient/{a}/$wado-rs/studies/{study_b}/metadata").status_code == 404
    assert client.get(f"/fhir/Patient/{b}/$wado-rs/studies/{study_b}/metadata").status_code == 404
