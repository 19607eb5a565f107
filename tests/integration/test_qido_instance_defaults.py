"""QIDO-RS instance answers as PS3.18 Table 10.6.3-5 says: Rows, Columns and Bits
Allocated by default, present when the instance has them; instances indexed before the
index kept them (revision 0008, NULL columns) are answered from their stored DICOM JSON;
a private attribute in includefield comes with its Private Creator (PS3.18 10.6.3.3).
Expected values are pydicom's reading of the files. Both backends; dicomweb-client
against uvicorn."""

from __future__ import annotations

from typing import Any

import pydicom
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from sqlalchemy import update

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.index.schema import instance
from tests.conftest import PYDICOM_DATA, LiveServer

TEST_FILES = PYDICOM_DATA / "test_files"
FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "test-SR.dcm", "rtplan.dcm"]
PIXEL_TAGS = {"00280010": "Rows", "00280011": "Columns", "00280100": "BitsAllocated"}


def expected(name: str) -> tuple[str, dict[str, Any]]:
    """The SOP Instance UID of a sample file and its Image Pixel attributes as QIDO-RS
    returns them (absent when the file has none)."""
    ds = pydicom.dcmread(TEST_FILES / name, stop_before_pixels=True)
    found = {
        tag: {"vr": "US", "Value": [int(ds[keyword].value)]}
        for tag, keyword in PIXEL_TAGS.items()
        if keyword in ds and ds[keyword].value
    }
    return str(ds.SOPInstanceUID), found


def pixel_attributes(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["00080018"]["Value"][0]: {t: r[t] for t in PIXEL_TAGS if t in r} for r in results}


def test_rows_columns_and_bits_allocated_by_default(archive: Archive) -> None:
    ingest([str(TEST_FILES / n) for n in FILES], archive.engine, archive.blobs, workers=1)
    wanted = dict(expected(n) for n in FILES)
    assert sum(1 for v in wanted.values() if v) == 3  # the images; SR and RT Plan have none
    with TestClient(create_app(archive.settings, archive)) as client:
        indexed = pixel_attributes(client.get("/dicom-web/instances").json())
        assert indexed == wanted
        with archive.engine.begin() as conn:  # as an index from before revision 0008
            conn.execute(update(instance).values(Rows=None, Columns=None, BitsAllocated=None))
        assert pixel_attributes(client.get("/dicom-web/instances").json()) == wanted


def test_a_private_attribute_comes_with_its_private_creator(archive: Archive) -> None:
    ingest([str(TEST_FILES / "CT_small.dcm")], archive.engine, archive.blobs, workers=1)
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm", stop_before_pixels=True)
    with LiveServer(archive) as server:
        web = DICOMwebClient(url=f"{server.base_url}/dicom-web")
        [found] = web.search_for_instances(fields=["00191002", "0043102B"])
        [studies] = web.search_for_studies(fields=["00191002"])
    assert found["00190010"] == {"vr": "LO", "Value": [ct[0x00190010].value]}
    assert found["00191002"]["Value"] == [ct[0x00191002].value]
    assert found["00430010"] == {"vr": "LO", "Value": [ct[0x00430010].value]}
    assert "0043102B" in found
    assert "00090010" not in found  # only the creators of what was asked for
    assert "00190010" not in studies  # instance level attributes
    assert "00191002" not in studies
