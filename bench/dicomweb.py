"""DICOMweb beside Orthanc in one run: WADO-RS retrieval of whole studies (curl as the
client: MB/s, server CPU, server peak RSS/PSS) and QIDO-RS study searches (sequential
httpx requests: p50/p95), pacsfhir on the cached 100,000-study search corpus and both
systems on a small set Orthanc can store in a few minutes."""

from __future__ import annotations

import datetime
import os
import random
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from bench import corpus as corpus_mod
from bench.common import (
    CpuMeter,
    Probe,
    TreeSampler,
    database_name,
    log,
    measure_within,
    pacsfhir_command,
    pacsfhir_env,
    pacsfhir_server,
    tail,
)
from bench.dicomgen import person_name, write_ingest_set
from bench.orthanc import Orthanc, orthanc_problem, post_instances
from bench.search import _samples

# A real CT slice (512 x 512, 16 bit, Explicit VR Little Endian, 526 KB) from pydicom-data:
# big studies are many slices, so both sizes are made of copies of it with new UIDs.
WADO_TEMPLATE = "693_UNCR.dcm"
SLICES_PER_SERIES = 300
MIB = 1_048_576
ACCEPT_ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_DEFAULT_TS = 'multipart/related; type="application/dicom"'
CURL_TIMEOUT = 900.0  # seconds per retrieve; a bound far above any expected run
INGEST_TIMEOUT = 1800.0
QIDO_BUDGET_S = 120.0  # bound on one QIDO probe's timed loop (fewer requests past it)
ORTHANC_POST_WORKERS = 4


@dataclass
class Study:
    label: str
    uid: str
    folder: Path
    paths: list[Path] = field(default_factory=list)
    bytes: int = 0


def template_path() -> Path | None:
    found = get_testdata_file(WADO_TEMPLATE, download=False)
    return Path(str(found)) if found else None


def write_study(folder: Path, label: str, target_mb: int, template: Path, seed: int) -> Study:
    """Copies of the template slice with one new study (patient, accession, date), series
    of ``SLICES_PER_SERIES`` slices, new SOP Instance UIDs, until ``target_mb`` MiB."""
    rng = random.Random(seed)
    ds = pydicom.dcmread(template)
    study = Study(label, generate_uid(), folder)
    ds.StudyInstanceUID = study.uid
    ds.PatientID = f"WADO{rng.randrange(10**7):07d}"
    ds.PatientName = person_name(rng)
    ds.AccessionNumber = f"WADO{rng.randrange(10**8):08d}"
    ds.StudyID = label
    ds.StudyDate = f"{rng.randint(2005, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    folder.mkdir(parents=True, exist_ok=True)
    target = target_mb * MIB
    i = 0
    while study.bytes < target:
        if i % SLICES_PER_SERIES == 0:
            ds.SeriesInstanceUID = generate_uid()
            ds.SeriesNumber = i // SLICES_PER_SERIES + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i % SLICES_PER_SERIES + 1
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        study.paths.append(path)
        study.bytes += path.stat().st_size
        i += 1
    return study


def pacsfhir_ingest(folder: Path, data: Path, log_path: Path) -> float:
    """``pacsfhir ingest FOLDER --data DATA`` (SQLite); seconds."""
    started = time.perf_counter()
    with open(log_path, "wb") as out:
        proc = subprocess.run(
            pacsfhir_command("ingest", str(folder), "--data", str(data), "--strict"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=pacsfhir_env(),
            timeout=INGEST_TIMEOUT,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"pacsfhir ingest exited {proc.returncode}\n{tail(log_path)}")
    return time.perf_counter() - started


# -- WADO-RS ------------------------------------------------------------------------


def curl_get(url: str, accept: str) -> tuple[int, int, float]:
    """(HTTP status, bytes downloaded, seconds) of one GET by curl, body to /dev/null."""
    proc = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            "-H",
            f"Accept: {accept}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=CURL_TIMEOUT,
    )
    status, size, seconds = proc.stdout.split()
    return int(status), int(size), float(seconds)


