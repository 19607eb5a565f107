"""An upstream PACS that dies: before a search (502 at once), in the middle of one (dcmtk's
dcmqrscp killed while the gateway is still asking it series by series), and in the middle
of a retrieve (Orthanc killed during a C-GET): the request fails with 502/504, nothing
half-landed or half-stored stays, and pacsfhir keeps serving."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.consistency import check
from pacsfhir.index.schema import instance
from tests.conftest import free_port, make_settings, skip_or_fail
from tests.support.dcmqrscp import Dcmqrscp
from tests.support.dicom_factory import load_template, write_study, write_variant
from tests.support.orthanc import Orthanc, orthanc_problem


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


def test_an_upstream_dying_during_a_retrieve(tmp_path: Path) -> None:
    """Orthanc killed while the gateway C-GETs a study from it: 502/504, nothing of the
    study half-stored (its placeholders stay, the staged parts are gone, the index and the
    blobs agree), and pacsfhir keeps serving."""
    problem = orthanc_problem()
    if problem:
        skip_or_fail(problem)
    big = load_template().copy()
    big.Rows = big.Columns = 1024
    big.NumberOfFrames = 2
    rng = np.random.default_rng(5)
    paths = []
    study_uid = None
    for n in range(12):  # 48 MiB of noise, one 4 MiB instance at a time
        big.PixelData = rng.integers(0, 4096, (2, 1024, 1024), dtype=np.uint16).tobytes()
        ds = write_variant(
            big, tmp_path / "big" / f"{n}.dcm", study_uid=study_uid, PatientID="CUT-1"
        )
        study_uid = str(ds.StudyInstanceUID)
        paths.append(tmp_path / "big" / f"{n}.dcm")
    known = {"PACSFHIR": ("127.0.0.1", free_port())}
    with Orthanc(tmp_path / "orthanc", free_port(), free_port(), modalities=known) as orthanc:
        assert orthanc.store(paths) == len(paths)
        settings = make_settings(
            tmp_path,
            f"sqlite:///{tmp_path / 'gw.db'}",
            upstream=f"dimse://ORTHANCTEST@127.0.0.1:{orthanc.dicom_port}",
            upstream_timeout=5.0,
            upstream_wait_seconds=30.0,
        )
        archive = Archive.open(settings)
        try:
            with TestClient(create_app(settings, archive)) as client:
                assert client.get("/dicom-web/studies?PatientID=CUT-1").status_code == 200
                assert _landed(archive) == len(paths)
                assert orthanc.process is not None
                killer = threading.Timer(0.4, orthanc.process.kill)
                killer.start()
                try:
                    answer = client.get(f"/dicom-web/studies/{study_uid}/metadata")
                finally:
                    killer.join()
                assert answer.status_code in (502, 504), answer.text
                assert _stored(archive) == 0  # all or nothing: the parts received were dropped
                report = check(archive.engine, archive.blobs)
                assert report.clean, report
                assert client.get("/fhir/metadata").status_code == 200
        finally:
            archive.close()


def _stored(archive: Archive) -> int:
    with archive.engine.connect() as conn:
        query = select(func.count()).select_from(instance).where(instance.c.blob != "")
        return int(conn.execute(query).scalar_one())
