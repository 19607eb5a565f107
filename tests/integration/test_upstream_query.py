"""One parsed QIDO query, four answers: pacsfhir's own index, Orthanc's QIDO-RS, Orthanc's
C-FIND and dcmtk's dcmqrscp C-FIND, all holding the same generated studies. What an
upstream finds must contain what the archive finds (it is filtered again where it
lands), and equal it where the keys are ones every SCP must match (PS3.4 C.6.2.1)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.search.qido import parse_query
from pacsfhir.upstream.config import parse_upstream
from pacsfhir.upstream.dicomweb import DicomwebUpstreamClient
from pacsfhir.upstream.dimse import DimseUpstreamClient
from pacsfhir.upstream.query import UNIQUE_KEYS, qido_path
from pacsfhir.vocabulary.levels import Level, tag_of
from tests.conftest import free_port, make_settings, skip_or_fail
from tests.support.dcmqrscp import Dcmqrscp, dcmtk_problem
from tests.support.dicom_factory import load_template, write_study
from tests.support.orthanc import Orthanc, orthanc_problem

STUDIES = [  # PatientID, PatientName, StudyDate, AccessionNumber, Modality
    ("PAT-1", "DOE^JOHN", "20190304", "ACC-1", "CT"),
    ("PAT-1", "DOE^JOHN", "20210611", "ACC-2", "MR"),
    ("PAT-2", "ROE^JANE", "20200115", "ACC-3", "CT"),
    ("PAT-3", "SMITH^ANN", "20221201", "ACC-4", "US"),
]


@dataclass
class Peers:
    local: TestClient
    study_uids: list[str]
    series_of: dict[str, list[str]]
    upstreams: dict[str, Any]  # name -> client with .search(query)


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    for problem in (orthanc_problem(), dcmtk_problem()):
        if problem:
            skip_or_fail(problem)
    tmp = tmp_path_factory.mktemp("peers")
    template = load_template()
    files: list[Path] = []
    study_uids = []
    for patient_id, name, date, accession, modality in STUDIES:
        uid, paths = write_study(
            template,
            tmp / "dicom",
            series=2,
            instances=2,
            PatientID=patient_id,
            PatientName=name,
            StudyDate=date,
            AccessionNumber=accession,
            Modality=modality,
        )
        study_uids.append(uid)
        files += paths
    archive = Archive.open(make_settings(tmp, f"sqlite:///{tmp / 'index.db'}"))
    ingest([str(p) for p in files], archive.engine, archive.blobs, workers=1)
    known = {"PACSFHIR": ("127.0.0.1", free_port())}
    with (
        Orthanc(tmp / "orthanc", free_port(), free_port(), modalities=known) as orthanc,
        Dcmqrscp(tmp / "qrscp", free_port()) as qrscp,
        TestClient(create_app(archive.settings, archive)) as local,
    ):
        assert orthanc.store(files) == len(files)
        qrscp.store(files)
        web = DicomwebUpstreamClient(parse_upstream(orthanc.dicomweb_url, name="orthanc-web"))
        upstreams = {
            "orthanc-web": web,
            "orthanc-dimse": DimseUpstreamClient(
                parse_upstream(f"dimse://ORTHANCTEST@127.0.0.1:{orthanc.dicom_port}")
            ),
            "dcmqrscp": DimseUpstreamClient(
                parse_upstream(f"dimse://{qrscp.ae_title}@127.0.0.1:{qrscp.port}")
            ),
        }
        series_of = {
            uid: sorted(
                s["0020000E"]["Value"][0]
                for s in local.get(f"/dicom-web/studies/{uid}/series").json()
            )
            for uid in study_uids
        }
        yield Peers(local, study_uids, series_of, upstreams)
        web.close()
    archive.close()


def _uids(answers: list[dict[str, Any]], level: Level) -> set[str]:
    tag = f"{tag_of(UNIQUE_KEYS[level]):08X}"
    return {a[tag]["Value"][0] for a in answers if a.get(tag, {}).get("Value")}


def _local(
    peers: Peers, level: Level, pairs: list[tuple[str, str]], study: str | None, series: str | None
) -> set[str]:
    query = parse_query(level, pairs, study, series)
    response = peers.local.get("/dicom-web" + qido_path(query), params=pairs)
    return _uids(response.json() if response.status_code == 200 else [], level)


QUERIES = [  # level, parameters, study index (path), series (path: first of the study)
    (Level.STUDY, [("PatientID", "PAT-1")], None, False),
    (Level.STUDY, [("PatientName", "DOE^JOHN")], None, False),
    (Level.STUDY, [("PatientName", "DOE*")], None, False),
    (Level.STUDY, [("StudyDate", "20200101-20211231")], None, False),
    (Level.STUDY, [("StudyDate", "-20191231")], None, False),
    (Level.STUDY, [("AccessionNumber", "ACC-3\\ACC-4")], None, False),
    (Level.STUDY, [("StudyInstanceUID", "{0},{2}")], None, False),
    (Level.STUDY, [("PatientID", "PAT-*"), ("StudyDate", "20200101-")], None, False),
    (Level.SERIES, [], 0, False),
    (Level.SERIES, [("Modality", "MR")], 1, False),
    (Level.INSTANCE, [], 2, True),
]


@pytest.mark.parametrize(("level", "pairs", "study", "in_series"), QUERIES)
@pytest.mark.parametrize("upstream", ["orthanc-web", "orthanc-dimse", "dcmqrscp"])
def test_the_upstream_finds_what_the_archive_finds(
    peers: Peers,
    upstream: str,
    level: Level,
    pairs: list[tuple[str, str]],
    study: int | None,
    in_series: bool,
) -> None:
    pairs = [(k, v.format(*peers.study_uids)) for k, v in pairs]
    study_uid = None if study is None else peers.study_uids[study]
    series_uid = peers.series_of[study_uid][0] if in_series and study_uid else None
    expected = _local(peers, level, pairs, study_uid, series_uid)
    assert expected, "the archive finds something for every query here"
    query = parse_query(level, pairs, study_uid, series_uid)
    found = _uids(peers.upstreams[upstream].search(query), level)
    assert found == expected
