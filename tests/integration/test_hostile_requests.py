"""Issue 12, the edge of the app: development mode fenced wherever the app is built, error
reasons that quote hostile text still encode as headers, bounded POST _search bodies,
and 405 answers that say what is allowed. Real uvicorn where the server's own encoding
or process start is what is tested; the in-process client elsewhere."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pacsfhir.api import dicomweb, fhir, patients, stow
from pacsfhir.api.app import FHIR_ROUTERS, create_app
from pacsfhir.api.devmode import is_loopback
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.errors import ConfigurationError
from pacsfhir.index import writer
from pacsfhir.settings import Settings
from tests.conftest import LiveServer, free_port
from tests.integration.test_stow import multipart
from tests.support.dicom_factory import load_template, write_variant

# ---- development mode: the fence lives in create_app, whatever server runs it ----


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.10.0.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.10", False),
        ("::ffff:192.0.2.10", False),
        ("example.org", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("auth", "missing"),
    [("jwt", "jwt_issuer"), ("introspection", "introspection_url"), ("oauth", "not a token")],
)
def test_create_app_refuses_a_token_check_it_cannot_make(
    tmp_path: Path, auth: str, missing: str
) -> None:
    """A mode without its settings (or an unknown one) never serves without checks."""
    with pytest.raises(ConfigurationError, match=missing):
        create_app(Settings(data=str(tmp_path), auth=auth))


def test_create_app_refuses_development_mode_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="loopback only"):
        create_app(Settings(data=str(tmp_path), host="0.0.0.0"))


def _factory(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "pacsfhir.api.app:app_from_env", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_uvicorn_factory_with_jwt_refuses_to_start(tmp_path: Path) -> None:
    """The issue's reproduction: ``PACSFHIR_AUTH=jwt uvicorn --factory ...`` served with no
    token check at all; without an issuer to check tokens against it must not start."""
    process = _factory(
        {"PACSFHIR_AUTH": "jwt", "PACSFHIR_DATA": str(tmp_path)}, "--port", str(free_port())
    )
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert b"auth=jwt needs jwt_issuer" in err


async def _asgi_get(app: object, client: tuple[str, int], server: tuple[str, int]) -> int:
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))  # type: ignore[call-overload]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/fhir/ImagingStudy",
        "raw_path": b"/fhir/ImagingStudy",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"x")],
        "client": client,
        "server": server,
    }
    await app(scope, receive, send)  # type: ignore[operator]
    return statuses[0]


@pytest.mark.parametrize(
    ("client", "server", "status"),
    [
        (("127.0.0.1", 5000), ("127.0.0.1", 8080), 200),
        (("::1", 5000), ("::1", 8080), 200),
        (("::ffff:127.0.0.1", 5000), ("0.0.0.0", 8080), 403),  # bound everywhere: not loopback
        (("192.0.2.10", 5000), ("127.0.0.1", 8080), 403),  # e.g. uvicorn's proxy headers
        (("127.0.0.1", 5000), ("192.0.2.1", 8080), 403),  # arrived on a LAN interface
        (("2001:db8::5", 5000), ("2001:db8::1", 8080), 403),
    ],
)
def test_development_mode_serves_loopback_connections_only(
    archive: Archive, client: tuple[str, int], server: tuple[str, int], status: int
) -> None:
    app = create_app(archive.settings, archive)
    assert asyncio.run(_asgi_get(app, client, server)) == status


def test_development_mode_refusal_is_an_operation_outcome(archive: Archive) -> None:
    """As a server bound to every interface sees it: a connection from another host."""
    app = create_app(archive.settings, archive)

    async def get_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 50123))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://192.0.2.1") as client:
            paths = ("/fhir/ImagingStudy", "/dicom-web/studies", "/fhir/metadata")
            return [await client.get(path) for path in paths]

    for response in asyncio.run(get_all()):
        assert response.status_code == 403
        body = response.json()
        assert body["resourceType"] == "OperationOutcome"
        assert "loopback" in body["issue"][0]["diagnostics"]


def test_uvicorn_factory_bound_everywhere_still_serves_only_loopback(tmp_path: Path) -> None:
    """``PACSFHIR_AUTH=none uvicorn --factory ... --host 0.0.0.0``: the app cannot see the bind
    address, but a connection to the wildcard socket is refused unless both ends are loopback."""
    port = free_port()
    process = _factory({"PACSFHIR_DATA": str(tmp_path)}, "--host", "0.0.0.0", "--port", str(port))
    try:
        status = None
        for _ in range(200):
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=2).status_code
                break
            except httpx.TransportError:
                if process.poll() is not None:
                    break
                time.sleep(0.1)
        assert status == 200  # a loopback client on the wildcard socket: local end is 127.0.0.1
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert b"DEVELOPMENT MODE" in err


# ---- error reasons that quote hostile text (Warning header) ----

HOSTILE_DICOMWEB = [
    ("GET", "/dicom-web/studies/%E6%97%A5/metadata"),
    ("GET", "/dicom-web/studies?StudyDate=%E6%97%A5"),
    ("GET", "/dicom-web/studies?%E6%97%A5=1"),
    ("POST", "/dicom-web/studies/%E6%97%A5"),
    ("GET", "/dicom-web/studies?accept=a%01b"),
    ("GET", "/dicom-web/studies?%0D%0AX-Injected:%201=1"),
    ("GET", "/fhir/Patient/%E6%97%A5/$wado-rs/studies/%E6%97%A5"),
]


@pytest.mark.parametrize(("method", "path"), HOSTILE_DICOMWEB)
def test_dicomweb_errors_quoting_non_latin1_or_control_text_are_4xx(
    live_server: LiveServer, method: str, path: str
) -> None:
    """Through a real uvicorn: the reason went raw into the Warning header, which failed to
    encode (500) or carried control characters."""
    response = httpx.request(method, live_server.base_url + path, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    warning = response.headers["warning"]
    assert warning.startswith('299 pacsfhir "')
    assert all(0x20 <= ord(c) < 0x7F for c in warning), warning
    assert "x-injected" not in {k.lower() for k in response.headers}


def test_warning_text_keeps_the_reason_readable(sample_client: TestClient) -> None:
    response = sample_client.get("/dicom-web/studies/%E6%97%A5/metadata")
    assert response.status_code == 400
    assert "%E6%97%A5" in response.headers["warning"]
    assert "日" in response.json()["message"]  # the body carries the text itself


# ---- POST _search: bounded body, UTF-8 ----

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_post_search_body_over_the_limit_is_413_without_reading_it(
    live_server: LiveServer,
) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        chunk = b"patient.name=" + b"a" * (1 << 20)
        for _ in range(64):  # up to 64 MB if the server kept reading
            sent += len(chunk)
            yield chunk

    url = live_server.base_url + "/fhir/ImagingStudy/_search"
    try:
        response = httpx.post(url, content=body(), headers=FORM, timeout=30)
    except httpx.TransportError:
        pytest.fail("the server should answer 413, not drop the connection")
    assert response.status_code == 413, response.text
    assert response.json()["issue"][0]["code"] == "too-costly"


def test_post_search_declared_length_over_the_limit_is_413(sample_client: TestClient) -> None:
    response = sample_client.post(
        "/fhir/ImagingStudy/_search", content=b"a=" + b"b" * 20_000, headers=FORM
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    "body",
    [b"patient.name=\xff\xfe", b"patient.name=%FF%FE", b"%C3=1"],
)
def test_post_search_body_that_is_not_utf8_is_400(sample_client: TestClient, body: bytes) -> None:
    response = sample_client.post("/fhir/ImagingStudy/_search", content=body, headers=FORM)
    assert response.status_code == 400, response.text
    assert "UTF-8" in response.json()["issue"][0]["diagnostics"]


def test_get_search_percent_escape_that_is_not_utf8_is_400(sample_client: TestClient) -> None:
    response = sample_client.get("/fhir/ImagingStudy?patient.name=%FF")
    assert response.status_code == 400


def test_post_search_still_searches(sample_client: TestClient) -> None:
    got = sample_client.post("/fhir/ImagingStudy/_search", data={"modality": "CT"}).json()
    want = sample_client.get("/fhir/ImagingStudy?modality=CT").json()
    assert got["total"] == want["total"] > 0


# ---- 405 carries Allow (RFC 9110 15.5.6) ----


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/dicom-web/studies", "GET, POST"),
        ("DELETE", "/fhir/ImagingStudy", "GET"),
        ("POST", "/fhir/metadata", "GET"),
        ("PATCH", "/fhir/ImagingStudy/_search", "GET, POST"),  # GET: a read of id "_search"
        ("PUT", "/fhir/Patient/p1/$wado-rs/studies/1.2.3", "GET, POST"),
        ("DELETE", "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1", "GET"),
    ],
)
def test_405_names_every_allowed_method(
    sample_client: TestClient, method: str, path: str, allow: str
) -> None:
    response = sample_client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow


# ---- nothing blocking on the event loop ----


def test_only_known_route_handlers_are_coroutines() -> None:
    """A coroutine handler runs on the event loop: each one here awaits the body and hands
    its file and database work to a thread. A new one must do the same and join this list."""
    allowed = {
        fhir.search_post,
        fhir.search_compartment_post,
        patients.update_patient,
        stow.store_instances,
        stow.store_study_instances,
    }
    seen = set()
    for router in (*FHIR_ROUTERS, *dicomweb.ROUTERS):
        for route in router.routes:
            endpoint = getattr(route, "endpoint", None)
            if endpoint is not None and inspect.iscoroutinefunction(endpoint):
                seen.add(endpoint)
    assert seen <= allowed, seen - allowed


# ---- a writer that cannot get the index's write lock: 503 + Retry-After, nothing kept ----


def test_stow_waiting_past_the_write_lock_is_503_with_retry_after(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer (an ingest, a STOW in another process) holds the write lock longer
    than a STOW will wait: the answer is 503 with Retry-After, not a 500, nothing stays
    staged or placed, and the same request succeeds once the lock is free."""
    monkeypatch.setattr(writer, "WRITE_LOCK_WAIT_MS", 300)
    path = tmp_path / "one.dcm"
    write_variant(load_template(), path)
    content_type, body = multipart([("application/dicom", path.read_bytes())])
    with TestClient(create_app(archive.settings, archive)) as client:
        with archive.engine.connect() as holder:
            holder.begin()
            writer.lock_index(holder)
            busy = client.post(
                "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
            )
            holder.rollback()
        assert busy.status_code == 503, busy.text
        assert busy.headers["retry-after"].isdigit()
        assert "busy" in busy.headers["warning"]
        assert list(archive.blobs.incoming.iterdir()) == []
        assert [p for p in archive.blobs.root.rglob("*.dcm")] == []
        again = client.post(
            "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
        )
    assert again.status_code == 200, again.text


