"""Concurrent writers of one instance, study or patient on one index, on SQLite and
PostgreSQL: threads calling ``commit_batch`` (as STOW-RS does from its worker threads),
several ``pacsfhir ingest`` processes, and STOW-RS clients over real HTTP. Every writer
gets stored / already present / replaced, the index holds one row per SOP Instance UID,
and the blobs on disk are exactly those the index references."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
from sqlalchemy import select

from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import Outcome, Result, commit_batch
from pacsfhir.dicom.prepare import Prepared, prepare_file
from pacsfhir.index.schema import instance, study
from tests.conftest import LiveServer
from tests.integration.test_stow import multipart
from tests.support.archive_checks import assert_consistent, index_counts
from tests.support.dicom_factory import load_template, write_new_version, write_variant

WRITERS = 4
ROUNDS = 5

T = TypeVar("T")


def at_once(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run the calls in threads released together; each one's result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[T | BaseException] = [RuntimeError("did not run")] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except BaseException as exc:  # the test reports it
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def commit_each_at_once(archive: Archive, sources: list[Path]) -> list[Outcome]:
    """Each source staged and read by its own writer, then all committed at once; the
    outcomes, after checking that no writer raised."""
    prepared = []
    for source in sources:
        item = prepare_file(str(source), str(archive.blobs.root))
        assert isinstance(item, Prepared)
        prepared.append(item)

    def writer(item: Prepared) -> Callable[[], list[Result]]:
        return lambda: commit_batch(archive.engine, archive.blobs, [item])

    outcomes = []
    for result in at_once([writer(item) for item in prepared]):
        assert not isinstance(result, BaseException), repr(result)
        (one,) = result
        outcomes.append(one.outcome)
    return outcomes


def test_writers_of_the_same_bytes_get_one_stored_and_the_rest_already_present(
    archive: Archive, tmp_path: Path
) -> None:
    template = load_template()
    for n in range(ROUNDS):
        source = tmp_path / f"{n}.dcm"
        write_variant(template, source)
        outcomes = commit_each_at_once(archive, [source] * WRITERS)
        assert Counter(outcomes) == {Outcome.STORED: 1, Outcome.ALREADY_PRESENT: WRITERS - 1}
        assert_consistent(archive)
    assert index_counts(archive)[2] == ROUNDS


def test_writers_of_different_bytes_get_one_stored_and_the_rest_replaced(
    archive: Archive, tmp_path: Path
) -> None:
    template = load_template()
    for n in range(ROUNDS):
        original = write_variant(template, tmp_path / f"{n}-0.dcm", StudyDescription="v0")
        sources = [tmp_path / f"{n}-0.dcm"]
        for version in range(1, WRITERS):
            sources.append(tmp_path / f"{n}-{version}.dcm")
            write_new_version(template, sources[-1], original, StudyDescription=f"v{version}")
        outcomes = commit_each_at_once(archive, sources)
        assert Counter(outcomes) == {Outcome.STORED: 1, Outcome.REPLACED: WRITERS - 1}
        with archive.engine.connect() as conn:
            kept = conn.execute(
                select(instance.c.sha256).where(
                    instance.c.SOPInstanceUID == original.SOPInstanceUID
                )
            ).scalar_one()
        assert kept in {hashlib.sha256(s.read_bytes()).hexdigest() for s in sources}
        assert_consistent(archive)  # the replaced versions' blobs are gone


def test_writers_of_one_study_and_patient_each_store_their_instance(
    archive: Archive, tmp_path: Path
) -> None:
    template = load_template()
    for n in range(ROUNDS):
        first = write_variant(template, tmp_path / f"{n}-0.dcm", PatientID=f"P{n}")
        sources = [tmp_path / f"{n}-0.dcm"]
        for i in range(1, WRITERS):
            sources.append(tmp_path / f"{n}-{i}.dcm")
            series = first.SeriesInstanceUID if i % 2 else None
            write_variant(
                template,
                sources[-1],
                study_uid=first.StudyInstanceUID,
                series_uid=series,
                PatientID=f"P{n}",
            )
        outcomes = commit_each_at_once(archive, sources)
        assert outcomes == [Outcome.STORED] * WRITERS
        with archive.engine.connect() as conn:
            count = conn.execute(
                select(study.c.number_of_instances).where(
                    study.c.StudyInstanceUID == first.StudyInstanceUID
                )
            ).scalar_one()
        assert count == WRITERS
        assert_consistent(archive)
    assert index_counts(archive)[0] == ROUNDS


def _summary_counts(stderr: str) -> Counter[str]:
    """stored / replaced / already present / rejected from the CLI's summary table."""
    counts: Counter[str] = Counter()
    for outcome in ("stored", "replaced", "already present", "rejected"):
        found = re.search(rf"^\W*{outcome}\W+(\d+)", stderr, re.MULTILINE)
        assert found, stderr
        counts[outcome] = int(found.group(1))
    return counts


def test_ingest_processes_on_one_index_each_store_or_find_every_file(
    archive: Archive, tmp_path: Path
) -> None:
    template = load_template()
    first = write_variant(template, tmp_path / "in" / "000.dcm", PatientID="SHARED")
    for i in range(1, 12):
        write_variant(
            template,
            tmp_path / "in" / f"{i:03d}.dcm",
            study_uid=first.StudyInstanceUID,
            series_uid=first.SeriesInstanceUID,
            PatientID="SHARED",
        )
    env = {
        **os.environ,
        "PACSFHIR_DATA": archive.settings.data,
        "PACSFHIR_DATABASE_URL": archive.settings.index_url,
        "PACSFHIR_INGEST_BATCH": "2",
        "COLUMNS": "120",
    }
    command = [sys.executable, "-m", "pacsfhir", "ingest", "--workers", "1", str(tmp_path / "in")]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    totals: Counter[str] = Counter()
    for process in processes:
        _out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
        totals += _summary_counts(err.decode())
    assert totals == {"stored": 12, "already present": 24}
    assert index_counts(archive) == (1, 1, 12)
    assert_consistent(archive)


def test_stow_clients_sending_one_instance_at_once_all_get_200(
    archive: Archive, tmp_path: Path
) -> None:
    """Issue 12 item 8: 4 clients, 5 rounds, the same instance: was 7/20 500s."""
    template = load_template()
    with LiveServer(archive) as server, httpx.Client(timeout=60) as client:
        for n in range(ROUNDS):
            write_variant(template, tmp_path / f"{n}.dcm")
            content_type, body = multipart(
                [("application/dicom", (tmp_path / f"{n}.dcm").read_bytes())]
            )

            def send(content_type: str = content_type, body: bytes = body) -> int:
                response = client.post(
                    f"{server.base_url}/dicom-web/studies",
                    content=body,
                    headers={"Content-Type": content_type},
                )
                return response.status_code

            statuses = at_once([send] * WRITERS)
            assert statuses == [200] * WRITERS
    assert index_counts(archive)[2] == ROUNDS
    assert_consistent(archive)
