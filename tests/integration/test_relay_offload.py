"""The relay offload (``relay_offload=x-accel``) with the real peers it is made for: nginx
configured by ``pacsfhir nginx-config``, in front of pacsfhir under uvicorn, in front of
Orthanc requiring its own credentials. Through nginx, a retrieve of a study known only
upstream carries the bytes Orthanc stored, at each level; nginx asks Orthanc with the
upstream's credentials (Orthanc refuses any other), never the client's token; pacsfhir
hands a transfer over only to a request carrying the proxy's key."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from pacsfhir.api.offload import nginx_config
from pacsfhir.archive import Archive
from tests.conftest import LiveServer, free_port, make_settings, skip_or_fail
from tests.support.dicom_factory import load_template, write_study
from tests.support.mime import body_parts
from tests.support.nginx import Nginx, nginx_problem
from tests.support.orthanc import Orthanc, orthanc_problem

KEY = "offload-key-for-the-tests-0123456789"
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Deployment:
    proxy: str  # nginx's base URL
    direct: str  # pacsfhir's own
    study_uid: str
    files: list[Path]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    for problem in (orthanc_problem(), nginx_problem()):
        if problem:
            skip_or_fail(problem)
    tmp = tmp_path_factory.mktemp("offload")
    study_uid, files = write_study(
        load_template(), tmp / "dicom", series=2, instances=3, PatientID="OFFLOAD-1"
    )
    users = {"pacs-user": "pacs-secret"}
    with Orthanc(tmp / "orthanc", free_port(), free_port(), users=users) as orthanc:
        assert orthanc.store(files) == len(files)
        settings = make_settings(
            tmp,
            f"sqlite:///{tmp / 'gw.db'}",
            upstream=orthanc.dicomweb_url,
            upstream_auth="basic",
            upstream_username="pacs-user",
            upstream_password="pacs-secret",
            upstream_wait_seconds=30.0,
            relay_offload="x-accel",
            relay_offload_key=KEY,
        )
        archive = Archive.open(settings)
        try:
            with LiveServer(archive) as server:
                proxy_port = free_port()
                block = nginx_config(server.settings, f"127.0.0.1:{proxy_port}")
                with Nginx(tmp / "nginx", block, proxy_port):
                    yield Deployment(
                        f"http://127.0.0.1:{proxy_port}", server.base_url, study_uid, files
                    )
        finally:
            archive.close()


def _digests(answer: httpx.Response) -> set[str]:
    assert answer.status_code == 200, answer.text[:300]
    parts = body_parts(answer.headers["content-type"], answer.content)
    return {hashlib.sha256(part).hexdigest() for part in parts}


def _file_digests(paths: list[Path]) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def test_nginx_streams_each_level_from_the_upstream_byte_for_byte(deployment: Deployment) -> None:
    with httpx.Client(base_url=deployment.proxy, timeout=60) as client:
        found = client.get("/dicom-web/studies", params={"PatientID": "OFFLOAD-1"})
        assert found.status_code == 200, found.text  # the study lands as placeholders
        study = f"/dicom-web/studies/{deployment.study_uid}"
        # the client's own token must not reach Orthanc (which would refuse it: 401)
        headers = {"Accept": DICOM_ANY, "Authorization": "Bearer the-clients-token"}
        assert _digests(client.get(study, headers=headers)) == _file_digests(deployment.files)
        series_uid, sop_uid = _uids(deployment.files[0])
        in_series = [p for p in deployment.files if _uids(p)[0] == series_uid]
        got = client.get(f"{study}/series/{series_uid}", headers=headers)
        assert _digests(got) == _file_digests(in_series)
        got = client.get(f"{study}/series/{series_uid}/instances/{sop_uid}", headers=headers)
        assert _digests(got) == _file_digests(deployment.files[:1])


def test_pacsfhir_hands_over_only_to_the_proxys_key(deployment: Deployment) -> None:
    study = f"/dicom-web/studies/{deployment.study_uid}"
    with httpx.Client(base_url=deployment.direct, timeout=60) as client:
        assert client.get("/dicom-web/studies", params={"PatientID": "OFFLOAD-1"}).is_success
        handed = client.get(study, headers={"Accept": DICOM_ANY, "X-Pacsfhir-Offload": KEY})
        assert handed.status_code == 200
        assert handed.content == b""
        assert handed.headers["x-accel-redirect"] == (
            f"/_pacsfhir_upstream/upstream/studies/{deployment.study_uid}"
        )
        for sent in ({}, {"X-Pacsfhir-Offload": "x-accel"}, {"X-Pacsfhir-Offload": KEY[:-1]}):
            relayed = client.get(study, headers={"Accept": DICOM_ANY, **sent})
            assert "x-accel-redirect" not in relayed.headers
            assert _digests(relayed) == _file_digests(deployment.files)


def test_the_internal_location_is_not_reachable_from_outside(deployment: Deployment) -> None:
    path = f"/_pacsfhir_upstream/upstream/studies/{deployment.study_uid}"
    answer = httpx.get(deployment.proxy + path, headers={"Accept": DICOM_ANY}, timeout=30)
    assert answer.status_code == 404  # nginx: an internal location, for redirects only
    assert b"DICM" not in answer.content
