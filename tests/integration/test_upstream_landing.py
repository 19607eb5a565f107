"""An upstream's answers land in the index: the ImagingStudy pacsfhir makes from what
Orthanc (QIDO-RS, C-FIND) and dcmqrscp (C-FIND) answer equals the one it makes from the
files themselves, but for what an upstream does not return (said in each case); a study
stored here is never replaced by placeholders; placeholders follow the upstream and give
way to a stored copy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.index.schema import instance, study
from pacsfhir.search.qido import parse_query
from pacsfhir.upstream.config import parse_upstream
from pacsfhir.upstream.dicomweb import DicomwebUpstreamClient
from pacsfhir.upstream.dimse import DimseUpstreamClient
from pacsfhir.upstream.fetch import fetch_studies
from pacsfhir.upstream.landing import land
from pacsfhir.vocabulary.levels import Level
from tests.conftest import free_port, make_settings, skip_or_fail
from tests.support.dcmqrscp import Dcmqrscp, dcmtk_problem
from tests.support.dicom_factory import load_template, write_study
from tests.support.orthanc import Orthanc, orthanc_problem


@dataclass
class Upstreams:
    files: list[Path]
    study_uids: list[str]
    orthanc: Orthanc
    clients: dict[str, Any]
    reference: dict[str, dict[str, Any]]  # study UID -> ImagingStudy made from the files


def _now() -> int:
    return time.time_ns() // 1000


def _imaging_study(archive: Archive, study_uid: str) -> dict[str, Any]:
    with TestClient(create_app(archive.settings, archive)) as client:
        found = client.get(f"/fhir/ImagingStudy/{study_uid}")
    assert found.status_code == 200, found.text
    resource: dict[str, Any] = found.json()
    resource.pop("meta")
    return resource


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    for problem in (orthanc_problem(), dcmtk_problem()):
        if problem:
            skip_or_fail(problem)
    tmp = tmp_path_factory.mktemp("landing")
    template = load_template()
    files: list[Path] = []
    study_uids = []
    for modality, date in (("CT", "20200304"), ("MR", "20210611")):
        uid, paths = write_study(
            template,
            tmp / "dicom",
            series=2,
            instances=3,
            PatientID="LAND-1",
            PatientName="LANDING^LUCY",
            StudyDate=date,
            AccessionNumber=f"ACC-{modality}",
            Modality=modality,
            StudyDescription=f"{modality} study",
            SeriesDescription="a series",
            BodyPartExamined="CHEST",
        )
        study_uids.append(uid)
        files += paths
    reference_archive = Archive.open(make_settings(tmp / "ref", f"sqlite:///{tmp / 'ref.db'}"))
    ingest([str(p) for p in files], reference_archive.engine, reference_archive.blobs, workers=1)
    reference = {uid: _imaging_study(reference_archive, uid) for uid in study_uids}
    reference_archive.close()
    known = {"PACSFHIR": ("127.0.0.1", free_port())}
    with (
        Orthanc(tmp / "orthanc", free_port(), free_port(), modalities=known) as orthanc,
        Dcmqrscp(tmp / "qrscp", free_port()) as qrscp,
    ):
        assert orthanc.store(files) == len(files)
        qrscp.store(files)
        web = DicomwebUpstreamClient(parse_upstream(orthanc.dicomweb_url, name="orthanc-web"))
        clients = {
            "orthanc-web": web,
            "orthanc-dimse": DimseUpstreamClient(
                parse_upstream(
                    f"dimse://ORTHANCTEST@127.0.0.1:{orthanc.dicom_port}", name="orthanc-dimse"
                )
            ),
            "dcmqrscp": DimseUpstreamClient(
                parse_upstream(f"dimse://{qrscp.ae_title}@127.0.0.1:{qrscp.port}", name="dcmqrscp")
            ),
        }
        yield Upstreams(files, study_uids, orthanc, clients, reference)
        web.close()


@pytest.fixture
def gateway_archive(tmp_path: Path) -> Iterator[Archive]:
    archive = Archive.open(make_settings(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}"))
    yield archive
    archive.close()


QUERY = parse_query(Level.STUDY, [("PatientID", "LAND-1")])


@pytest.mark.parametrize("name", ["orthanc-web", "orthanc-dimse"])
def test_the_landed_imaging_study_is_the_files_one(
    upstreams: Upstreams, gateway_archive: Archive, name: str
) -> None:
    answers = fetch_studies(upstreams.clients[name], QUERY)
    assert sorted(a.study["0020000D"]["Value"][0] for a in answers) == sorted(upstreams.study_uids)
    assert land(gateway_archive.engine, answers, name, _now()) == len(upstreams.files)
    for uid in upstreams.study_uids:
        assert _imaging_study(gateway_archive, uid) == upstreams.reference[uid]


def test_an_scp_answering_little_is_completed_from_headers(
    upstreams: Upstreams, gateway_archive: Archive
) -> None:
    """dcmqrscp's C-FIND answers hold no SOP Class UID (nor series descriptions): one
    header per series is retrieved for them. What still differs from the files is what
    neither its C-FIND nor one header per series gives (said in DIFFERENT)."""
    answers = fetch_studies(upstreams.clients["dcmqrscp"], QUERY)
    assert land(gateway_archive.engine, answers, "dcmqrscp", _now()) == len(upstreams.files)
    for uid in upstreams.study_uids:
        landed, expected = _imaging_study(gateway_archive, uid), upstreams.reference[uid]
        assert _differences(landed, expected) == DIFFERENT


# the title (Image Type) of every instance but the first of its series: not in dcmqrscp's
# C-FIND answers, and only one header per series is retrieved
DIFFERENT = {"series.instance.title"}


def _differences(got: Any, want: Any, path: str = "") -> set[str]:
    """The paths (``series.instance.title``) where two resources differ."""
    if isinstance(got, dict) and isinstance(want, dict):
        found: set[str] = set()
        for key in set(got) | set(want):
            found |= _differences(got.get(key), want.get(key), f"{path}.{key}".lstrip("."))
        return found
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        found = set()
        for a, b in zip(got, want, strict=True):
            found |= _differences(a, b, path)
        return found
    return set() if got == want else {path}


def _rows(archive: Archive) -> dict[str, tuple[str, str | None]]:
    with archive.engine.connect() as conn:
        rows = conn.execute(select(instance.c.SOPInstanceUID, instance.c.blob, instance.c.upstream))
        return {uid: (blob, upstream) for uid, blob, upstream in rows}


def test_stored_copies_win_and_placeholders_follow_the_upstream(
    upstreams: Upstreams, gateway_archive: Archive
) -> None:
    client = upstreams.clients["orthanc-web"]
    first_study = [p for p in upstreams.files if upstreams.study_uids[0] in str(p)]
    ingest([str(first_study[0])], gateway_archive.engine, gateway_archive.blobs, workers=1)
    land(gateway_archive.engine, fetch_studies(client, QUERY), "orthanc-web", _now())
    rows = _rows(gateway_archive)
    assert len(rows) == len(upstreams.files)
    stored = [uid for uid, (blob, upstream) in rows.items() if blob]
    assert len(stored) == 1  # the one stored here stayed stored
    assert rows[stored[0]][1] is None
    assert all(upstream == "orthanc-web" for blob, upstream in rows.values() if not blob)

    # the upstream loses an instance: its placeholder goes at the next landing
    answers = fetch_studies(client, QUERY)
    dropped = answers[1].instances.pop()
    land(gateway_archive.engine, answers, "orthanc-web", _now())
    assert dropped["00080018"]["Value"][0] not in _rows(gateway_archive)

    # a stored copy arriving later replaces its placeholder
    some_placeholder = next(uid for uid, (blob, _) in _rows(gateway_archive).items() if not blob)
    path = next(p for p in upstreams.files if _sop_uid(p) == some_placeholder)
    ingest([str(path)], gateway_archive.engine, gateway_archive.blobs, workers=1)
    blob, upstream = _rows(gateway_archive)[some_placeholder]
    assert blob
    assert upstream is None


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _study_versions(archive: Archive) -> dict[str, tuple[int, int]]:
    with archive.engine.connect() as conn:
        rows = conn.execute(
            select(study.c.StudyInstanceUID, study.c.version_id, study.c.last_updated)
        )
        return {uid: (version, updated) for uid, version, updated in rows}


def test_landing_an_unchanged_answer_again_changes_nothing(
    upstreams: Upstreams, gateway_archive: Archive
) -> None:
    """A cache refresh that finds the upstream unchanged keeps each study's version and
    lastUpdated; a change at the study level gives that study, and that study only, a
    new version."""
    client = upstreams.clients["orthanc-web"]
    answers = fetch_studies(client, QUERY)
    assert land(gateway_archive.engine, answers, "orthanc-web", _now()) == len(upstreams.files)
    before = _study_versions(gateway_archive)
    assert land(gateway_archive.engine, fetch_studies(client, QUERY), "orthanc-web", _now()) == 0
    assert _study_versions(gateway_archive) == before

    changed = fetch_studies(client, QUERY)
    changed_uid = changed[0].study["0020000D"]["Value"][0]
    changed[0].study["00081030"] = {"vr": "LO", "Value": ["described anew"]}
    written = land(gateway_archive.engine, changed, "orthanc-web", _now())
    assert written == len(changed[0].instances)
    after = _study_versions(gateway_archive)
    assert after[changed_uid][0] > before[changed_uid][0]
    assert after[changed_uid][1] > before[changed_uid][1]
    assert {u: v for u, v in after.items() if u != changed_uid} == {
        u: v for u, v in before.items() if u != changed_uid
    }
    assert _imaging_study(gateway_archive, changed_uid)["description"] == "described anew"
