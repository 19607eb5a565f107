"""WADO-RS from a DICOMweb upstream, streamed as it arrives: the bytes Orthanc stored come
through unchanged, part by part; an upstream killed mid-transfer is an error, never a
short answer passed off as whole."""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pacsfhir.upstream.config import parse_upstream
from pacsfhir.upstream.dicomweb import DicomwebUpstreamClient
from pacsfhir.upstream.errors import UpstreamError
from tests.conftest import free_port, skip_or_fail
from tests.support.dicom_factory import load_template, write_study, write_variant
from tests.support.orthanc import Orthanc, orthanc_problem

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def orthanc_with(tmp_path: Path) -> Iterator[Orthanc]:
    problem = orthanc_problem()
    if problem:
        skip_or_fail(problem)
    with Orthanc(tmp_path / "orthanc", free_port(), free_port()) as server:
        yield server


def _parts(content_type: str, body: bytes) -> list[bytes]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    found = []
    for part in message.iter_parts():
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        found.append(data)
    return found


def test_a_study_streams_through_byte_for_byte(orthanc_with: Orthanc, tmp_path: Path) -> None:
    study_uid, paths = write_study(load_template(), tmp_path / "dicom", series=2, instances=3)
    assert orthanc_with.store(paths) == len(paths)
    client = DicomwebUpstreamClient(parse_upstream(orthanc_with.dicomweb_url, name="orthanc"))
    try:
        with client.retrieve(f"/studies/{study_uid}", DICOM_ANY) as answer:
            assert answer.status == 200
            assert answer.content_type.startswith("multipart/related")
            chunks = list(answer.chunks)
        received = _parts(answer.content_type, b"".join(chunks))
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