# ---- NUL: no id, UID or value holds one, and PostgreSQL text cannot ----

NUL_REQUESTS = [
    ("GET", "/fhir/ImagingStudy?patient.name=%00"),
    ("GET", "/fhir/ImagingStudy?identifier=a%00b"),
    ("GET", "/fhir/ImagingStudy?_id=a%00b"),
    ("GET", "/fhir/ImagingStudy/1%002"),
    ("GET", "/fhir/Patient/%00"),
    ("GET", "/fhir/Patient/%00/ImagingStudy"),
    ("GET", "/dicom-web/studies?PatientName=a%00"),
    ("GET", "/dicom-web/studies/1.2%00/metadata"),
    ("GET", "/fhir/Patient/a%00/$wado-rs/studies"),
    ("POST", "/fhir/ImagingStudy/_search?modality=%00"),
]


@pytest.mark.parametrize(("method", "path"), NUL_REQUESTS)
def test_nul_in_path_or_query_is_400(archive: Archive, method: str, path: str) -> None:
    """On PostgreSQL these reached a query and failed there (DataError, 500)."""
    with TestClient(create_app(archive.settings, archive)) as client:
        response = client.request(method, path)
    assert response.status_code == 400, response.text
    assert "NUL" in response.text


def test_nul_in_a_post_search_body_is_400(archive: Archive) -> None:
    with TestClient(create_app(archive.settings, archive)) as client:
        response = client.post("/fhir/ImagingStudy/_search", data={"patient.name": "a\0b"})
    assert response.status_code == 400, response.text


