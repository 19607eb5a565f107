"""C-STORE ingest rate and memory: the same files sent with dcmtk's ``storescu`` into
``pacsfhir listen`` and into Orthanc's DICOM port, over one association and over several
in parallel (one ``storescu`` process each)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.common import (
    CpuMeter,
    TreeSampler,
    free_port,
    log,
    pacsfhir_command,
    pacsfhir_env,
    stop_process,
    table,
    tail,
)
from bench.dicomgen import IngestSet, write_ingest_set
from bench.orthanc import Orthanc, orthanc_problem
from pacsfhir.index.engine import create_index_engine
from pacsfhir.index.schema import instance

AE_TITLE = "PACSFHIR"
SEND_TIMEOUT = 1800.0  # seconds; a bound far above any expected run


def dcmtk_problem() -> str | None:
    missing = [tool for tool in ("storescu", "echoscu") if shutil.which(tool) is None]
    return f"dcmtk not installed ({', '.join(missing)})" if missing else None


def _sync() -> None:
    subprocess.run(["sync"], check=False)


def _wait_echo(port: int, called: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited")
        done = subprocess.run(
            ["echoscu", "-aec", called, "127.0.0.1", str(port)], capture_output=True, timeout=30
        )
        if done.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer C-ECHO")


def _groups(files: IngestSet, parallel: int) -> list[list[str]]:
    """The study folders dealt out to ``parallel`` senders."""
    folders = sorted({str(path.parent) for path in files.paths})
    return [folders[i::parallel] for i in range(parallel) if folders[i::parallel]]


def send(port: int, called: str, files: IngestSet, parallel: int) -> tuple[float, list[str]]:
    """``parallel`` storescu processes at once, each one association for its folders;
    the clock runs from the first start to the last exit. Returns seconds and errors.

    storescu runs with TCP_NODELAY=1 in its environment: Debian's dcmtk otherwise keeps
    Nagle's algorithm on, and every instance then waits ~40 ms for the receiver's
    delayed ACK (both receivers alike: ~18 instances/s on one association)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", called, "+sd", "+r", "-R", "127.0.0.1", str(port), *group],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for group in _groups(files, parallel)
    ]
    errors = []
    for proc in procs:
        output, _ = proc.communicate(timeout=SEND_TIMEOUT)
        if proc.returncode != 0:
            errors.append(output.decode(errors="replace")[-500:])
    return time.perf_counter() - started, errors


def _result(
    files: IngestSet, parallel: int, seconds: float, stored: int, errors: list[str], **more: Any
) -> dict[str, Any]:
    n = len(files.paths)
    return {
        "associations": parallel,
        "files": n,
        "stored": stored,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "seconds": round(seconds, 2),
        "instances_per_s": round(n / seconds, 1),
        **more,
    }


def pacsfhir_run(
    files: IngestSet, parallel: int, workdir: Path, database_url: str = ""
) -> dict[str, Any]:
    data = workdir / f"pacsfhir-cstore-{parallel}-{time.monotonic_ns()}"
    port = free_port()
    args = ["listen", "--data", str(data), "--dimse-port", str(port), "--ae-title", AE_TITLE]
    if database_url:
        args += ["--database-url", database_url]
    log_path = workdir / "pacsfhir-listen.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            pacsfhir_command(*args), stdout=out, stderr=subprocess.STDOUT, env=pacsfhir_env()
        )
    try:
        try:
            _wait_echo(port, AE_TITLE, proc, "pacsfhir listen")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{tail(log_path)}") from exc
        _sync()
        sampler = TreeSampler(proc.pid).start()
        with CpuMeter(pids=[proc.pid]) as cpu:
            seconds, errors = send(port, AE_TITLE, files, parallel)
        sampler.stop()
    finally:
        stop_process(proc)
    engine = create_index_engine(database_url or f"sqlite:///{data / 'index.db'}")
    try:
        with engine.connect() as conn:
            stored = int(conn.execute(select(func.count()).select_from(instance)).scalar_one())
    finally:
        engine.dispose()
    shutil.rmtree(data, ignore_errors=True)
    usage = cpu.result()
    return _result(
        files,
        parallel,
        seconds,
        stored,
        errors,
        memory=sampler.summary(),
        cpu_ms_per_instance=round(usage["watched_pids_cpu_s"] * 1000 / len(files.paths), 2),
    )


