"""STOW-RS through the real stack: dicomweb-client against uvicorn, and raw multipart
bodies for the edge cases (partial failure, study mismatch, patient scope, bad bodies)."""

from __future__ import annotations

import http.client
import select as io_select
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.index.schema import instance
from pacsfhir.store.local import CANNOT_UNDERSTAND, NOT_DICOM_PART, PATIENT_MISMATCH, STUDY_MISMATCH
from tests.conftest import PYDICOM_DATA, LiveServer
from tests.support.dicom_factory import load_template, write_study, write_variant

TEST_FILES = PYDICOM_DATA / "test_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive.settings, archive)) as test_client:
        yield test_client


def multipart(parts: list[tuple[str, bytes]], boundary: str | None = None) -> tuple[str, bytes]:
    boundary = boundary or uuid.uuid4().hex
    pieces = [
        f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
        for content_type, data in parts
    ]
    body = b"".join([*pieces, f"--{boundary}--\r\n".encode()])
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


def stow(client: TestClient, url: str, parts: list[tuple[str, bytes]]) -> httpx.Response:
    content_type, body = multipart(parts)
    return client.post(url, content=body, headers={"Content-Type": content_type})


def sequence(module: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(module.get(tag, {}).get("Value", []))


def instance_count(archive: Archive) -> int:
    with archive.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(instance)).scalar_one())


def staged_files(archive: Archive) -> list[Path]:
    return list(archive.blobs.incoming.iterdir())


def test_dicomweb_client_stores_and_fhir_finds_it(archive: Archive) -> None:
    datasets = [pydicom.dcmread(TEST_FILES / name) for name in ("CT_small.dcm", "MR_small.dcm")]
    with LiveServer(archive) as server:
        web = DICOMwebClient(url=f"{server.base_url}/dicom-web")
        response = web.store_instances(datasets)
        assert len(response.ReferencedSOPSequence) == 2
        assert "FailedSOPSequence" not in response
        bundle = httpx.get(
            f"{server.base_url}/fhir/ImagingStudy",
            params={"identifier": f"urn:dicom:uid|urn:oid:{datasets[0].StudyInstanceUID}"},
        ).json()
    assert bundle["total"] == 1
    assert instance_count(archive) == 2


def test_stored_bytes_are_exactly_what_was_sent(client: TestClient, archive: Archive) -> None:
    data = (TEST_FILES / "JPEG2000.dcm").read_bytes()
    response = stow(client, "/dicom-web/studies", [("application/dicom", data)])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    (stored,) = sequence(response.json(), "00081199")
    sop_uid = stored["00081155"]["Value"][0]
    assert stored["00081190"]["Value"][0].endswith(f"/instances/{sop_uid}")
    with archive.engine.connect() as conn:
        blob = conn.execute(select(instance.c.blob)).scalar_one()
    assert archive.blobs.absolute(blob).read_bytes() == data
    again = stow(client, "/dicom-web/studies", [("application/dicom", data)])
    assert again.status_code == 200  # already present is success
    assert instance_count(archive) == 1


def test_partial_failure_is_202_with_reasons(client: TestClient, archive: Archive) -> None:
    good = (TEST_FILES / "CT_small.dcm").read_bytes()
    response = stow(
        client,
        "/dicom-web/studies",
        [
            ("application/dicom", good),
            ("application/dicom", b"this is not DICOM at all"),
            ("application/dicom", (TEST_FILES / "MR_truncated.dcm").read_bytes()),
            ("text/plain", b"hello"),
        ],
    )
    assert response.status_code == 202, response.text
    module = response.json()
    assert len(sequence(module, "00081199")) == 1
    reasons = [item["00081197"]["Value"][0] for item in sequence(module, "00081198")]
    assert reasons == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND, NOT_DICOM_PART]
    assert instance_count(archive) == 1
    assert staged_files(archive) == []


