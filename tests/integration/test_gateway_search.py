"""pacsfhir as a gateway in front of Orthanc (its DICOMweb, and its DICOM port): FHIR
ImagingStudy search and QIDO-RS on pacsfhir bring in what Orthanc holds and answer what
pacsfhir answers for the same files held itself; open-ended searches are refused saying
why; slow upstream work is 503 + Retry-After then the result; a repeated search is
served from the index until the cache time runs out; a dead upstream is 502."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.dimse.listener import StorageListener
from pacsfhir.errors import ConfigurationError
from pacsfhir.index.schema import instance, job, series, study
from pacsfhir.settings import load_settings
from tests.conftest import free_port, make_settings, skip_or_fail
from tests.support.authserver import AuthServer
from tests.support.dcmqrscp import Dcmqrscp
from tests.support.dicom_factory import load_template, write_study
from tests.support.mime import body_parts
from tests.support.orthanc import Orthanc, orthanc_problem
from tests.support.secured import bearer

PATIENTS = {"GW-1": ("CT", "MR"), "GW-2": ("CT",)}
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class World:
    tmp: Path
    orthanc: Orthanc
    reference: TestClient  # pacsfhir holding the same files itself
    dimse_url: str
    move_port: int  # where Orthanc sends a C-MOVE to AE PACSFHIR

    def orthanc_studies(self, patient_id: str) -> list[Any]:
        answer = httpx.get(f"{self.orthanc.dicomweb_url}/studies", params={"PatientID": patient_id})
        return list(answer.json()) if answer.status_code == 200 else []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    problem = orthanc_problem()
    if problem:
        skip_or_fail(problem)
    tmp = tmp_path_factory.mktemp("gateway")
    template = load_template()
    files: list[Path] = []
    for patient_id, modalities in PATIENTS.items():
        for n, modality in enumerate(modalities):
            _uid, paths = write_study(
                template,
                tmp / "dicom",
                series=2,
                instances=2,
                PatientID=patient_id,
                PatientName=f"GATEWAY^{patient_id}",
                StudyDate=f"2021010{n + 1}",
                AccessionNumber=f"{patient_id}-{modality}",
                Modality=modality,
            )
            files += paths
    reference_archive = Archive.open(make_settings(tmp / "ref", f"sqlite:///{tmp / 'ref.db'}"))
    ingest([str(p) for p in files], reference_archive.engine, reference_archive.blobs, workers=1)
    move_port = free_port()
    known = {"PACSFHIR": ("127.0.0.1", move_port)}
    with (
        Orthanc(tmp / "orthanc", free_port(), free_port(), modalities=known) as orthanc,
        TestClient(create_app(reference_archive.settings, reference_archive)) as reference,
    ):
        assert orthanc.store(files) == len(files)
        dimse = f"dimse://ORTHANCTEST@127.0.0.1:{orthanc.dicom_port}"
        yield World(tmp, orthanc, reference, dimse, move_port)
    reference_archive.close()


@pytest.fixture(params=["dicomweb", "dimse"])
def gateway(
    world: World, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[TestClient, Archive]]:
    url = world.orthanc.dicomweb_url if request.param == "dicomweb" else world.dimse_url
    yield from _gateway(tmp_path, url, upstream_wait_seconds=20.0)


def _gateway(tmp_path: Path, url: str, **settings: Any) -> Iterator[tuple[TestClient, Archive]]:
    base = make_settings(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", upstream=url, **settings)
    archive = Archive.open(base)
    try:
        with TestClient(create_app(archive.settings, archive)) as client:
            yield client, archive
    finally:
        archive.close()


def _resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for entry in bundle.get("entry", []):
        resource = dict(entry["resource"])
        resource.pop("meta", None)
        found.append(resource)
    return sorted(found, key=lambda r: r["id"])


@pytest.mark.parametrize(
    "query",
    [
        "patient.identifier=GW-1",
        "patient.identifier=GW-2&modality=CT",
        "identifier=GW-1-MR",
        "patient.identifier=GW-1&started=ge2021-01-02",
    ],
)
def test_a_fhir_search_answers_as_the_archive_would(
    world: World, gateway: tuple[TestClient, Archive], query: str
) -> None:
    client, _archive = gateway
    expected = _resources(world.reference.get(f"/fhir/ImagingStudy?{query}").json())
    assert expected
    answer = client.get(f"/fhir/ImagingStudy?{query}")
    assert answer.status_code == 200, answer.text
    assert _resources(answer.json()) == expected


def test_qido_answers_as_the_archive_would(
    world: World, gateway: tuple[TestClient, Archive]
) -> None:
    client, _archive = gateway
    for path in ("/dicom-web/studies?PatientID=GW-1", "/dicom-web/studies?AccessionNumber=GW-2-CT"):
        expected = world.reference.get(path).json()
        answer = client.get(path)
        assert answer.status_code == 200, answer.text
        assert sorted(answer.json(), key=str) == sorted(expected, key=str)
    study = expected[0]["0020000D"]["Value"][0]
    series = client.get(f"/dicom-web/studies/{study}/series")
    assert series.status_code == 200
    assert len(series.json()) == 2


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/ImagingStudy?modality=CT",
        "/fhir/ImagingStudy",
        "/dicom-web/studies?StudyDate=20210101",
        "/dicom-web/studies?PatientID=GW-*",
        "/dicom-web/series?Modality=CT",
    ],
)
def test_open_ended_searches_are_refused_saying_why(
    gateway: tuple[TestClient, Archive], path: str
) -> None:
    client, _archive = gateway
    answer = client.get(path)
    assert answer.status_code == 400
    assert "name a patient" in answer.text


def test_a_repeated_search_is_served_from_the_index(
    world: World, gateway: tuple[TestClient, Archive]
) -> None:
    client, archive = gateway
    for _ in range(3):
        assert client.get("/fhir/ImagingStudy?patient.identifier=GW-2").json()["total"] == 1
    with archive.engine.connect() as conn:
        runs = conn.execute(select(func.sum(job.c.attempts))).scalar_one()
    assert runs == 1


def test_slow_upstream_work_is_503_then_the_result(world: World, tmp_path: Path) -> None:
    for client, _archive in _gateway(tmp_path, world.dimse_url, upstream_wait_seconds=0.0):
        first = client.get("/fhir/ImagingStudy?patient.identifier=GW-1")
        assert first.status_code == 503
        assert int(first.headers["retry-after"]) >= 1
        assert first.json()["resourceType"] == "OperationOutcome"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = client.get("/fhir/ImagingStudy?patient.identifier=GW-1")
            if answer.status_code == 200:
                break
            time.sleep(0.2)
        assert answer.status_code == 200
        assert answer.json()["total"] == 2


def test_a_changed_upstream_is_seen_after_the_cache_time(world: World, tmp_path: Path) -> None:
    for client, _archive in _gateway(
        tmp_path, world.orthanc.dicomweb_url, upstream_cache_seconds=1, upstream_wait_seconds=20.0
    ):
        before = client.get("/fhir/ImagingStudy?patient.identifier=GW-2").json()["total"]
        _uid, paths = write_study(
            load_template(), tmp_path / "new", series=1, instances=1, PatientID="GW-2"
        )
        assert world.orthanc.store(paths) == 1
        assert client.get("/fhir/ImagingStudy?patient.identifier=GW-2").json()["total"] == before
        time.sleep(1.2)
        after = client.get("/fhir/ImagingStudy?patient.identifier=GW-2").json()["total"]
        assert after == before + 1


def test_a_study_held_upstream_is_retrieved_then_served(
    world: World, gateway: tuple[TestClient, Archive], request: pytest.FixtureRequest
) -> None:
    client, archive = gateway
    study = client.get("/dicom-web/studies?PatientID=GW-1").json()[0]["0020000D"]["Value"][0]
    answer = client.get(f"/dicom-web/studies/{study}", headers={"Accept": DICOM_ANY})
    assert answer.status_code == 200, answer.text
    expected = world.reference.get(f"/dicom-web/studies/{study}", headers={"Accept": DICOM_ANY})
    dimse = "dimse" in request.node.callspec.id
    if dimse:  # C-GET into the archive: the same data sets, under our file meta header
        got, want = _datasets(answer), _datasets(expected)
        assert sorted(got) == sorted(want)  # the same instances
        assert got == want, _first_difference(got, want)  # holding the same elements
    else:  # WADO-RS streamed straight through: the very files, nothing stored
        assert sorted(_part_hashes(answer)) == sorted(_part_hashes(expected))
    assert _remote(archive) == (4 if dimse else 8)  # 2 studies x 2 series x 2 instances
    metadata = client.get(f"/dicom-web/studies/{study}/metadata")  # needs the files here
    assert metadata.status_code == 200
    assert len(metadata.json()) == 4
    assert _remote(archive) == 4  # the patient's other study is still only upstream
    again = client.get(f"/dicom-web/studies/{study}", headers={"Accept": DICOM_ANY})
    assert sorted(_datasets(again)) == sorted(_datasets(expected))  # now from the archive


def test_c_move_retrieves_through_the_listener(world: World, tmp_path: Path) -> None:
    """retrieve=c-move: Orthanc sends the study to pacsfhir's C-STORE listener (AE
    PACSFHIR, which Orthanc knows), which stores it; the retrieve then serves it."""
    url = f"{world.dimse_url}?retrieve=c-move"
    for client, archive in _gateway(
        tmp_path, url, upstream_wait_seconds=30.0, dimse_port=world.move_port
    ):
        with StorageListener(archive, "127.0.0.1", world.move_port, "PACSFHIR"):
            client.get("/dicom-web/studies?PatientID=GW-2")  # brings GW-2's studies in
            # one the reference holds too (another test adds a GW-2 study to Orthanc)
            known = world.reference.get("/dicom-web/studies?PatientID=GW-2").json()
            study_uid = known[0]["0020000D"]["Value"][0]
            answer = client.get(f"/dicom-web/studies/{study_uid}", headers={"Accept": DICOM_ANY})
            assert answer.status_code == 200, answer.text
            expected = world.reference.get(
                f"/dicom-web/studies/{study_uid}", headers={"Accept": DICOM_ANY}
            )
            got, want = _datasets(answer), _datasets(expected)
            assert got == want, _first_difference(got, want)
            with archive.engine.connect() as conn:
                left = conn.execute(
                    select(func.count())
                    .select_from(instance.join(series).join(study))
                    .where(study.c.StudyInstanceUID == study_uid, instance.c.blob == "")
                ).scalar_one()
            assert left == 0  # every instance of the study is stored here now


def test_c_move_without_a_listener_stops_the_start(world: World) -> None:
    with pytest.raises(ConfigurationError, match="dimse_port"):
        load_settings({}, {"PACSFHIR_UPSTREAM": f"{world.dimse_url}?retrieve=c-move"})


def _remote(archive: Archive) -> int:
    with archive.engine.connect() as conn:
        query = select(func.count()).select_from(instance).where(instance.c.blob == "")
        return int(conn.execute(query).scalar_one())


def _first_difference(got: dict[str, dict[int, Any]], want: dict[str, dict[int, Any]]) -> str:
    for uid in sorted(got):
        a, b = got[uid], want.get(uid, {})
        for tag in sorted(set(a) | set(b)):
            if a.get(tag) != b.get(tag):
                return f"{uid} {tag:08X}: {str(a.get(tag))[:80]} != {str(b.get(tag))[:80]}"
    return "same"


def _datasets(response: Any) -> dict[str, dict[int, Any]]:
    """Each part's data set by SOP Instance UID: file meta left out, and Data Set Trailing
    Padding (FFFC,FFFC), which has no meaning and which Orthanc's C-GET drops (CT_small
    has some)."""
    found = {}
    for data in _parts(response):
        ds = pydicom.dcmread(io.BytesIO(data))
        found[ds.SOPInstanceUID] = {e.tag: e.value for e in ds if e.tag != 0xFFFCFFFC}
    return found


def _parts(response: Any) -> list[bytes]:
    return body_parts(response.headers["content-type"], response.content)


def _part_hashes(response: Any) -> list[str]:
    return [hashlib.sha256(data).hexdigest() for data in _parts(response)]


def test_a_dead_upstream_is_502(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    for client, _archive in _gateway(
        tmp_path, dead, upstream_timeout=3.0, upstream_wait_seconds=20.0
    ):
        fhir = client.get("/fhir/ImagingStudy?patient.identifier=X")
        assert fhir.status_code == 502
        assert fhir.json()["issue"][0]["code"] == "transient"
        qido = client.get("/dicom-web/studies?PatientID=X")
        assert qido.status_code == 502
        assert "ConnectError" in qido.headers["warning"]
        assert client.get("/fhir/metadata").status_code == 200  # still serving


def test_a_patient_token_never_brings_in_or_sees_another_patient(
    world: World, tmp_path: Path, auth_server: AuthServer
) -> None:
    """Through the gateway, patient GW-1's token searches, reads and retrieves GW-2's
    studies by every route it has: nothing found, and nothing of GW-2 even asked for."""
    reference_studies = world.reference.get("/fhir/ImagingStudy?patient.identifier=GW-2").json()
    theirs = reference_studies["entry"][0]["resource"]["id"]
    for client, archive in _gateway(
        tmp_path,
        world.orthanc.dicomweb_url,
        upstream_wait_seconds=20.0,
        auth="jwt",
        jwt_issuer=auth_server.issuer,
    ):
        system = bearer(auth_server, "system/*.rs")
        mine = client.get("/fhir/ImagingStudy?patient.identifier=GW-1", headers=system).json()
        patient = mine["entry"][0]["resource"]["subject"]["reference"].split("/")[1]
        token = bearer(auth_server, "patient/ImagingStudy.rs", patient)
        for path in (
            "/fhir/ImagingStudy?patient.identifier=GW-2",
            f"/fhir/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{theirs}",
            "/dicom-web/studies?PatientID=GW-2",
            f"/dicom-web/studies?StudyInstanceUID={theirs}",
        ):
            answer = client.get(path, headers=token)
            assert answer.status_code in (200, 204), path
            if path.startswith("/fhir"):
                assert answer.json()["total"] == 0, path  # (the self link echoes the query)
            else:
                assert answer.status_code == 204 or not answer.json(), path
        for path in (
            f"/fhir/ImagingStudy/{theirs}",
            f"/dicom-web/studies/{theirs}",
            f"/dicom-web/studies/{theirs}/metadata",
            f"/fhir/Patient/{patient}/$wado-rs/studies/{theirs}",
        ):
            assert client.get(path, headers=token).status_code == 404, path
        with archive.engine.connect() as conn:
            landed = {uid for (uid,) in conn.execute(select(study.c.StudyInstanceUID))}
        assert theirs not in landed  # never asked of the upstream for this token


def test_an_ehr_patient_token_reaches_its_studies_upstream(
    world: World, tmp_path: Path, auth_server: AuthServer
) -> None:
    """The token's patient is the EHR's id: linked by its identifier (PUT Patient) to the
    Patient ID the PACS holds, before anything of it was ever brought in, its token's
    search asks the PACS by that Patient ID and sees what lands, linked."""
    for client, _archive in _gateway(
        tmp_path,
        world.orthanc.dicomweb_url,
        upstream_wait_seconds=20.0,
        auth="jwt",
        jwt_issuer=auth_server.issuer,
    ):
        writer = bearer(auth_server, "system/Patient.cud")
        patient = {"resourceType": "Patient", "id": "ehr-9", "identifier": [{"value": "GW-1"}]}
        put = client.put(
            "/fhir/Patient/ehr-9",
            json=patient,
            headers={**writer, "Content-Type": "application/fhir+json"},
        )
        assert put.status_code == 201, put.text
        token = bearer(auth_server, "patient/ImagingStudy.rs", "ehr-9")
        bundle = client.get("/fhir/ImagingStudy", headers=token).json()
        assert bundle["total"] == 2
        assert {e["resource"]["subject"]["reference"] for e in bundle["entry"]} == {"Patient/ehr-9"}


def test_stow_in_gateway_mode_stores_here_and_is_served_first(
    world: World, gateway: tuple[TestClient, Archive]
) -> None:
    """STOW-RS stores here (the upstream stays the source of what it holds), and the
    stored copy is what a retrieve serves, not the upstream's."""
    client, archive = gateway
    client.get("/dicom-web/studies?PatientID=GW-2")  # brings GW-2's studies in
    known = world.reference.get("/dicom-web/studies?PatientID=GW-2").json()
    study_uid = known[0]["0020000D"]["Value"][0]  # one the reference holds too
    source = world.reference.get(f"/dicom-web/studies/{study_uid}", headers={"Accept": DICOM_ANY})
    boundary = "gateway-stow"
    parts = [(b"Content-Type: application/dicom", data) for data in _parts(source)]
    body = (
        b"".join(
            b"--" + boundary.encode() + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n"
            for head, data in parts
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    stored = client.post(
        "/dicom-web/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
    )
    assert stored.status_code == 200, stored.text
    with archive.engine.connect() as conn:
        left = conn.execute(
            select(func.count())
            .select_from(instance.join(series).join(study))
            .where(study.c.StudyInstanceUID == study_uid, instance.c.blob == "")
        ).scalar_one()
    assert left == 0  # its placeholders gave way to the stored copies
    again = client.get(f"/dicom-web/studies/{study_uid}", headers={"Accept": DICOM_ANY})
    assert sorted(_part_hashes(again)) == sorted(_part_hashes(source))


def test_two_upstreams_are_both_asked(world: World, qrscp: Dcmqrscp, tmp_path: Path) -> None:
    """[[upstream]] tables: Orthanc (DICOMweb) and dcmqrscp (DIMSE), each holding studies
    of the same patient: one search brings in both, each retrievable from its holder."""
    prior, paths = write_study(
        load_template(), tmp_path / "prior", series=1, instances=2, PatientID="GW-2"
    )
    qrscp.store(paths)
    tables = [
        {"name": "orthanc", "url": world.orthanc.dicomweb_url},
        {"name": "prior-site", "url": f"dimse://{qrscp.ae_title}@127.0.0.1:{qrscp.port}"},
    ]
    for client, archive in _gateway(tmp_path, json.dumps(tables), upstream_wait_seconds=20.0):
        orthanc_count = len(world.orthanc_studies("GW-2"))
        bundle = client.get("/fhir/ImagingStudy?patient.identifier=GW-2").json()
        assert bundle["total"] == orthanc_count + 1
        with archive.engine.connect() as conn:
            holders = set(conn.scalars(select(instance.c.upstream).distinct()))
        assert holders == {"orthanc", "prior-site"}
        answer = client.get(f"/dicom-web/studies/{prior}", headers={"Accept": DICOM_ANY})
        assert answer.status_code == 200, answer.text  # C-GET from dcmqrscp
        assert len(_parts(answer)) == 2


def test_a_search_too_wide_for_the_upstream_is_the_clients_to_narrow(
    gateway: tuple[TestClient, Archive],
) -> None:
    """40 Patient IDs would be 40 C-FINDs (or QIDO-RS requests): 400 saying so, not a
    502 that would blame the upstream; and no job is made."""
    client, archive = gateway
    many = "\\".join(f"GW-{n}" for n in range(40))
    answer = client.get("/dicom-web/studies", params={"PatientID": many})
    assert answer.status_code == 400
    assert "narrow the search" in answer.headers["warning"]
    with archive.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(job)).scalar_one() == 0