def _reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of a process we started (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _peak_rss(pid: int) -> int | None:
    """VmHWM of a process in bytes: its peak RSS since start or the last reset."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def retrieve(label: str, url: str, pid: int, study: Study, runs: int) -> dict[str, Any]:
    """One warm-up retrieve (page cache, server caches) with the server's process tree
    sampled (RSS, PSS), then ``runs`` timed ones without the sampler (reading smaps_rollup
    every 25 ms slowed pacsfhir's retrieval by a quarter here); the kernel's peak-RSS
    mark (VmHWM, reset first) covers the warm-up and the timed runs at no cost."""
    accept = ACCEPT_ANY_TS
    hwm_reset = _reset_peak_rss(pid)
    sampler = TreeSampler(pid, interval=0.025).start()
    time.sleep(0.2)  # a few idle samples first
    status, size, _seconds = curl_get(url, accept)
    if status == 406 or status == 400:  # a server refusing transfer-syntax=*
        accept = ACCEPT_DEFAULT_TS
        status, size, _seconds = curl_get(url, accept)
    sampler.stop()
    timed: list[tuple[int, int, float]] = []
    with CpuMeter(pids=[pid]) as cpu:
        if status == 200:
            timed = [curl_get(url, accept) for _ in range(runs)]
    hwm = _peak_rss(pid)
    usage = cpu.result()
    memory = sampler.summary()
    if hwm is not None and hwm_reset:
        memory["peak_process_rss_hwm_mb"] = round(hwm / MIB, 1)
        memory["peak_tree_rss_mb"] = max(memory.get("peak_tree_rss_mb", 0.0), round(hwm / MIB, 1))
    idle = sampler.samples[0] if sampler.samples else None
    result: dict[str, Any] = {
        "url": url,
        "accept": accept,
        "warmup_status": status,
        "warmup_bytes": size,
        "study_file_bytes": study.bytes,
        "instances": len(study.paths),
        "memory": memory,
        "idle_rss_mb": round(idle.rss / MIB, 1) if idle else None,
        "idle_pss_mb": round(idle.pss / MIB, 1) if idle else None,
        "cpu": usage,
    }
    if status != 200 or not timed:
        result["error"] = f"warm-up retrieve answered HTTP {status}"
        log(f"  {label}: {result['error']}")
        return result
    bad = [t for t in timed if t[0] != 200 or t[1] < study.bytes]
    rates = [t[1] / MIB / t[2] for t in timed if t[2] > 0]
    median = sorted(timed, key=lambda t: t[2])[(len(timed) - 1) // 2]
    result.update(
        {
            "runs": len(timed),
            "errors": len(bad),
            "bytes": median[1],
            "seconds": round(median[2], 3),
            "seconds_all_runs": [round(t[2], 3) for t in timed],
            "mb_per_s": round(statistics.median(rates), 1),
            "mb_per_s_all_runs": [round(r, 1) for r in rates],
            "server_cpu_s_per_gb": round(
                usage["watched_pids_cpu_s"] / max(sum(t[1] for t in timed) / 1024**3, 1e-9), 2
            ),
        }
    )
    if bad:
        result["first_error"] = f"HTTP {bad[0][0]}, {bad[0][1]} bytes"
    log(
        f"  {label}: {result['mb_per_s']} MB/s, peak RSS "
        f"{memory.get('peak_tree_rss_mb')} MB, PSS {memory.get('peak_tree_pss_mb')} MB"
    )
    return result


def run_wado(
    sizes_mb: Sequence[int], runs: int, with_orthanc: bool, workdir: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes_mb": list(sizes_mb), "runs": runs}
    template = template_path()
    if template is None:
        out["skipped"] = f"{WADO_TEMPLATE} not found (pydicom-data not installed)"
        return out
    out["template"] = f"{WADO_TEMPLATE} ({template.stat().st_size:,} bytes, real CT slice)"
    out["free_disk_gb_at_start"] = round(shutil.disk_usage(workdir).free / 1024**3, 1)
    needed = sum(sizes_mb) * MIB * 3.2
    if shutil.disk_usage(workdir).free < needed:
        out["skipped"] = f"needs {needed / 1024**3:.1f} GB free under {workdir}"
        return out
    problem = orthanc_problem() if with_orthanc else "--no-orthanc"
    base = workdir / "wado"
    try:
        studies: list[Study] = []
        for k, size in enumerate(sizes_mb):
            label = f"{size} MB"
            log(f"WADO: writing a {label} study from {WADO_TEMPLATE}")
            studies.append(write_study(base / "files" / f"study{k}", label, size, template, k))
        out["studies"] = {
            s.label: {"uid": s.uid, "instances": len(s.paths), "bytes": s.bytes} for s in studies
        }
        data = base / "pacsfhir"
        os.sync()
        seconds = pacsfhir_ingest(base / "files", data, base / "ingest.log")
        total = sum(len(s.paths) for s in studies)
        out["pacsfhir_ingest_seconds"] = round(seconds, 1)
        log(f"WADO: pacsfhir ingest of {total:,} files: {seconds:.1f} s")
        orthanc: Orthanc | None = None
        if problem is None:
            orthanc = Orthanc(base / "orthanc").start()
            posted = post_instances(
                orthanc, [p for s in studies for p in s.paths], ORTHANC_POST_WORKERS
            )
            out["orthanc_post_seconds"] = round(posted.seconds, 1)
            out["orthanc_version"] = orthanc.version
            if posted.failed:
                problem = f"Orthanc refused {posted.failed} files: {posted.first_error}"
                orthanc.stop()
                orthanc = None
            log(f"WADO: Orthanc stored {total:,} files in {posted.seconds:.1f} s")
        out["orthanc_note"] = problem or ""
        shutil.rmtree(base / "files")  # sources no longer needed (disk, page cache)
        os.sync()
        results: dict[str, dict[str, Any]] = {s.label: {} for s in studies}
        try:
            with pacsfhir_server(data, "", base / "serve.log") as (url, pid):
                for s in studies:
                    results[s.label]["pacsfhir"] = retrieve(
                        f"pacsfhir {s.label}", f"{url}/dicom-web/studies/{s.uid}", pid, s, runs
                    )
            if orthanc is not None and orthanc.proc is not None:
                for s in studies:
                    results[s.label]["orthanc"] = retrieve(
                        f"Orthanc {s.label}",
                        f"{orthanc.base_url}/dicom-web/studies/{s.uid}",
                        orthanc.proc.pid,
                        s,
                        runs,
                    )
        finally:
            if orthanc is not None:
                orthanc.stop()
        out["results"] = results
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out


# -- QIDO-RS ------------------------------------------------------------------------


def _qido_list(expected: int | None) -> Any:
    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        found = len(response.json())
        if expected is not None and found != expected:
            return f"{found} studies, expected {expected}, for {response.request.url}"
        if found < 1:
            return f"no study for {response.request.url}"
        return None

    return check


def _day(i: int) -> str:
    """A different day of 2015-2024 for each ``i`` (DA)."""
    day = datetime.date(2015, 1, 1) + datetime.timedelta(days=(i * 7) % 3650)
    return day.strftime("%Y%m%d")


def qido_probes(
    client: httpx.Client, prefix: str, limit_expected: int, patient_ids: Sequence[str]
) -> list[Probe]:
    headers = {"Accept": "application/dicom+json"}

    def studies(**params: str) -> httpx.Request:
        return client.build_request("GET", f"{prefix}/studies", params=params, headers=headers)

    limit = _qido_list(limit_expected)
    probes = [
        Probe("/studies?limit=100", lambda i: studies(limit="100"), limit),
        # a different match set every request: no remembered count (pacsfhir caches the
        # count behind the "additional results" Warning until the index changes)
        Probe(
            "/studies?limit=100&StudyDate=-<date> (new count each time)",
            lambda i: studies(limit="100", StudyDate=f"-{_day(i)}"),
            _qido_list(None),
        ),
    ]
    if patient_ids:
        probes.append(
            Probe(
                "/studies?PatientID=<pid>",
                lambda i: studies(PatientID=patient_ids[i % len(patient_ids)]),
                _qido_list(None),
            )
        )
    return probes


def measure_qido(
    base: str,
    prefix: str,
    pid: int,
    database: str,
    limit_expected: int,
    patient_ids: Sequence[str],
    n: int,
    warmup: int,
    label: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=300) as client:
        for probe in qido_probes(client, prefix, limit_expected, patient_ids):
            with CpuMeter(pids=[pid], database=database) as cpu:
                result = measure_within(client, probe, n, warmup, QIDO_BUDGET_S)
            result["cpu"] = cpu.result()
            requests = result.get("n", 0) + result.get("warmup", 0) + 1
            server = result["cpu"]["watched_pids_cpu_s"]
            server += result["cpu"].get("postgresql_backends_cpu_s", 0.0)
            result["server_cpu_ms_per_request"] = round(server * 1000 / max(requests, 1), 2)
            out[probe.name] = result
            log(
                f"  {label} {probe.name}: p50 {result.get('p50_ms')} ms, "
                f"p95 {result.get('p95_ms')} ms, errors {result['errors']}"
            )
    return out


def run_qido(
    backends: Sequence[str],
    pg_url: str,
    pg_problem: str | None,
    spec: corpus_mod.CorpusSpec,
    cache: Path,
    rebuild: bool,
    small_studies: int,
    with_orthanc: bool,
    n: int,
    warmup: int,
    workdir: Path,
) -> dict[str, Any]:
    out: dict[str, Any] = {"corpus": {}, "small": {}}
    # pacsfhir at scale: the search benchmark's cached corpus (blobs not written; the
    # study-level default attributes all come from the index, no blob is opened)
    for backend in backends:
        if backend == "postgresql" and pg_problem:
            out["corpus"][backend] = {"skipped": pg_problem}
            continue
        if backend == "sqlite":
            built = corpus_mod.sqlite_corpus(spec, cache, rebuild)
        else:
            built = corpus_mod.postgres_corpus(spec, pg_url, rebuild)
        studies = int(built.info["counts"]["studies"])
        patient_ids = [pid for *_rest, pid in _samples(built, n + warmup, seed=11)]
        log(f"QIDO: pacsfhir ({backend}) over {studies:,} studies")
        database = database_name(built.database_url) if built.database_url else ""
        with pacsfhir_server(built.data, built.database_url, workdir / f"qido-{backend}.log") as (
            base,
            pid,
        ):
            queries = measure_qido(
                base,
                "/dicom-web",
                pid,
                database,
                min(100, studies),
                patient_ids,
                n,
                warmup,
                f"pacsfhir ({backend}, {studies:,} studies)",
            )
        out["corpus"][backend] = {"studies": studies, "queries": queries}
    # both systems on the same small set: one CT_small instance per study
    folder = workdir / "qido-small"
    try:
        log(f"QIDO: writing {small_studies:,} single-instance studies (CT_small.dcm)")
        files = write_ingest_set(folder / "files", small_studies, 1, 1, seed=4242)
        out["small"]["studies"] = small_studies
        out["small"]["patients"] = len(files.patients)
        patient_ids = [files.patients[(i * 7919) % len(files.patients)] for i in range(n + warmup)]
        seconds = pacsfhir_ingest(folder / "files", folder / "pacsfhir", folder / "ingest.log")
        out["small"]["pacsfhir_ingest_seconds"] = round(seconds, 1)
        with pacsfhir_server(folder / "pacsfhir", "", folder / "serve.log") as (base, pid):
            out["small"]["pacsfhir"] = measure_qido(
                base,
                "/dicom-web",
                pid,
                "",
                min(100, small_studies),
                patient_ids,
                n,
                warmup,
                f"pacsfhir (sqlite, {small_studies:,} studies)",
            )
        problem = orthanc_problem() if with_orthanc else "--no-orthanc"
        if problem is None:
            orthanc = Orthanc(folder / "orthanc").start()
            try:
                posted = post_instances(orthanc, files.paths, ORTHANC_POST_WORKERS)
                out["small"]["orthanc_post_seconds"] = round(posted.seconds, 1)
                out["small"]["orthanc_version"] = orthanc.version
                log(f"QIDO: Orthanc stored {posted.posted:,} files in {posted.seconds:.1f} s")
                if posted.failed:
                    problem = f"Orthanc refused {posted.failed} files: {posted.first_error}"
                else:
                    assert orthanc.proc is not None
                    out["small"]["orthanc"] = measure_qido(
                        orthanc.base_url,
                        "/dicom-web",
                        orthanc.proc.pid,
                        "",
                        min(100, small_studies),
                        patient_ids,
                        n,
                        warmup,
                        f"Orthanc ({small_studies:,} studies)",
                    )
            finally:
                orthanc.stop()
        out["small"]["orthanc_note"] = problem or ""
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def run(
    backends: Sequence[str],
    pg_url: str,
    pg_problem: str | None,
    spec: corpus_mod.CorpusSpec,
    cache: Path,
    rebuild: bool,
    sizes_mb: Sequence[int],
    wado_runs: int,
    small_studies: int,
    with_orthanc: bool,
    n: int,
    warmup: int,
    workdir: Path,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        out["wado"] = run_wado(sizes_mb, wado_runs, with_orthanc, workdir)
    except Exception as exc:  # the other parts' results are still written
        log(f"WADO failed: {type(exc).__name__}: {exc}")
        out["wado"] = {"skipped": f"failed: {type(exc).__name__}: {exc}"}
    try:
        out["qido"] = run_qido(
            backends,
            pg_url,
            pg_problem,
            spec,
            cache,
            rebuild,
            small_studies,
            with_orthanc,
            n,
            warmup,
            workdir,
        )
    except Exception as exc:
        log(f"QIDO failed: {type(exc).__name__}: {exc}")
        out["qido"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out
