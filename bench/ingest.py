"""Ingest rate and memory, pacsfhir's CLI beside Orthanc's REST API, on the same files in
the same run; then the same patient-search and read queries against both at that
(small) scale, while both still hold the set."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.common import (
    CpuMeter,
    Probe,
    TreeSampler,
    database_name,
    expect_status,
    log,
    measure,
    pacsfhir_command,
    pacsfhir_env,
    pacsfhir_server,
    run_sql,
    tail,
    with_search_path,
)
from bench.dicomgen import IngestSet, write_ingest_set
from bench.orthanc import Orthanc, orthanc_problem, post_instances
from pacsfhir.index.engine import create_index_engine
from pacsfhir.index.schema import instance, patient, study

INGEST_TIMEOUT = 1800.0  # seconds; a bound, far above any expected run


def _sync() -> None:
    """Flush dirty pages (the generated files, the previous system's writes) so that one
    system's fsyncs do not pay for another's writes."""
    os.sync()


def _database_url(backend: str, pg_url: str) -> tuple[str, str]:
    """(pacsfhir --database-url, schema to drop afterwards)."""
    if backend == "sqlite":
        return "", ""
    schema = f"ingest_{uuid.uuid4().hex[:10]}"
    run_sql(pg_url, f'CREATE SCHEMA "{schema}"')
    return with_search_path(pg_url, schema), schema


def _index_url(data: Path, database_url: str) -> str:
    return database_url or f"sqlite:///{data / 'index.db'}"


def _run_cli(
    args: list[str], log_path: Path, sample: bool, database: str = ""
) -> tuple[float, int, dict[str, Any], dict[str, Any]]:
    """Run the pacsfhir CLI; (seconds, exit code, memory summary, CPU accounting)."""
    with open(log_path, "wb") as out, CpuMeter(database=database) as cpu:
        started = time.perf_counter()
        proc = subprocess.Popen(
            pacsfhir_command(*args), stdout=out, stderr=subprocess.STDOUT, env=pacsfhir_env()
        )
        sampler = TreeSampler(proc.pid).start() if sample else None
        try:
            rc = proc.wait(timeout=INGEST_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
        seconds = time.perf_counter() - started
        if sampler is not None:
            sampler.stop()
    return seconds, rc, sampler.summary() if sampler else {}, cpu.result()


def pacsfhir_ingest(
    files: IngestSet, backend: str, pg_url: str, workdir: Path, run: int
) -> tuple[dict[str, Any], Path, str, str]:
    """Time ``pacsfhir ingest FOLDER`` into a new, empty index (a fresh --data folder;
    on PostgreSQL a fresh schema), created beforehand as Orthanc creates its own before
    its clock starts. Returns the result, the data folder, the database URL and a
    PostgreSQL schema to drop."""
    empty = workdir / "empty"
    empty.mkdir(exist_ok=True)
    data = workdir / f"pacsfhir-{backend}-{run}"
    db_url, schema = _database_url(backend, pg_url)
    db_args = ["--database-url", db_url] if db_url else []
    # A first run on an empty folder creates the index (migrations); a second one is the
    # fixed cost of a CLI run on an existing index (interpreter start, imports, pool).
    empty_args = ["ingest", str(empty), "--data", str(data), *db_args]
    creation, _rc, _mem, _cpu = _run_cli(empty_args, workdir / f"create-{backend}.log", False)
    overhead, _rc, _mem, _cpu = _run_cli(empty_args, workdir / f"overhead-{backend}.log", False)
    args = ["ingest", str(files.folder), "--data", str(data), *db_args]
    _sync()
    log_path = workdir / f"ingest-{backend}-{run}.log"
    database = database_name(pg_url) if db_url else ""
    seconds, rc, memory, cpu = _run_cli(args, log_path, True, database)
    if rc != 0:
        raise RuntimeError(f"pacsfhir ingest exited {rc}\n{tail(log_path)}")
    engine = create_index_engine(_index_url(data, db_url))
    try:
        with engine.connect() as conn:
            indexed = conn.execute(select(func.count()).select_from(instance)).scalar_one()
    finally:
        engine.dispose()
    _sync()
    n = len(files.paths)
    result = {
        "files": n,
        "indexed": indexed,
        "seconds": round(seconds, 2),
        "instances_per_s": round(n / seconds, 1),
        "index_creation_run_seconds": round(creation, 2),
        "cli_overhead_seconds": round(overhead, 2),
        "instances_per_s_excluding_overhead": round(n / max(seconds - overhead, 1e-9), 1),
        "memory": memory,
        "cpu": cpu,
        # CPU of the CLI and its workers (and of PostgreSQL's backends): load-independent
        "cpu_ms_per_instance": round(
            (cpu["waited_children_cpu_s"] + cpu.get("postgresql_backends_cpu_s", 0.0)) * 1000 / n,
            2,
        ),
        "command": " ".join(["pacsfhir", *args]),
    }
    log(
        f"  pacsfhir ({backend}) run {run + 1}: {result['instances_per_s']:,.0f} instances/s "
        f"({indexed:,} indexed; other processes took {cpu['other_processes_cpu_s']} CPU s)"
    )
    return result, data, db_url, schema


def orthanc_ingest(
    files: IngestSet, orthanc: Orthanc, workers: int, run: int
) -> tuple[dict[str, Any], dict[str, str]]:
    _sync()
    assert orthanc.proc is not None
    with CpuMeter(pids=[orthanc.proc.pid]) as cpu:
        posted = post_instances(orthanc, files.paths, workers)
    count = orthanc.instance_count()
    _sync()
    n = len(files.paths)
    usage = cpu.result()
    result: dict[str, Any] = {
        "version": orthanc.version,
        "workers": workers,
        "files": n,
        "stored": count,
        "failed": posted.failed,
        "first_error": posted.first_error,
        "seconds": round(posted.seconds, 2),
        "instances_per_s": round(n / posted.seconds, 1),
        "memory": posted.memory,
        "cpu": usage,
        # Orthanc's own CPU (the HTTP client's is not counted): load-independent
        "cpu_ms_per_instance": round(usage["watched_pids_cpu_s"] * 1000 / n, 2),
    }
    log(
        f"  Orthanc {orthanc.version}, {workers} client(s), run {run + 1}: "
        f"{result['instances_per_s']:,.0f} instances/s ({count:,} stored)"
    )
    return result, posted.study_ids


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate stands for the set; every run is kept."""
    ordered = sorted(runs, key=lambda r: float(r["instances_per_s"]))
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["runs"] = len(runs)
    median["instances_per_s_all_runs"] = [r["instances_per_s"] for r in runs]
    median["all_runs"] = runs
    return median


def _bundle_total(minimum: int) -> Any:
    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        total = response.json().get("total")
        if total is None or total < minimum:
            return f"total {total} < {minimum} for {response.request.url}"
        return None

    return check


def _non_empty_list(response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if not response.json():
        return f"no match for {response.request.url}"
    return None


def small_scale_queries(
    data: Path,
    db_url: str,
    orthanc: Orthanc | None,
    orthanc_studies: dict[str, str],
    n: int,
    warmup: int,
    workdir: Path,
) -> dict[str, Any]:
    """Patient search and read by id on both systems holding the same ingest set."""
    engine = create_index_engine(_index_url(data, db_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(study.c.StudyInstanceUID, patient.c.resource_id, patient.c.PatientID)
                .join(patient, patient.c.pk == study.c.patient_pk)
                .order_by(study.c.pk)
            ).all()
    finally:
        engine.dispose()
    uids = [r[0] for r in rows]
    resource_ids = [r[1] for r in rows]
    patient_ids = [r[2] for r in rows]
    results: dict[str, Any] = {
        "studies": len(uids),
        "patients": len(set(resource_ids)),
        "pacsfhir": {},
        "orthanc": {},
    }
    log(f"equal-scale queries: {len(uids)} studies, pacsfhir and Orthanc")
    with (
        pacsfhir_server(data, db_url, workdir / "serve-small.log") as (base, _pid),
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        probes = [
            Probe(
                "patient search ?patient=<id>",
                lambda i: client.build_request(
                    "GET", "/fhir/ImagingStudy", params={"patient": resource_ids[i % len(uids)]}
                ),
                _bundle_total(1),
            ),
            Probe(
                "patient search ?patient.identifier=<pid>",
                lambda i: client.build_request(
                    "GET",
                    "/fhir/ImagingStudy",
                    params={"patient.identifier": patient_ids[i % len(uids)]},
                ),
                _bundle_total(1),
            ),
            Probe(
                "read /ImagingStudy/<uid>",
                lambda i: client.build_request("GET", f"/fhir/ImagingStudy/{uids[i % len(uids)]}"),
                expect_status(200),
            ),
        ]
        for probe in probes:
            results["pacsfhir"][probe.name] = measure(client, probe, n, warmup)
    if orthanc is None:
        return results
    with httpx.Client(base_url=orthanc.base_url, timeout=60) as client:
        probes = [
            Probe(
                "QIDO /dicom-web/studies?PatientID=<pid>",
                lambda i: client.build_request(
                    "GET", "/dicom-web/studies", params={"PatientID": patient_ids[i % len(uids)]}
                ),
                _non_empty_list,
            ),
            Probe(
                "POST /tools/find Study PatientID (Expand)",
                lambda i: client.build_request(
                    "POST",
                    "/tools/find",
                    json={
                        "Level": "Study",
                        "Query": {"PatientID": patient_ids[i % len(uids)]},
                        "Expand": True,
                    },
                ),
                _non_empty_list,
            ),
            Probe(
                "QIDO /dicom-web/studies?StudyInstanceUID=<uid>",
                lambda i: client.build_request(
                    "GET", "/dicom-web/studies", params={"StudyInstanceUID": uids[i % len(uids)]}
                ),
                _non_empty_list,
            ),
        ]
        if orthanc_studies:
            probes.append(
                Probe(
                    "read /studies/<orthanc-id>",
                    lambda i: client.build_request(
                        "GET", f"/studies/{orthanc_studies.get(uids[i % len(uids)], 'missing')}"
                    ),
                    expect_status(200),
                )
            )
        for probe in probes:
            results["orthanc"][probe.name] = measure(client, probe, n, warmup)
    return results


def run(
    *,
    backends: list[str],
    pg_url: str,
    ingest_studies: int,
    orthanc_workers: list[int],
    with_orthanc: bool,
    repeat: int,
    n: int,
    warmup: int,
    workdir: Path,
) -> dict[str, Any]:
    out: dict[str, Any] = {"pacsfhir": {}, "orthanc": {}}
    files_dir = workdir / "files"
    log(f"writing {ingest_studies * 100:,} files from CT_small.dcm under {files_dir}")
    t0 = time.perf_counter()
    files = write_ingest_set(files_dir, ingest_studies)
    _sync()
    out["files"] = {
        "count": len(files.paths),
        "studies": len(files.studies),
        "patients": len(files.patients),
        "shape": f"{ingest_studies} studies x 5 series x 20 instances",
        "template": "pydicom test_files/CT_small.dcm",
        "mb": round(files.bytes / 1_048_576, 1),
        "write_seconds": round(time.perf_counter() - t0, 1),
    }
    out["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    kept: tuple[Path, str] | None = None
    schemas: list[str] = []
    orthanc: Orthanc | None = None
    try:
        for backend in backends:
            runs = []
            for r in range(repeat):
                result, data, db_url, schema = pacsfhir_ingest(files, backend, pg_url, workdir, r)
                runs.append(result)
                if schema:
                    schemas.append(schema)
                if kept is None:
                    kept = (data, db_url)
                else:
                    shutil.rmtree(data, ignore_errors=True)
            out["pacsfhir"][backend] = summarise_runs(runs)
        problem = orthanc_problem() if with_orthanc else "disabled (--no-orthanc)"
        orthanc_studies: dict[str, str] = {}
        if problem:
            log(f"Orthanc skipped: {problem}")
            out["orthanc"] = {"skipped": problem}
        for workers in orthanc_workers if not problem else []:
            runs = []
            for r in range(repeat):
                if orthanc is not None:
                    orthanc.stop()
                    shutil.rmtree(orthanc.workdir, ignore_errors=True)
                orthanc = Orthanc(workdir / f"orthanc-{workers}-{r}").start()
                result, orthanc_studies = orthanc_ingest(files, orthanc, workers, r)
                runs.append(result)
            out["orthanc"][f"{workers} client(s)"] = summarise_runs(runs)
        out["orthanc_client"] = (
            "httpx.Client shared by N threads (keep-alive, at most N connections), "
            "POST /instances with Content-Type application/dicom, one file per request"
        )
        if kept is not None:
            out["equal_scale_queries"] = small_scale_queries(
                kept[0], kept[1], orthanc, orthanc_studies, n, warmup, workdir
            )
    finally:
        if orthanc is not None:
            orthanc.stop()
        for schema in schemas:
            run_sql(pg_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        shutil.rmtree(files_dir, ignore_errors=True)
    return out
