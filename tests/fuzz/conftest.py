"""The fuzz suite's target: an archive of its own holding pydicom's sample files (never
the shared read-only ``sample_archive``: STOW may store), served in-process by default
(TestClient, a 500 seen as a response, its exception recorded), or by a real
``pacsfhir serve`` subprocess when ``PACSFHIR_FUZZ_SERVER=subprocess`` (``make fuzz``:
the server's peak RSS is then its own). The routes are fuzzed on each backend of
``PACSFHIR_FUZZ_BACKENDS`` (default ``sqlite,postgresql``; PostgreSQL with a third of the
examples unless ``make fuzz``)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bench.common import pacsfhir_server
from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.index.schema import instance, patient, series, study
from tests.conftest import _database_url, make_settings, sample_paths
from tests.fuzz.invariants import LEDGER, ExceptionRecorder
from tests.fuzz.strategies import Chain, Context, Ids
from tests.support.mutate import SMALL

# The backends the route fuzz runs on (the requests run on both, always).
BACKENDS = [
    b.strip()
    for b in os.environ.get("PACSFHIR_FUZZ_BACKENDS", "sqlite,postgresql").split(",")
    if b.strip()
]
SUBPROCESS = os.environ.get("PACSFHIR_FUZZ_SERVER", "") == "subprocess"


class ServerLog:
    """The exceptions a ``pacsfhir serve`` subprocess logged since the last look: the
    cause of a 5xx when the server is not in-process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def take(self) -> tuple[str, list[str]]:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                text = log.read().decode("utf-8", "replace")
                self.offset = log.tell()
        except OSError:
            return "", []
        lines = [line for line in text.splitlines() if EXCEPTION_LINE.match(line)]
        where = [line.strip() for line in text.splitlines() if "/pacsfhir/" in line]
        cause = lines[-1][:160] if lines else ""
        if cause and where:
            cause += (
                " at "
                + where[-1].split('"')[1].rsplit("/", 1)[-1]
                + ":"
                + where[-1].split("line ")[-1].split(",")[0]
            )
        return cause, []


EXCEPTION_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception|Warning)\b")


@dataclass
class Target:
    client: httpx.Client
    ids: Ids
    sample: bytes  # a small real DICOM file for STOW bodies
    recorder: ExceptionRecorder | ServerLog  # why a 5xx happened
    h11: bool  # requests go through a real HTTP/1.1 client

    @property
    def context(self) -> Context:
        return Context(self.ids, self.sample, self.h11)


def chains(archive: Archive, limit: int = 12) -> Ids:
    """Real ids of stored instances: the multi-frame ones first, then one per study."""
    query = (
        select(
            patient.c.resource_id,
            study.c.StudyInstanceUID,
            series.c.SeriesInstanceUID,
            instance.c.SOPInstanceUID,
            instance.c.NumberOfFrames,
        )
        .join(series, instance.c.series_pk == series.c.pk)
        .join(study, series.c.study_pk == study.c.pk)
        .join(patient, study.c.patient_pk == patient.c.pk)
        .order_by(instance.c.NumberOfFrames.desc(), instance.c.pk)
    )
    ids = Ids()
    seen: set[str] = set()
    with archive.engine.connect() as conn:
        for row in conn.execute(query):
            if row.StudyInstanceUID in seen and row.NumberOfFrames <= 1:
                continue
            seen.add(row.StudyInstanceUID)
            ids.chains.append(
                Chain(
                    row.resource_id,
                    row.StudyInstanceUID,
                    row.SeriesInstanceUID,
                    row.SOPInstanceUID,
                    max(1, row.NumberOfFrames),
                )
            )
            if len(ids.chains) >= limit:
                break
    return ids


@pytest.fixture(scope="session")
def fuzz_archive(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_problem: str | None,
) -> Iterator[Archive]:
    backend = str(getattr(request, "param", "sqlite"))
    tmp = tmp_path_factory.mktemp(f"fuzz-{backend}")
    for url in _database_url(backend, tmp, postgres_problem):
        opened = Archive.open(make_settings(tmp, url))
        ingest(sample_paths()[:2], opened.engine, opened.blobs, workers=1)
        try:
            yield opened
        finally:
            opened.close()


@pytest.fixture(scope="session")
def fuzz_target(
    fuzz_archive: Archive, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    ids = chains(fuzz_archive)
    sample = SMALL.read_bytes()
    if SUBPROCESS:
        LEDGER.mode = "pacsfhir serve (subprocess)"
        log = tmp_path_factory.mktemp("fuzz-serve") / "serve.log"
        settings = fuzz_archive.settings
        with pacsfhir_server(Path(settings.data), settings.database_url, log) as (base, pid):
            with httpx.Client(base_url=base, timeout=120) as client:
                yield Target(client, ids, sample, ServerLog(log), h11=True)
            LEDGER.server_peak_rss_mb = peak_rss_mb(pid)
        return
    recorder = ExceptionRecorder(create_app(fuzz_archive.settings, fuzz_archive))
    with TestClient(recorder, raise_server_exceptions=False) as client:
        yield Target(client, ids, sample, recorder, h11=False)


def peak_rss_mb(pid: int) -> float | None:
    """The kernel's peak resident set mark of a process (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (LEDGER.requests or LEDGER.files):
        return
    summary = LEDGER.summary()
    path = LEDGER.write()
    write = terminalreporter.write_line
    terminalreporter.section("fuzz")
    write(
        f"{summary['mode']}: {summary['requests']} requests, {summary['files']} files, "
        f"{summary['5xx']} 5xx, server peak RSS {summary['server_peak_rss_mb']} MB; "
        f"statuses {summary['statuses']}"
    )
    for finding in summary["distinct_findings"]:
        write(f"  {finding['count']} x {finding['problem']} <- {finding['cause'] or '?'}")
        write(f"      e.g. {finding['example'][:240]}")
    write(f"figures: {path}")
