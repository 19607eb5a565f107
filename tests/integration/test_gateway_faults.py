"""An upstream PACS that dies: before a search (502 at once), and in the middle of one
(dcmtk's dcmqrscp killed while the gateway is still asking it series by series): the
request fails with 502/504 and an OperationOutcome, nothing half-landed stays in the
index, and pacsfhir keeps serving."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.index.schema import instance
from tests.conftest import make_settings
from tests.support.dcmqrscp import Dcmqrscp
from tests.support.dicom_factory import load_template, write_study


@pytest.fixture
def loaded(qrscp: Dcmqrscp, tmp_path: Path) -> Dcmqrscp:
    files: list[Path] = []
    for _ in range(8):
        files += write_study(
            load_template(), tmp_path / "dicom", series=4, instances=2, PatientID="DIES-1"
        )[1]
    qrscp.store(files)
    return qrscp


def _client(tmp_path: Path, qrscp: Dcmqrscp) -> Iterator[tuple[TestClient, Archive]]:
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'gw.db'}",
        upstream=f"dimse://{qrscp.ae_title}@127.0.0.1:{qrscp.port}",
        upstream_timeout=5.0,
        upstream_wait_seconds=30.0,
    )
    archive = Archive.open(settings)
    try:
        with TestClient(create_app(settings, archive)) as client:
            yield client, archive
    finally:
        archive.close()


def _landed(archive: Archive) -> int:
    with archive.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(instance)).scalar_one())


def test_an_upstream_dead_before_the_search(loaded: Dcmqrscp, tmp_path: Path) -> None:
    loaded.kill()
    for client, archive in _client(tmp_path, loaded):
        answer = client.get("/fhir/ImagingStudy?patient.identifier=DIES-1")
        assert answer.status_code == 502
        assert answer.json()["resourceType"] == "OperationOutcome"
        assert _landed(archive) == 0
        assert client.get("/fhir/metadata").status_code == 200


def test_an_upstream_dying_during_the_search(loaded: Dcmqrscp, tmp_path: Path) -> None:
    for client, archive in _client(tmp_path, loaded):
        killer = threading.Timer(0.3, loaded.kill)  # the search asks 32 series, one by one
        killer.start()
        try:
            answer = client.get("/fhir/ImagingStudy?patient.identifier=DIES-1")
        finally:
            killer.join()
        assert answer.status_code in (502, 504), answer.text
        assert answer.json()["issue"][0]["code"] in ("transient", "timeout")
        assert _landed(archive) == 0  # landing is all or nothing, after the answers
        assert client.get("/fhir/metadata").status_code == 200
        again = client.get("/fhir/ImagingStudy?patient.identifier=DIES-1")
        assert again.status_code == 502  # asked again, and still dead
