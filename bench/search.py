"""Search latency at scale: pacsfhir serving the synthetic corpus (see ``corpus``) under
uvicorn, measured with sequential httpx requests."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.common import (
    CpuMeter,
    Probe,
    database_name,
    expect_status,
    log,
    measure_within,
    pacsfhir_server,
)
from bench.corpus import Corpus
from pacsfhir.index.schema import patient, study

PROBE_BUDGET_S = 300.0  # a bound on one probe's timed loop; results say when it hit it


def _samples(corpus: Corpus, count: int, seed: int) -> list[tuple[str, str, str, str]]:
    """(StudyInstanceUID, AccessionNumber, Patient resource id, PatientID) of ``count``
    studies picked at random from the index itself."""
    engine = corpus.engine()
    try:
        with engine.connect() as conn:
            low, high = conn.execute(select(func.min(study.c.pk), func.max(study.c.pk))).one()
            rng = random.Random(seed)
            pks = rng.sample(range(low, high + 1), min(count, high - low + 1))
            found: dict[int, tuple[str, str, str, str]] = {}
            for start in range(0, len(pks), 500):
                rows = conn.execute(
                    select(
                        study.c.pk,
                        study.c.StudyInstanceUID,
                        study.c.AccessionNumber,
                        patient.c.resource_id,
                        patient.c.PatientID,
                    )
                    .join(patient, patient.c.pk == study.c.patient_pk)
                    .where(study.c.pk.in_(pks[start : start + 500]))
                )
                for pk, uid, accession, resource_id, patient_id in rows:
                    found[pk] = (uid, accession, resource_id, patient_id)
    finally:
        engine.dispose()
    return [found[pk] for pk in pks if pk in found]


def _bundle(
    predicate: Callable[[dict[str, Any]], bool], what: str
) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        body = response.json()
        if not predicate(body):
            return f"{what} failed for {response.request.url} (total={body.get('total')})"
        return None

    return check


def probes(
    client: httpx.Client, samples: list[tuple[str, str, str, str]], studies: int
) -> list[Probe]:
    def pick(i: int) -> tuple[str, str, str, str]:
        return samples[i % len(samples)]

    def get(path: str, **params: str) -> httpx.Request:
        return client.build_request("GET", path, params=params)

    search = "/fhir/ImagingStudy"
    return [
        Probe(
            "patient=<id>",
            lambda i: get(search, patient=pick(i)[2]),
            _bundle(lambda b: b.get("total", 0) >= 1, "at least one study"),
        ),
        Probe(
            "Patient/<id>/ImagingStudy (compartment)",
            lambda i: client.build_request("GET", f"/fhir/Patient/{pick(i)[2]}/ImagingStudy"),
            _bundle(lambda b: b.get("total", 0) >= 1, "at least one study"),
        ),
        Probe(
            "patient.identifier=<pid>",
            lambda i: get(search, **{"patient.identifier": pick(i)[3]}),
            _bundle(lambda b: b.get("total", 0) >= 1, "at least one study"),
        ),
        Probe(
            "identifier=<accession>",
            lambda i: get(search, identifier=pick(i)[1]),
            _bundle(lambda b: b.get("total") == 1, "exactly one study"),
        ),
        Probe(
            "modality=CT&started=ge2015-01-01&_count=50",
            lambda i: get(search, modality="CT", started="ge2015-01-01", _count="50"),
            _bundle(
                lambda b: len(b.get("entry", [])) == min(50, b.get("total", 0)) > 0,
                "a page of min(50, total) > 0 studies",
            ),
        ),
        Probe(
            "read ImagingStudy/<uid>",
            lambda i: client.build_request("GET", f"{search}/{pick(i)[0]}"),
            expect_status(200),
        ),
        Probe(
            "_summary=count",
            lambda i: get(search, _summary="count"),
            _bundle(lambda b: b.get("total") == studies, f"total == {studies}"),
        ),
    ]


def run_backend(corpus: Corpus, n: int, warmup: int, workdir: Path) -> dict[str, Any]:
    studies = int(corpus.info["counts"]["studies"])
    samples = _samples(corpus, n + warmup, seed=7)
    out: dict[str, Any] = {"corpus": corpus.info, "queries": {}}
    log_path = workdir / f"serve-{corpus.backend}.log"
    log(f"{corpus.backend}: pacsfhir serve over {studies:,} studies, {n} requests per query")
    out["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    with (
        pacsfhir_server(corpus.data, corpus.database_url, log_path) as (base, pid),
        httpx.Client(base_url=base, timeout=120) as client,
    ):
        client.get("/fhir/ImagingStudy", params={"_count": "1"})  # opens a DB connection
        database = database_name(corpus.database_url) if corpus.database_url else ""
        for probe in probes(client, samples, studies):
            with CpuMeter(pids=[pid], database=database) as cpu:
                result = measure_within(client, probe, n, warmup, PROBE_BUDGET_S)
            result["cpu"] = cpu.result()
            result["seconds"] = result["cpu"]["wall_s"]
            requests = result.get("n", 0) + result.get("warmup", 0) + 1
            server = result["cpu"]["watched_pids_cpu_s"]
            server += result["cpu"].get("postgresql_backends_cpu_s", 0.0)
            result["server_cpu_ms_per_request"] = round(server * 1000 / max(requests, 1), 2)
            out["queries"][probe.name] = result
            log(
                f"  {probe.name}: p50 {result.get('p50_ms')} ms, p95 {result.get('p95_ms')} ms, "
                f"errors {result['errors']}"
            )
    return out