def test_nul_inside_a_dicom_value_is_indexed_as_a_replacement_character(
    archive: Archive, tmp_path: Path
) -> None:
    """A NUL inside a text value failed the whole batch on PostgreSQL (every file of it
    lost); the index now shows it as U+FFFD and keeps the file byte for byte."""
    folder = tmp_path / "in"
    write_variant(load_template(), folder / "nul.dcm", StudyDescription="head\0neck")
    write_variant(load_template(), folder / "plain.dcm")
    summary = ingest([str(folder)], archive.engine, archive.blobs, workers=1)
    assert summary.counts["stored"] == 2, summary.examples
    with TestClient(create_app(archive.settings, archive)) as client:
        bundle = client.get("/fhir/ImagingStudy").json()
    descriptions = sorted(e["resource"].get("description", "") for e in bundle["entry"])
    assert "head\ufffdneck" in descriptions


def test_a_frame_count_no_column_holds_is_rejected_alone(archive: Archive, tmp_path: Path) -> None:
    """NumberOfFrames 99999999999 (a valid IS) overflowed PostgreSQL's integer and failed
    the whole batch; it is now that file's rejection, and the others are stored."""
    folder = tmp_path / "in"
    write_variant(load_template(), folder / "huge.dcm", NumberOfFrames="99999999999")
    write_variant(load_template(), folder / "plain.dcm")
    summary = ingest([str(folder)], archive.engine, archive.blobs, workers=1)
    assert summary.counts["stored"] == 1, summary.examples
    assert summary.rejected == {"malformed": 1}