def orthanc_run(files: IngestSet, parallel: int, workdir: Path) -> dict[str, Any]:
    orthanc = Orthanc(workdir / f"orthanc-cstore-{parallel}-{time.monotonic_ns()}").start()
    try:
        config = json.loads((orthanc.workdir / "orthanc.json").read_text())
        port, called = int(config["DicomPort"]), str(config["DicomAet"])
        assert orthanc.proc is not None
        _wait_echo(port, called, orthanc.proc, "Orthanc")
        _sync()
        sampler = TreeSampler(orthanc.proc.pid).start()
        with CpuMeter(pids=[orthanc.proc.pid]) as cpu:
            seconds, errors = send(port, called, files, parallel)
        sampler.stop()
        stored = orthanc.instance_count()
        version = orthanc.version
    finally:
        orthanc.stop()
        shutil.rmtree(orthanc.workdir, ignore_errors=True)
    usage = cpu.result()
    return _result(
        files,
        parallel,
        seconds,
        stored,
        errors,
        version=version,
        memory=sampler.summary(),
        cpu_ms_per_instance=round(usage["watched_pids_cpu_s"] * 1000 / len(files.paths), 2),
    )


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: float(r["instances_per_s"]))
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["instances_per_s_all_runs"] = [r["instances_per_s"] for r in runs]
    return median


def run(
    *,
    ingest_studies: int,
    parallel: list[int],
    with_orthanc: bool,
    repeat: int,
    workdir: Path,
    backends: list[str],
    pg_url: str,
) -> dict[str, Any]:
    problem = dcmtk_problem()
    if problem:
        log(f"cstore skipped: {problem}")
        return {"skipped": problem}
    out: dict[str, Any] = {"pacsfhir": {}, "orthanc": {}}
    files = write_ingest_set(workdir / "cstore-files", ingest_studies)
    _sync()
    out["files"] = {
        "count": len(files.paths),
        "template": "pydicom test_files/CT_small.dcm",
        "mb": round(files.bytes / 1_048_576, 1),
    }
    for backend in backends:
        for n in parallel:
            runs = []
            for r in range(repeat):
                url = ""
                if backend == "postgresql":
                    url = _fresh_schema(pg_url, workdir)
                result = pacsfhir_run(files, n, workdir, url)
                log(
                    f"  pacsfhir listen ({backend}), {n} association(s), run {r + 1}: "
                    f"{result['instances_per_s']:,.0f} instances/s ({result['stored']:,} stored)"
                )
                runs.append(result)
            out["pacsfhir"][f"{backend} x{n}"] = _median(runs)
    problem = orthanc_problem() if with_orthanc else "disabled (--no-orthanc)"
    if problem:
        out["orthanc"] = {"skipped": problem}
        return out
    for n in parallel:
        runs = []
        for r in range(repeat):
            result = orthanc_run(files, n, workdir)
            log(
                f"  Orthanc {result['version']}, {n} association(s), run {r + 1}: "
                f"{result['instances_per_s']:,.0f} instances/s ({result['stored']:,} stored)"
            )
            runs.append(result)
        out["orthanc"][f"x{n}"] = _median(runs)
    return out


def _fresh_schema(pg_url: str, workdir: Path) -> str:
    import uuid

    from bench.common import run_sql, sqlalchemy_url, with_search_path

    schema = f"cstore_{uuid.uuid4().hex[:10]}"
    run_sql(pg_url, f'CREATE SCHEMA "{schema}"')
    return sqlalchemy_url(with_search_path(pg_url, schema))


def report(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"C-STORE: skipped: {result['skipped']}"
    rows: list[list[Any]] = []
    orthanc = {k: v for k, v in result.get("orthanc", {}).items() if isinstance(v, dict)}
    for label, r in result["pacsfhir"].items():
        theirs = orthanc.get(f"x{r['associations']}", {})
        ratio = (
            f"{r['instances_per_s'] / theirs['instances_per_s']:.2f}x"
            if theirs.get("instances_per_s")
            else None
        )
        rows.append(_row(f"pacsfhir listen ({label})", r, ratio))
    for label, r in orthanc.items():
        rows.append(_row(f"Orthanc {r.get('version', '')} ({label})", r, None))
    return table(
        f"C-STORE: {result['files']['count']:,} CT_small variants sent by dcmtk storescu "
        "(median run)",
        [
            "system (associations)",
            "inst/s",
            "min..max",
            "vs Orthanc",
            "stored",
            "errors",
            "CPU ms/inst",
            "peak RSS MB",
        ],
        rows,
    )


def _row(label: str, r: dict[str, Any], ratio: str | None) -> list[Any]:
    rates = r.get("instances_per_s_all_runs") or [r["instances_per_s"]]
    return [
        label,
        r["instances_per_s"],
        f"{min(rates):,.0f}..{max(rates):,.0f}",
        ratio,
        r["stored"],
        r["errors"],
        r.get("cpu_ms_per_instance"),
        r.get("memory", {}).get("peak_tree_rss_mb"),
    ]


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """At least Orthanc's rate, for each number of associations and backend."""
    checks = []
    orthanc = {k: v for k, v in result.get("orthanc", {}).items() if isinstance(v, dict)}
    for label, r in result.get("pacsfhir", {}).items():
        theirs = orthanc.get(f"x{r['associations']}")
        if not theirs:
            continue
        value = r["instances_per_s"] / theirs["instances_per_s"]
        checks.append(
            {
                "check": f"C-STORE inst/s vs Orthanc ({label})",
                "value": round(value, 2),
                "target": ">= 1",
                "ok": value >= 1.0,
            }
        )
    return checks
