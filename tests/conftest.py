"""Shared fixtures: a fresh archive on SQLite and on PostgreSQL, the sample DICOM files,
an in-process client and a real uvicorn server."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.settings import Settings
from tests.support.authserver import AuthServer
from tests.support.dcmqrscp import Dcmqrscp, dcmtk_problem
from tests.support.orthanc import Orthanc, orthanc_problem

IN_CI = os.environ.get("CI") == "true"
POSTGRES_URL = os.environ.get(
    "PACSFHIR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PYDICOM_DATA = Path(pydicom.__file__).parent / "data"


def sample_paths() -> list[str]:
    """pydicom's test and character-set files, plus pydicom-data's when installed."""
    paths = [str(PYDICOM_DATA / "test_files"), str(PYDICOM_DATA / "charset_files")]
    try:
        import data_store  # pydicom-data

        paths.append(str(Path(data_store.__file__).parent / "data"))
    except ImportError:
        pass
    return paths


def skip_or_fail(reason: str) -> None:
    """On a user's machine a missing peer skips; under CI it is a failure."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def _postgres_available() -> str | None:
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}"


@pytest.fixture(scope="session")
def postgres_problem() -> str | None:
    return _postgres_available()


def _database_url(backend: str, tmp: Path, postgres_problem: str | None) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'index.db'}"
        return
    if postgres_problem:
        skip_or_fail(postgres_problem)
    schema = f"pf_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextlib.contextmanager
def archive_holding(
    backend: str,
    tmp: Path,
    postgres_problem: str | None,
    paths: Sequence[Path | str],
    workers: int = 1,
) -> Iterator[Archive]:
    """A fresh archive on ``backend`` (sqlite or postgresql) with every one of ``paths``
    stored, closed (and its PostgreSQL schema dropped) on leaving."""
    for url in _database_url(backend, tmp, postgres_problem):
        archive = Archive.open(make_settings(tmp, url))
        try:
            summary = ingest(
                [str(p) for p in paths], archive.engine, archive.blobs, workers=workers
            )
            assert summary.counts == {"stored": len(paths)}, summary
            yield archive
        finally:
            archive.close()


def make_settings(tmp: Path, database_url: str, **overrides: object) -> Settings:
    return Settings(
        data=str(tmp / "data"),
        database_url=database_url,
        base_url="http://pacsfhir.test",
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def archive(backend: str, tmp_path: Path, postgres_problem: str | None) -> Iterator[Archive]:
    """A fresh, empty archive on each backend."""
    for url in _database_url(backend, tmp_path, postgres_problem):
        opened = Archive.open(make_settings(tmp_path, url))
        try:
            yield opened
        finally:
            opened.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def sample_archive(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_problem: str | None,
) -> Iterator[Archive]:
    """An archive holding every sample file, shared by the read-only tests."""
    tmp = tmp_path_factory.mktemp(f"samples-{request.param}")
    for url in _database_url(str(request.param), tmp, postgres_problem):
        opened = Archive.open(make_settings(tmp, url))
        ingest(sample_paths(), opened.engine, opened.blobs, workers=1)
        try:
            yield opened
        finally:
            opened.close()


@pytest.fixture(scope="session")
def sample_client(sample_archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(sample_archive.settings, sample_archive)) as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """pacsfhir under a real uvicorn, in a thread, on a free loopback port, over an
    archive's index and blobs; ``changes`` adjust its settings, ``wrap`` its ASGI app."""

    def __init__(
        self,
        archive: Archive,
        wrap: Callable[[Any], Any] | None = None,
        **changes: Any,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.settings = archive.settings.replace(base_url=self.base_url, port=self.port, **changes)
        shared = Archive(self.settings, archive.engine, archive.blobs)  # own base URL
        app = create_app(self.settings, shared)
        config = uvicorn.Config(
            wrap(app) if wrap else app, host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(sample_archive: Archive) -> Iterator[LiveServer]:
    with LiveServer(sample_archive) as server:
        yield server


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A real Orthanc with the DICOMweb plugin, empty; tests store what they need."""
    problem = orthanc_problem()
    if problem:
        skip_or_fail(problem)
    with Orthanc(tmp_path_factory.mktemp("orthanc"), free_port(), free_port()) as server:
        yield server


@pytest.fixture
def qrscp(tmp_path: Path) -> Iterator[Dcmqrscp]:
    """A real, empty dcmtk dcmqrscp for one test: load it with ``.store(paths)``, kill it
    with ``.kill()``."""
    problem = dcmtk_problem()
    if problem:
        skip_or_fail(problem)
    with Dcmqrscp(tmp_path / "qrscp", free_port()) as server:
        yield server


# -- the test authorization server (OAuth 2.0 / OpenID Connect, tests/support/authserver.py)


@pytest.fixture(scope="session")
def auth_server() -> Iterator[AuthServer]:
    """A real authorization server on a free loopback port for the whole session:
    client credentials, authorization code + PKCE with a SMART patient picker,
    introspection (as ``auth_server.introspection_client_id`` / ``_secret``), revocation,
    JWT access tokens from its JWKS. Register the clients a test needs."""
    with AuthServer() as server:
        yield server


@pytest.fixture
def fresh_auth_server(auth_server: AuthServer) -> AuthServer:
    """The session's authorization server with its counters, delays and faults reset."""
    auth_server.reset()
    return auth_server


# -- the stand-in EHR FHIR server (Patient reads behind SMART Backend Services tokens)


@pytest.fixture
def ehr_server(auth_server: AuthServer) -> Iterator[Any]:
    """A stand-in EHR FHIR server (``tests.support.ehr_fhir.EhrFhirServer``) on a free
    loopback port, checking bearer tokens at the session's ``auth_server``. Add its
    patients, and a backend client with ``register_backend_client(auth_server, tmp_path)``."""
    from tests.support.ehr_fhir import EhrFhirServer

    with EhrFhirServer(auth_server) as server:
        yield server
