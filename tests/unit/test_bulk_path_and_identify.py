"""Pure pieces of STOW-RS answers and nested bulk data, as tables: the path a nested
BulkDataURI names, what a file's head says it is, and the STOW-RS status."""

from __future__ import annotations

import pytest

from pacsfhir.api.stow import status_of
from pacsfhir.dicom.bulk_path import BulkPath, parse_bulk_path
from pacsfhir.dicom.identify import Identity, identify_head
from pacsfhir.dicom.metadata import bulk_uri
from pacsfhir.errors import NotFound
from pacsfhir.store.base import Failure
from pacsfhir.store.local import (
    CANNOT_UNDERSTAND,
    NOT_DICOM_PART,
    OUT_OF_RESOURCES,
    PATIENT_MISMATCH,
    STUDY_MISMATCH,
)
from tests.conftest import PYDICOM_DATA

PATHS = [
    ("7FE00010", BulkPath((), 0x7FE00010)),
    ("54000100/0/54001010", BulkPath(((0x54000100, 0),), 0x54001010)),
    ("00880200/12/7fe00010", BulkPath(((0x00880200, 12),), 0x7FE00010)),
    ("0040A730/1/0040A730/0/00420011", BulkPath(((0x0040A730, 1), (0x0040A730, 0)), 0x00420011)),
]
NOT_PATHS = [
    "",
    "7FE0001",
    "7FE000100",
    "7FE0001G",
    "54000100/0",
    "54000100/01/54001010",
    "54000100/-1/54001010",
    "54000100/1000000/54001010",
    "54000100//54001010",
    "54000100/0/54001010/",
    "../metadata",
    "/".join(["00400275/0"] * 17 + ["00420011"]),  # deeper than MAX_DEPTH
]


@pytest.mark.parametrize(("text", "path"), PATHS)
def test_bulk_paths(text: str, path: BulkPath) -> None:
    assert parse_bulk_path(text) == path
    uri = bulk_uri(path.steps, path.tag)
    assert parse_bulk_path(uri.split("bulkdata/", 1)[1]) == path  # what metadata names


@pytest.mark.parametrize("text", NOT_PATHS)
def test_what_is_no_bulk_path_is_404(text: str) -> None:
    with pytest.raises(NotFound):
        parse_bulk_path(text)


CT = PYDICOM_DATA / "test_files" / "CT_small.dcm"
HEADS = [
    (b"", Identity()),
    (b"not DICOM at all", Identity()),
    (b"\0" * 4096, Identity()),
    (CT.read_bytes()[:440], Identity()),  # cut before (0008,0016)
    (CT.read_bytes()[:470], Identity()),  # cut inside its value
    (CT.read_bytes()[:474], Identity("1.2.840.10008.5.1.4.1.1.2", "")),  # before (0008,0018)
    (CT.read_bytes()[:500], Identity("1.2.840.10008.5.1.4.1.1.2", "")),  # inside its value
    (
        CT.read_bytes()[:1000],
        Identity("1.2.840.10008.5.1.4.1.1.2", "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"),
    ),
]


@pytest.mark.parametrize(
    ("head", "identity"), HEADS, ids=lambda v: f"{len(v)}" if isinstance(v, bytes) else ""
)
def test_what_a_files_head_says_it_is(head: bytes, identity: Identity) -> None:
    assert identify_head(head, len(head)) == identity


def failures(*reasons: int) -> list[Failure]:
    return [Failure("", "", r) for r in reasons]


STATUSES = [
    (1, [], 200),
    (1, failures(CANNOT_UNDERSTAND), 202),
    (1, failures(STUDY_MISMATCH), 202),
    (0, failures(CANNOT_UNDERSTAND, NOT_DICOM_PART), 400),
    (0, failures(STUDY_MISMATCH), 409),
    (0, failures(PATIENT_MISMATCH), 409),
    (0, failures(CANNOT_UNDERSTAND, STUDY_MISMATCH), 409),  # a mixture
    (0, failures(OUT_OF_RESOURCES), 409),
]


@pytest.mark.parametrize(("stored", "failed", "status"), STATUSES)
def test_stow_status(stored: int, failed: list[Failure], status: int) -> None:
    assert status_of([object()] * stored, failed) == status  # type: ignore[list-item]
