"""Retrieval from an upstream: WADO-RS from a DICOMweb upstream, streamed as it arrives
(the bytes Orthanc stored come through unchanged, part by part), and C-GET from dcmtk's
dcmqrscp; an upstream killed mid-transfer is an error, never a short answer passed off
as whole."""

from __future__ import annotations

import hashlib
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacsfhir.upstream.config import parse_upstream
from pacsfhir.upstream.dicomweb import DicomwebUpstreamClient
from pacsfhir.upstream.dimse import DimseUpstreamClient
from pacsfhir.upstream.errors import UpstreamError
from tests.conftest import free_port, skip_or_fail
from tests.support.dcmqrscp import Dcmqrscp
from tests.support.dicom_factory import load_template, write_study, write_variant
from tests.support.mime import body_parts
from tests.support.orthanc import Orthanc, orthanc_problem

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def orthanc_with(tmp_path: Path) -> Iterator[Orthanc]:
    problem = orthanc_problem()
    if problem:
        skip_or_fail(problem)
    with Orthanc(tmp_path / "orthanc", free_port(), free_port()) as server:
        yield server


def test_a_study_streams_through_byte_for_byte(orthanc_with: Orthanc, tmp_path: Path) -> None:
    study_uid, paths = write_study(load_template(), tmp_path / "dicom", series=2, instances=3)
    assert orthanc_with.store(paths) == len(paths)
    client = DicomwebUpstreamClient(parse_upstream(orthanc_with.dicomweb_url, name="orthanc"))
    try:
        with client.retrieve(f"/studies/{study_uid}", DICOM_ANY) as answer:
            assert answer.status == 200
            assert answer.content_type.startswith("multipart/related")
            chunks = list(answer.chunks)
        received = body_parts(answer.content_type, b"".join(chunks))
        expected = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
        assert {hashlib.sha256(part).hexdigest() for part in received} == expected
        with client.retrieve("/studies/1.2.3.999", DICOM_ANY) as missing:
            assert missing.status == 404
    finally:
        client.close()


def test_an_upstream_killed_mid_transfer_is_an_error(orthanc_with: Orthanc, tmp_path: Path) -> None:
    template = load_template()
    frames, side = 8, 2048  # 64 MiB of noise: more than socket buffers hold, and gzip shrinks
    big = template.copy()
    big.Rows = big.Columns = side
    big.NumberOfFrames = frames
    noise = np.random.default_rng(7).integers(0, 4096, (frames, side, side), dtype=np.uint16)
    big.PixelData = noise.tobytes()
    path = tmp_path / "big.dcm"
    ds = write_variant(big, path)
    assert orthanc_with.store([path]) == 1
    client = DicomwebUpstreamClient(
        parse_upstream(orthanc_with.dicomweb_url, name="orthanc", timeout=20)
    )
    received: list[int] = []

    def read_while_orthanc_dies() -> None:
        with client.retrieve(f"/studies/{ds.StudyInstanceUID}", DICOM_ANY) as answer:
            assert answer.status == 200
            for chunk in answer.chunks:
                if not received:
                    assert orthanc_with.process is not None
                    os.kill(orthanc_with.process.pid, signal.SIGKILL)
                received.append(len(chunk))

    try:
        with pytest.raises(UpstreamError, match="mid-transfer"):
            read_while_orthanc_dies()
        assert 0 < sum(received) < frames * side * side * 2
    finally:
        client.close()


def test_c_get_brings_a_study_as_the_scp_holds_it(qrscp: Dcmqrscp, tmp_path: Path) -> None:
    study_uid, paths = write_study(load_template(), tmp_path / "dicom", series=2, instances=3)
    qrscp.store(paths)
    client = DimseUpstreamClient(parse_upstream(f"dimse://{qrscp.ae_title}@127.0.0.1:{qrscp.port}"))
    kept: list[bytes] = []
    assert client.get_study(study_uid, kept.append) == len(paths)
    received = {pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID for data in kept}
    assert received == {pydicom.dcmread(p).SOPInstanceUID for p in paths}


def test_an_scp_killed_mid_c_get_is_an_error(qrscp: Dcmqrscp, tmp_path: Path) -> None:
    study_uid, paths = write_study(load_template(), tmp_path / "dicom", series=4, instances=10)
    qrscp.store(paths)
    client = DimseUpstreamClient(
        parse_upstream(f"dimse://{qrscp.ae_title}@127.0.0.1:{qrscp.port}", timeout=5)
    )
    kept: list[bytes] = []

    def keep_then_kill(data: bytes) -> None:
        kept.append(data)
        if len(kept) == 1:
            qrscp.kill()

    with pytest.raises(UpstreamError):
        client.get_study(study_uid, keep_then_kill)
    assert len(kept) < len(paths)
