"""The STOW-RS answer as PS3.18 says: the Store Instances Response Module (Annex I) with
the study's Retrieve URL and Specific Character Set on every response, Failed SOP items
that name each instance whose file says which it is, and the status of Table 10.5.3-1
(400 when every part is bad syntax, 409 when nothing is stored for a conflict). Hostile
bodies leave the index and the blob store as they were."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.consistency import check
from pacsfhir.index.schema import instance
from pacsfhir.store.local import CANNOT_UNDERSTAND, NOT_DICOM_PART, STUDY_MISMATCH
from tests.conftest import PYDICOM_DATA, LiveServer
from tests.support.dicom_factory import load_template, write_study, write_variant
from tests.support.orthanc import Orthanc

TEST_FILES = PYDICOM_DATA / "test_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"
MR_TRUNCATED = TEST_FILES / "MR_truncated.dcm"
UTF8 = {"vr": "CS", "Value": ["ISO_IR 192"]}


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive.settings, archive)) as test_client:
        yield test_client


def stow(client: TestClient, url: str, parts: list[tuple[str, bytes]]) -> httpx.Response:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
            for content_type, data in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return client.post(url, content=body, headers={"Content-Type": content_type})


def items(module: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(module.get(tag, {}).get("Value", []))


def value(item: dict[str, Any], tag: str) -> Any:
    return item.get(tag, {}).get("Value", [None])[0]


def failed_items(module: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
    return [
        (value(i, "00081150"), value(i, "00081155"), value(i, "00081197"))
        for i in items(module, "00081198")
    ]


def failed(response: httpx.Response) -> list[tuple[Any, Any, Any]]:
    return failed_items(response.json())


def instance_count(archive: Archive) -> int:
    with archive.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(instance)).scalar_one())


def assert_untouched(archive: Archive, instances: int) -> None:
    """The index holds ``instances`` and agrees with the blob store; nothing is staged."""
    assert instance_count(archive) == instances
    assert list(archive.blobs.incoming.iterdir()) == []
    report = check(archive.engine, archive.blobs, grace=0, staging_grace=0)
    assert report.clean, report


def without_sop_class(tmp_path: Path) -> tuple[bytes, pydicom.Dataset]:
    """A CT whose data set and file meta both lack a SOP Class UID."""
    write_variant(load_template(), tmp_path / "no-class.dcm")
    ds = pydicom.dcmread(tmp_path / "no-class.dcm")
    del ds.SOPClassUID
    del ds.file_meta.MediaStorageSOPClassUID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(tmp_path / "no-class.dcm")
    return (tmp_path / "no-class.dcm").read_bytes(), ds


def test_every_answer_names_the_study_and_its_character_set(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    study_uid, paths = write_study(load_template(), tmp_path, series=1, instances=2)
    parts = [("application/dicom", p.read_bytes()) for p in paths]
    for url in ("/dicom-web/studies", f"/dicom-web/studies/{study_uid}"):
        module = stow(client, url, parts).json()
        assert module["00080005"] == UTF8
        assert module["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{study_uid}")


def test_instances_of_several_studies_leave_the_retrieve_url_empty(
    client: TestClient, tmp_path: Path
) -> None:
    template = load_template()
    for name in ("a.dcm", "b.dcm"):
        write_variant(template, tmp_path / name)
    a, b = (pydicom.dcmread(tmp_path / n) for n in ("a.dcm", "b.dcm"))
    assert a.StudyInstanceUID != b.StudyInstanceUID
    parts = [("application/dicom", (tmp_path / n).read_bytes()) for n in ("a.dcm", "b.dcm")]
    response = stow(client, "/dicom-web/studies", parts)
    assert response.status_code == 200
    module = response.json()
    assert module["00081190"] == {"vr": "UR"}  # Type 2: present, empty
    assert module["00080005"] == UTF8


def test_only_bad_syntax_is_400_and_names_what_is_readable(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    truncated = pydicom.dcmread(MR_TRUNCATED, stop_before_pixels=True)
    no_class, no_class_ds = without_sop_class(tmp_path)
    response = stow(
        client,
        "/dicom-web/studies",
        [
            ("application/dicom", b"this is not DICOM at all"),
            ("application/dicom", MR_TRUNCATED.read_bytes()),
            ("application/dicom", no_class),
            ("text/plain", b"hello"),
        ],
    )
    assert response.status_code == 400, response.text
    assert failed(response) == [
        (None, None, CANNOT_UNDERSTAND),
        (truncated.SOPClassUID, truncated.SOPInstanceUID, CANNOT_UNDERSTAND),
        (None, no_class_ds.SOPInstanceUID, CANNOT_UNDERSTAND),
        (None, None, NOT_DICOM_PART),
    ]
    module = response.json()
    assert module["00081190"] == {"vr": "UR"}
    assert module["00080005"] == UTF8
    assert_untouched(archive, 0)


def test_a_conflict_among_syntax_failures_is_409(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    write_variant(load_template(), tmp_path / "other.dcm")
    other = pydicom.dcmread(tmp_path / "other.dcm")
    study_uid = pydicom.dcmread(CT_SMALL).StudyInstanceUID
    response = stow(
        client,
        f"/dicom-web/studies/{study_uid}",
        [
            ("application/dicom", (tmp_path / "other.dcm").read_bytes()),
            ("application/dicom", b"\0" * 4096),
        ],
    )
    assert response.status_code == 409, response.text
    assert failed(response) == [
        (other.SOPClassUID, other.SOPInstanceUID, STUDY_MISMATCH),
        (None, None, CANNOT_UNDERSTAND),
    ]
    assert value(response.json(), "00081190").endswith(f"/dicom-web/studies/{study_uid}")
    assert_untouched(archive, 0)


@pytest.mark.parametrize("study", ["1.2.3.x", "1..2", "0" * 65, "%20", "%E6%97%A5"], ids=repr)
def test_a_study_in_the_path_that_is_no_uid_is_409_for_each_instance(
    client: TestClient, archive: Archive, study: str
) -> None:
    ct = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    response = stow(
        client, f"/dicom-web/studies/{study}", [("application/dicom", CT_SMALL.read_bytes())]
    )
    assert response.status_code == 409, response.text
    assert failed(response) == [(ct.SOPClassUID, ct.SOPInstanceUID, STUDY_MISMATCH)]
    assert response.json()["00081190"] == {"vr": "UR"}
    assert_untouched(archive, 0)


def test_wrong_study_beside_good_instances_is_202_and_keeps_the_good(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    template = load_template()
    study_uid, paths = write_study(template, tmp_path, series=1, instances=2)
    write_variant(template, tmp_path / "stranger.dcm")
    stranger = pydicom.dcmread(tmp_path / "stranger.dcm")
    parts = [("application/dicom", p.read_bytes()) for p in paths]
    parts.insert(1, ("application/dicom", (tmp_path / "stranger.dcm").read_bytes()))
    response = stow(client, f"/dicom-web/studies/{study_uid}", parts)
    assert response.status_code == 202
    assert failed(response) == [(stranger.SOPClassUID, stranger.SOPInstanceUID, STUDY_MISMATCH)]
    assert len(items(response.json(), "00081199")) == 2
    assert_untouched(archive, 2)
    found = client.get(f"/dicom-web/studies/{stranger.StudyInstanceUID}/series")
    assert found.status_code == 404


def test_dicomweb_client_sees_the_study_and_the_refusal(archive: Archive, tmp_path: Path) -> None:
    template = load_template()
    study_uid, paths = write_study(template, tmp_path, series=1, instances=1)
    write_variant(template, tmp_path / "stranger.dcm")
    stranger = pydicom.dcmread(tmp_path / "stranger.dcm")
    with LiveServer(archive) as server:
        web = DICOMwebClient(url=f"{server.base_url}/dicom-web")
        answer = web.store_instances([pydicom.dcmread(paths[0])], study_instance_uid=study_uid)
        assert answer.RetrieveURL == f"{server.base_url}/dicom-web/studies/{study_uid}"
        assert answer.SpecificCharacterSet == "ISO_IR 192"
        with pytest.raises(requests.HTTPError) as refused:
            web.store_instances([stranger], study_instance_uid=study_uid)
    assert_untouched(archive, 1)
    assert refused.value.response.status_code == 409
    module = refused.value.response.json()
    assert failed_items(module) == [(stranger.SOPClassUID, stranger.SOPInstanceUID, STUDY_MISMATCH)]


def _post(url: str, parts: list[tuple[str, bytes]]) -> httpx.Response:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
            for content_type, data in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    return httpx.post(url, content=body, headers=headers, timeout=60)


def _named(response: httpx.Response) -> list[tuple[Any, Any]]:
    """The instances Failed SOP items name (Orthanc gives a part that is not DICOM no
    item; we give it one with the reason alone)."""
    return [(c, s) for c, s, _reason in failed_items(response.json()) if c or s]


def test_orthanc_answers_the_same_statuses_and_names_the_same_instances(
    archive: Archive, orthanc: Orthanc
) -> None:
    """Orthanc 1.10's reasons differ (0110 where we say C409), its statuses and the
    instances its Failed SOP items name do not."""
    ct = CT_SMALL.read_bytes()
    cases = [
        ("/studies", [("application/dicom", ct)]),
        ("/studies/1.2.3", [("application/dicom", ct)]),
        ("/studies/1.2.3", [("application/dicom", ct), ("application/dicom", ct)]),
        ("/studies", [("application/dicom", b"not DICOM at all")]),
    ]
    with LiveServer(archive) as server:
        for path, parts in cases:
            ours = _post(f"{server.base_url}/dicom-web{path}", parts)
            theirs = _post(f"{orthanc.dicomweb_url}{path}", parts)
            assert ours.status_code == theirs.status_code, (path, ours.text, theirs.text)
            assert _named(ours) == _named(theirs), path
    assert_untouched(archive, 1)
