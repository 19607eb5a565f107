"""STOW-RS through the real stack: dicomweb-client against uvicorn, and raw multipart
bodies for the edge cases (partial failure, study mismatch, patient scope, bad bodies)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from pacsfhir.api.app import create_app
from pacsfhir.api.stow import CANNOT_UNDERSTAND, NOT_DICOM_PART, PATIENT_MISMATCH, STUDY_MISMATCH
from pacsfhir.archive import Archive
from pacsfhir.index.schema import instance
from tests.conftest import PYDICOM_DATA, LiveServer
from tests.support.dicom_factory import load_template, write_study, write_variant

TEST_FILES = PYDICOM_DATA / "test_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive.settings, archive)) as test_client:
        yield test_client


def multipart(parts: list[tuple[str, bytes]], boundary: str | None = None) -> tuple[str, bytes]:
    boundary = boundary or uuid.uuid4().hex
    body = b""
    for content_type, data in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


def stow(client: TestClient, url: str, parts: list[tuple[str, bytes]]) -> httpx.Response:
    content_type, body = multipart(parts)
    return client.post(url, content=body, headers={"Content-Type": content_type})


def sequence(module: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(module.get(tag, {}).get("Value", []))


def instance_count(archive: Archive) -> int:
    with archive.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(instance)).scalar_one())


def staged_files(archive: Archive) -> list[Path]:
    return list(archive.blobs.incoming.iterdir())


def test_dicomweb_client_stores_and_fhir_finds_it(archive: Archive) -> None:
    datasets = [pydicom.dcmread(TEST_FILES / name) for name in ("CT_small.dcm", "MR_small.dcm")]
    with LiveServer(archive) as server:
        web = DICOMwebClient(url=f"{server.base_url}/dicom-web")
        response = web.store_instances(datasets)
        assert len(response.ReferencedSOPSequence) == 2
        assert "FailedSOPSequence" not in response
        bundle = httpx.get(
            f"{server.base_url}/fhir/ImagingStudy",
            params={"identifier": f"urn:dicom:uid|urn:oid:{datasets[0].StudyInstanceUID}"},
        ).json()
    assert bundle["total"] == 1
    assert instance_count(archive) == 2


def test_stored_bytes_are_exactly_what_was_sent(client: TestClient, archive: Archive) -> None:
    data = (TEST_FILES / "JPEG2000.dcm").read_bytes()
    response = stow(client, "/dicom-web/studies", [("application/dicom", data)])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    (stored,) = sequence(response.json(), "00081199")
    sop_uid = stored["00081155"]["Value"][0]
    assert stored["00081190"]["Value"][0].endswith(f"/instances/{sop_uid}")
    with archive.engine.connect() as conn:
        blob = conn.execute(select(instance.c.blob)).scalar_one()
    assert archive.blobs.absolute(blob).read_bytes() == data
    again = stow(client, "/dicom-web/studies", [("application/dicom", data)])
    assert again.status_code == 200  # already present is success
    assert instance_count(archive) == 1


def test_partial_failure_is_202_with_reasons(client: TestClient, archive: Archive) -> None:
    good = (TEST_FILES / "CT_small.dcm").read_bytes()
    response = stow(
        client,
        "/dicom-web/studies",
        [
            ("application/dicom", good),
            ("application/dicom", b"this is not DICOM at all"),
            ("application/dicom", (TEST_FILES / "MR_truncated.dcm").read_bytes()),
            ("text/plain", b"hello"),
        ],
    )
    assert response.status_code == 202, response.text
    module = response.json()
    assert len(sequence(module, "00081199")) == 1
    reasons = [item["00081197"]["Value"][0] for item in sequence(module, "00081198")]
    assert reasons == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND, NOT_DICOM_PART]
    assert instance_count(archive) == 1
    assert staged_files(archive) == []


def test_study_mismatch_is_a_failure_for_that_instance(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    template = load_template()
    study_uid, paths = write_study(template, tmp_path, series=1, instances=2)
    other = write_variant(template, tmp_path / "other.dcm")
    parts = [("application/dicom", p.read_bytes()) for p in paths]
    response = stow(client, f"/dicom-web/studies/{study_uid}", parts)
    assert response.status_code == 200
    assert response.json()["00081190"]["Value"][0].endswith(f"/studies/{study_uid}")
    mismatch = stow(
        client,
        f"/dicom-web/studies/{study_uid}",
        [("application/dicom", (tmp_path / "other.dcm").read_bytes())],
    )
    assert mismatch.status_code == 409
    (failed,) = sequence(mismatch.json(), "00081198")
    assert failed["00081197"]["Value"] == [STUDY_MISMATCH]
    assert failed["00081155"]["Value"] == [other.SOPInstanceUID]
    assert instance_count(archive) == 2


def test_patient_scope_only_accepts_that_patients_instances(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    template = load_template()
    write_variant(template, tmp_path / "a.dcm", PatientID="PAT-A")
    write_variant(template, tmp_path / "b.dcm", PatientID="PAT-B")
    part_a = ("application/dicom", (tmp_path / "a.dcm").read_bytes())
    first = stow(client, "/dicom-web/studies", [part_a])
    assert first.status_code == 200
    bundle = client.get("/fhir/ImagingStudy", params={"patient.identifier": "PAT-A"}).json()
    patient_a = bundle["entry"][0]["resource"]["subject"]["reference"].split("/")[1]
    scoped = f"/fhir/Patient/{patient_a}/$wado-rs/studies"
    refused = stow(client, scoped, [("application/dicom", (tmp_path / "b.dcm").read_bytes())])
    assert refused.status_code == 409
    assert sequence(refused.json(), "00081198")[0]["00081197"]["Value"] == [PATIENT_MISMATCH]
    accepted = stow(client, scoped, [part_a])
    assert accepted.status_code == 200
    retrieve_url = sequence(accepted.json(), "00081199")[0]["00081190"]["Value"][0]
    assert f"/fhir/Patient/{patient_a}/$wado-rs/studies/" in retrieve_url
    assert instance_count(archive) == 1


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ("application/json", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ("multipart/related; type=application/dicom", 400),  # no boundary
    ],
)
def test_bad_media_types(client: TestClient, content_type: str, status: int) -> None:
    response = client.post(
        "/dicom-web/studies", content=b"x", headers={"Content-Type": content_type}
    )
    assert response.status_code == status
    assert "warning" in response.headers


def test_body_cut_short_stores_nothing(client: TestClient, archive: Archive) -> None:
    content_type, body = multipart(
        [("application/dicom", (TEST_FILES / "CT_small.dcm").read_bytes())]
    )
    response = client.post(
        "/dicom-web/studies", content=body[: len(body) // 2], headers={"Content-Type": content_type}
    )
    assert response.status_code == 400
    assert instance_count(archive) == 0
    assert staged_files(archive) == []
    assert client.get("/fhir/metadata").status_code == 200


def test_unacceptable_response_type_is_406(client: TestClient) -> None:
    content_type, body = multipart(
        [("application/dicom", (TEST_FILES / "CT_small.dcm").read_bytes())]
    )
    response = client.post(
        "/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+xml"},
    )
    assert response.status_code == 406
