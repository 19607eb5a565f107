"""Attribute values longer than the index keeps (issue 12, item 9), on SQLite and
PostgreSQL: the index keeps what ``dicom.value_caps`` says, FHIR and QIDO answer with
that, and the stored file (WADO-RS, its metadata) stays whole, byte for byte."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.dicom.value_caps import kept_length
from pacsfhir.index.schema import patient
from tests.support.dicom_factory import load_template

NAME = "Doe^" + "x" * 10_000_000  # 10 MB
PN_PART = "Doe^" + "x" * (kept_length("PatientName") - 4)


def _write(path: Path, implicit: bool) -> tuple[str, str, str]:
    """CT_small with the 10 MB name; explicit VR files hold it as UN (past 64 KB)."""
    ds = load_template()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    with warnings.catch_warnings():  # a name longer than PN allows, on purpose
        warnings.simplefilter("ignore")
        ds.PatientName = NAME
        ds.save_as(path, enforce_file_format=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit-PN", "explicit-UN"])
def test_a_10_mb_patient_name_is_kept_short_in_answers_and_whole_in_the_file(
    archive: Archive, tmp_path: Path, implicit: bool
) -> None:
    path = tmp_path / "in" / "long-name.dcm"
    path.parent.mkdir()
    study, series, sop = _write(path, implicit)
    report = ingest([str(path.parent)], archive.engine, archive.blobs, workers=1)
    assert report.counts["stored"] == 1, report
    with archive.engine.connect() as conn:
        (kept,) = conn.execute(select(patient.c.PatientName)).scalars().all()
    assert kept == PN_PART
    with TestClient(create_app(archive.settings, archive)) as client:
        fhir = client.get("/fhir/ImagingStudy?_include=ImagingStudy:subject")
        assert fhir.status_code == 200, fhir.text[:300]
        assert len(fhir.content) < 20_000
        names = [
            e["resource"]["name"][0]
            for e in fhir.json()["entry"]
            if e["resource"]["resourceType"] == "Patient"
        ]
        assert names[0]["family"] == "Doe"
        assert len(names[0]["given"][0]) < 1000
        qido = client.get("/dicom-web/studies", params={"includefield": "all"})
        assert qido.status_code == 200, qido.text[:300]
        assert len(qido.content) < 20_000
        assert qido.json()[0]["00100010"]["Value"][0]["Alphabetic"] == PN_PART
        instance_url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
        dicom = client.get(instance_url, headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert dicom.status_code == 200
        assert dicom.content == path.read_bytes()
        if implicit:  # PS3.18 8.7.3: Explicit VR Little Endian, the long PN as UN (8.7.3.4)
            converted = client.get(instance_url, headers={"Accept": "application/dicom"})
            assert converted.status_code == 200
            written = pydicom.dcmread(io.BytesIO(converted.content))
            assert written.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert written["PatientName"].VR == "UN"
            assert written["PatientName"].value == NAME.encode()
        metadata = client.get(f"/dicom-web/studies/{study}/metadata")
        assert metadata.status_code == 200
        (instance,) = metadata.json()
        if implicit:
            assert instance["00100010"]["Value"][0]["Alphabetic"] == NAME
        else:  # UN: bulk data, which serves the file's whole value
            uri = instance["00100010"]["BulkDataURI"]
            bulk = client.get(
                uri, headers={"Accept": "multipart/related; type=application/octet-stream"}
            )
            assert bulk.status_code == 200, bulk.text[:300]
            assert NAME.encode() in bulk.content
