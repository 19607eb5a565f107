"""Two ``pacsfhir serve`` processes over one index (PostgreSQL, and SQLite), both in front
of one Orthanc: the same search sent to both at once is one upstream job, run by one of
them, and both answer it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from pacsfhir.archive import Archive
from pacsfhir.index.schema import job
from tests.conftest import free_port
from tests.support.dicom_factory import load_template, write_study
from tests.support.orthanc import Orthanc
from tests.support.processes import wait_for_http
from tests.support.threads import run_together

PATIENT = f"GWP-{uuid.uuid4().hex[:8]}"  # the session's Orthanc is shared: our own patient


@pytest.fixture
def two_servers(archive: Archive, orthanc: Orthanc, tmp_path: Path) -> Iterator[list[str]]:
    if not _stored(orthanc):
        _uid, paths = write_study(
            load_template(), tmp_path / "dicom", series=2, instances=5, PatientID=PATIENT
        )
        assert orthanc.store(paths) == len(paths)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PACSFHIR_")},
        "PACSFHIR_DATA": str(archive.settings.data_dir),
        "PACSFHIR_DATABASE_URL": archive.settings.index_url,
        "PACSFHIR_UPSTREAM": orthanc.dicomweb_url,
        "PACSFHIR_UPSTREAM_WAIT_SECONDS": "30",
    }
    processes, bases = [], []
    try:
        for _ in range(2):
            port = free_port()
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "pacsfhir", "serve", "--port", str(port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            )
            bases.append(f"http://127.0.0.1:{port}")
        for base, process in zip(bases, processes, strict=True):
            wait_for_http(f"{base}/fhir/metadata", process)
        yield bases
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.communicate(timeout=30)


def _stored(orthanc: Orthanc) -> bool:
    answer = httpx.get(f"{orthanc.dicomweb_url}/studies", params={"PatientID": PATIENT})
    return answer.status_code == 200 and bool(answer.json())


def test_two_processes_share_one_upstream_job(two_servers: list[str], archive: Archive) -> None:
    def search(n: int) -> dict[str, object]:
        base = two_servers[n % 2]
        answer = httpx.get(f"{base}/fhir/ImagingStudy?patient.identifier={PATIENT}", timeout=60)
        assert answer.status_code == 200, answer.text
        return {"total": answer.json()["total"]}

    counter = iter(range(8))
    answers = run_together(8, lambda: search(next(counter)))
    assert answers == [{"total": 1}] * 8
    with archive.engine.connect() as conn:
        runs = conn.execute(select(func.sum(job.c.attempts))).scalar_one()
        owners = conn.execute(select(func.count(func.distinct(job.c.key)))).scalar_one()
    assert (runs, owners) == (1, 1)
