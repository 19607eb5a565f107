"""Kill -9, repeated, during ``pacsfhir ingest`` and during STOW-RS into ``pacsfhir
serve``, on SQLite and PostgreSQL: every instance acknowledged before the kill (committed
to the index; a 200 to its STOW) is retrievable after a restart, byte for byte, no index
row lacks its blob, and ``pacsfhir check --repair`` then leaves the archive clean (the
in-flight batch's orphans and staged files are what it removes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from pacsfhir.archive import Archive
from pacsfhir.consistency import check
from pacsfhir.index.schema import instance
from tests.conftest import free_port
from tests.integration.test_stow import multipart
from tests.support.dicom_factory import load_template, write_variant

ROUNDS = 2


@dataclass(frozen=True)
class Source:
    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str


def write_sources(folder: Path, studies: int, per_study: int) -> dict[str, Source]:
    """SOP Instance UID -> its file, ``studies`` studies of ``per_study`` instances."""
    template = load_template()
    sources = {}
    for s in range(studies):
        first = None
        for i in range(per_study):
            path = folder / f"{s:03d}" / f"{i:03d}.dcm"
            ds = write_variant(
                template,
                path,
                study_uid=first.StudyInstanceUID if first else None,
                series_uid=first.SeriesInstanceUID if first else None,
                PatientID=f"CRASH{s % 3}",
            )
            first = first or ds
            sources[ds.SOPInstanceUID] = Source(
                path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            )
    return sources


@pytest.fixture(scope="module")
def ingest_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    """Written once, ingested into each backend's own archive."""
    return write_sources(tmp_path_factory.mktemp("ingest"), studies=6, per_study=25)


@pytest.fixture(scope="module")
def stow_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    return write_sources(tmp_path_factory.mktemp("stow"), studies=3, per_study=20)


def committed(archive: Archive) -> dict[str, str]:
    """SOP Instance UID -> blob, of what the index holds now."""
    with archive.engine.connect() as conn:
        rows = conn.execute(select(instance.c.SOPInstanceUID, instance.c.blob))
        return {sop_uid: blob for sop_uid, blob in rows}


def env_of(archive: Archive, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("PACSFHIR_")},
        "PACSFHIR_DATA": archive.settings.data,
        "PACSFHIR_DATABASE_URL": archive.settings.index_url,
        **extra,
    }


def kill(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the process and its workers, at once
    process.wait(timeout=30)


def assert_recovered(archive: Archive, acknowledged: set[str], sources: dict[str, Source]) -> None:
    """After a restart: each acknowledged instance there byte for byte, nothing missing or
    damaged, and check --repair clean."""
    restarted = Archive.open(archive.settings)
    try:
        rows = committed(restarted)
        for sop_uid in acknowledged:
            stored = restarted.blobs.absolute(rows[sop_uid]).read_bytes()
            assert stored == sources[sop_uid].path.read_bytes()
        found = check(restarted.engine, restarted.blobs, verify_hash=True)
        assert (found.missing_blobs, found.damaged_blobs) == ([], [])
        repaired = check(restarted.engine, restarted.blobs, repair=True, grace=0, staging_grace=0)
        assert repaired.clean, repaired
    finally:
        restarted.close()


@pytest.mark.slow
def test_kill_during_ingest_loses_nothing_acknowledged(
    archive: Archive, ingest_sources: dict[str, Source]
) -> None:
    sources = ingest_sources
    folder = str(next(iter(sources.values())).path.parent.parent)
    env = env_of(archive, PACSFHIR_INGEST_BATCH="8")
    acknowledged: set[str] = set()
    for round_ in range(ROUNDS):
        process = subprocess.Popen(
            [sys.executable, "-m", "pacsfhir", "ingest", "--workers", "2", folder],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        target = len(acknowledged) + 24 + 16 * round_
        deadline = time.monotonic() + 60
        seen = committed(archive)
        while len(seen) < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
            seen = committed(archive)
        acknowledged |= set(seen)
        assert process.poll() is None, "the kill must land mid-ingest"
        kill(process)
        assert len(acknowledged) < len(sources)
        assert_recovered(archive, acknowledged, sources)


@contextmanager
def serving(archive: Archive) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``pacsfhir serve`` in a subprocess on a free port, up; killed on the way out if
    the test has not killed it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pacsfhir", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env_of(archive),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "pacsfhir serve exited"
            try:
                if httpx.get(f"{base}/fhir/metadata", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "pacsfhir serve did not start"
            time.sleep(0.05)
        yield process, base
    finally:
        if process.poll() is None:
            kill(process)


def stow_until_killed(base: str, queue: list[Source], acknowledged: dict[str, Source]) -> None:
    """Send one instance per STOW, in order, until the server is gone; record each 200."""
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    source = queue.pop(0)
                content_type, body = multipart([("application/dicom", source.path.read_bytes())])
                try:
                    response = http.post(
                        f"{base}/dicom-web/studies",
                        content=body,
                        headers={"Content-Type": content_type},
                    )
                except httpx.TransportError:
                    return
                if response.status_code == 200:
                    with lock:
                        acknowledged[source.sop_uid] = source

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


def retrieve(base: str, source: Source) -> bytes:
    url = (
        f"{base}/dicom-web/studies/{source.study_uid}/series/{source.series_uid}"
        f"/instances/{source.sop_uid}"
    )
    response = httpx.get(url, headers={"Accept": "application/dicom"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


@pytest.mark.slow
def test_kill_during_stow_loses_nothing_acknowledged(
    archive: Archive, stow_sources: dict[str, Source]
) -> None:
    sources = stow_sources
    queue = list(sources.values())
    acknowledged: dict[str, Source] = {}
    for round_ in range(ROUNDS):
        with serving(archive) as (process, base):
            for source in acknowledged.values():  # what the last server acknowledged
                assert retrieve(base, source) == source.path.read_bytes()
            before = len(acknowledged)
            sender = threading.Thread(target=stow_until_killed, args=(base, queue, acknowledged))
            sender.start()
            deadline = time.monotonic() + 60
            while len(acknowledged) < before + 10 + 5 * round_ and time.monotonic() < deadline:
                time.sleep(0.005)
            kill(process)  # mid-stream: the clients are still sending
            sender.join(timeout=60)
        assert queue, "the kill must land mid-stream"
        assert_recovered(archive, set(acknowledged), sources)
    with serving(archive) as (_process, base):
        for source in acknowledged.values():
            assert retrieve(base, source) == source.path.read_bytes()