def test_study_mismatch_is_a_failure_for_that_instance(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    template = load_template()
    study_uid, paths = write_study(template, tmp_path, series=1, instances=2)
    other = write_variant(template, tmp_path / "other.dcm")
    parts = [("application/dicom", p.read_bytes()) for p in paths]
    response = stow(client, f"/dicom-web/studies/{study_uid}", parts)
    assert response.status_code == 200
    assert response.json()["00081190"]["Value"][0].endswith(f"/studies/{study_uid}")
    mismatch = stow(
        client,
        f"/dicom-web/studies/{study_uid}",
        [("application/dicom", (tmp_path / "other.dcm").read_bytes())],
    )
    assert mismatch.status_code == 409
    (failed,) = sequence(mismatch.json(), "00081198")
    assert failed["00081197"]["Value"] == [STUDY_MISMATCH]
    assert failed["00081155"]["Value"] == [other.SOPInstanceUID]
    assert instance_count(archive) == 2


def test_patient_scope_only_accepts_that_patients_instances(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    template = load_template()
    write_variant(template, tmp_path / "a.dcm", PatientID="PAT-A")
    write_variant(template, tmp_path / "b.dcm", PatientID="PAT-B")
    part_a = ("application/dicom", (tmp_path / "a.dcm").read_bytes())
    first = stow(client, "/dicom-web/studies", [part_a])
    assert first.status_code == 200
    bundle = client.get("/fhir/ImagingStudy", params={"patient.identifier": "PAT-A"}).json()
    patient_a = bundle["entry"][0]["resource"]["subject"]["reference"].split("/")[1]
    scoped = f"/fhir/Patient/{patient_a}/$wado-rs/studies"
    refused = stow(client, scoped, [("application/dicom", (tmp_path / "b.dcm").read_bytes())])
    assert refused.status_code == 409
    assert sequence(refused.json(), "00081198")[0]["00081197"]["Value"] == [PATIENT_MISMATCH]
    accepted = stow(client, scoped, [part_a])
    assert accepted.status_code == 200
    retrieve_url = sequence(accepted.json(), "00081199")[0]["00081190"]["Value"][0]
    assert f"/fhir/Patient/{patient_a}/$wado-rs/studies/" in retrieve_url
    assert instance_count(archive) == 1


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ("application/json", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ("multipart/related; type=application/dicom", 400),  # no boundary
    ],
)
def test_bad_media_types(client: TestClient, content_type: str, status: int) -> None:
    response = client.post(
        "/dicom-web/studies", content=b"x", headers={"Content-Type": content_type}
    )
    assert response.status_code == status
    assert "warning" in response.headers


def test_body_cut_short_stores_nothing(client: TestClient, archive: Archive) -> None:
    content_type, body = multipart(
        [("application/dicom", (TEST_FILES / "CT_small.dcm").read_bytes())]
    )
    response = client.post(
        "/dicom-web/studies", content=body[: len(body) // 2], headers={"Content-Type": content_type}
    )
    assert response.status_code == 400
    assert instance_count(archive) == 0
    assert staged_files(archive) == []
    assert client.get("/fhir/metadata").status_code == 200


def test_unacceptable_response_type_is_406(client: TestClient) -> None:
    content_type, body = multipart(
        [("application/dicom", (TEST_FILES / "CT_small.dcm").read_bytes())]
    )
    response = client.post(
        "/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+xml"},
    )
    assert response.status_code == 406


def _time_metadata(base_url: str, stop: threading.Event, times: list[float]) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as other:
        while not stop.is_set():
            started = time.perf_counter()
            assert other.get("/fhir/metadata").status_code == 200
            times.append(time.perf_counter() - started)
            time.sleep(0.01)


def test_many_tiny_parts_do_not_stall_other_requests(archive: Archive) -> None:
    content_type, body = multipart([("application/dicom", b"x")] * 10_000)
    times: list[float] = []
    stop = threading.Event()
    with LiveServer(archive) as server:
        timer = threading.Thread(target=_time_metadata, args=(server.base_url, stop, times))
        timer.start()
        try:
            response = httpx.post(
                f"{server.base_url}/dicom-web/studies",
                content=body,
                headers={"Content-Type": content_type},
                timeout=120,
            )
        finally:
            stop.set()
            timer.join()
    assert response.status_code == 400, response.status_code
    assert len(sequence(response.json(), "00081198")) == 10_000
    assert staged_files(archive) == []
    print(
        f"metadata during the upload: {len(times)} requests, "
        f"p50 {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
    )
    assert max(times) < 1.0


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def send_until_answered(
    server: LiveServer, headers: dict[str, str], chunks: Iterable[bytes]
) -> tuple[int, str, int]:
    """POST /dicom-web/studies over a raw socket: the head, then body chunks for as long as
    the server has not answered. Returns the status, the Warning and the bytes sent."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
        for chunk in chunks:
            if io_select.select([sock], [], [], 0)[0]:
                break  # the server has answered (or closed)
            try:
                sock.sendall(chunk)
            except OSError:  # reset after the server answered and closed
                break
            sent += len(chunk)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("warning") or "", sent


MIB = 1 << 20


def test_declared_length_over_the_limit_is_413_before_reading(archive: Archive) -> None:
    content_type, _ = multipart([])
    with LiveServer(archive, max_upload_mb=1) as server:
        status, warning, _ = send_until_answered(
            server, {"Content-Type": content_type, "Content-Length": str(MIB + 1)}, []
        )  # no byte of the body is sent: the answer must not wait for it
    assert status == 413
    assert "max_upload_mb" in warning
    assert "PACSFHIR_MAX_UPLOAD_MB" in warning
    assert staged_files(archive) == []


def test_a_streamed_body_past_the_limit_stops_being_read(archive: Archive) -> None:
    """Small parts, chunked (no Content-Length): reading stops once 1 MiB has come."""
    content_type, body = multipart([("application/dicom", b"x" * 100_000)] * 640)
    pieces = (_chunked(body[i : i + 64 * 1024]) for i in range(0, len(body), 64 * 1024))
    with LiveServer(archive, max_upload_mb=1) as server:
        status, warning, sent = send_until_answered(
            server, {"Content-Type": content_type, "Transfer-Encoding": "chunked"}, pieces
        )
        assert status == 413
        assert "max_upload_mb" in warning
        assert sent < len(body) // 2  # 64 MB offered; the server stopped reading long before
        assert httpx.get(f"{server.base_url}/fhir/metadata").status_code == 200
    assert staged_files(archive) == []
    assert instance_count(archive) == 0


def test_a_part_past_the_limit_is_413_and_nothing_stays_staged(archive: Archive) -> None:
    good = CT_SMALL.read_bytes()
    content_type, body = multipart(
        [("application/dicom", good), ("application/dicom", bytes(40 * MIB))]
    )
    pieces = (body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024))
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
    with LiveServer(archive, max_part_mb=1) as server:
        status, warning, sent = send_until_answered(server, headers, pieces)
    assert status == 413
    assert "part 2 exceeds 1 MiB" in warning
    assert "max_part_mb" in warning
    assert sent < len(body) // 2
    assert staged_files(archive) == []
    assert instance_count(archive) == 0  # the good part is not stored either


def test_parts_within_the_limits_are_stored(client: TestClient, archive: Archive) -> None:
    small = Archive(
        archive.settings.replace(max_upload_mb=1, max_part_mb=1), archive.engine, archive.blobs
    )
    with TestClient(create_app(small.settings, small)) as limited:
        response = stow(
            limited, "/dicom-web/studies", [("application/dicom", CT_SMALL.read_bytes())]
        )
    assert response.status_code == 200, response.text


def test_a_part_of_zeros_is_refused_without_parsing_it(
    client: TestClient, archive: Archive
) -> None:
    started = time.process_time()
    response = stow(client, "/dicom-web/studies", [("application/dicom", bytes(16 * MIB))])
    cpu = time.process_time() - started
    assert response.status_code == 400
    (failed,) = sequence(response.json(), "00081198")
    assert failed["00081197"]["Value"] == [CANNOT_UNDERSTAND]
    assert staged_files(archive) == []
    assert cpu < 2.0  # pydicom's forced parse took about 5.5 s of CPU on these 16 MB


@pytest.mark.parametrize("body", [b"", b"--b--\r\n"], ids=["zero-bytes", "closing-delimiter"])
def test_a_body_without_parts_is_400(client: TestClient, archive: Archive, body: bytes) -> None:
    response = client.post(
        "/dicom-web/studies",
        content=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    assert response.status_code == 400
    assert "no parts" in response.headers["warning"]


@pytest.mark.parametrize(
    "boundary",
    ["b" * 71, "b" * 300, "b" * 5000, "ends-in-space ", "semi@colon"],
    ids=["71", "300", "5000", "trailing-space", "at-sign"],
)
def test_a_boundary_rfc_2046_does_not_allow_is_400(client: TestClient, boundary: str) -> None:
    content_type, body = multipart(
        [("application/dicom", CT_SMALL.read_bytes())], boundary=boundary
    )
    content_type = content_type.replace(f"boundary={boundary}", f'boundary="{boundary}"')
    response = client.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400, response.text
    assert "boundary" in response.headers["warning"]


def test_a_boundary_of_70_characters_is_fine(client: TestClient) -> None:
    content_type, body = multipart([("application/dicom", CT_SMALL.read_bytes())], "b" * 70)
    response = client.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text


def test_a_non_ascii_study_in_the_url_is_a_failure_for_each_instance(
    client: TestClient, archive: Archive
) -> None:
    content_type, body = multipart([("application/dicom", CT_SMALL.read_bytes())])
    response = client.post(
        "/dicom-web/studies/%E6%97%A5", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 409
    (failed,) = sequence(response.json(), "00081198")
    assert failed["00081197"]["Value"] == [STUDY_MISMATCH]
    assert instance_count(archive) == 0


@pytest.mark.parametrize("part_type", [b"\xff", "日".encode()])
def test_a_non_ascii_part_type_is_415(client: TestClient, part_type: bytes) -> None:
    content_type = b'multipart/related; type="' + part_type + b'"; boundary=b'
    response = client.post(
        "/dicom-web/studies", content=b"--b--\r\n", headers={"Content-Type": content_type}
    )
    assert response.status_code == 415


def test_a_client_that_goes_away_mid_body_leaves_nothing_staged(archive: Archive) -> None:
    content_type, body = multipart(
        [("application/dicom", CT_SMALL.read_bytes()), ("application/dicom", bytes(4 * MIB))]
    )
    with LiveServer(archive) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            head = (
                "POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[: len(body) // 2])
            deadline = time.monotonic() + 10
            while not staged_files(archive) and time.monotonic() < deadline:
                time.sleep(0.01)  # the server is writing the second part
            assert staged_files(archive)
        deadline = time.monotonic() + 10
        while staged_files(archive) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{server.base_url}/fhir/metadata").status_code == 200
    assert staged_files(archive) == []
    assert instance_count(archive) == 0
