"""The search corpus: N studies x 10 instances, indexed through pacsfhir's own write path
(``index.writer.write_instances``) from attributes read out of real files.

One real file per modality is parsed once with ``pacsfhir.dicom.reader.read_instance``;
every instance of the corpus is a ``dataclasses.replace`` of that template with new UIDs,
patient, dates, accession number, series and instance numbers. Blobs are NOT written:
the index rows point at blob paths that do not exist (searches never open blobs).

The built index is cached (an SQLite file under the cache folder, a schema of the
``pacsfhir_bench`` PostgreSQL database) under a key made of the corpus parameters, the
generator version and the Alembic head, so reruns skip the build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, select, text

from bench.common import log, run_sql, sqlalchemy_url, with_search_path
from bench.dicomgen import FAMILY, GIVEN, PYDICOM_TEST_FILES
from pacsfhir.dicom.reader import InstanceAttributes, read_instance
from pacsfhir.index.engine import alembic_config, create_index_engine, migrate
from pacsfhir.index.schema import instance, patient, study
from pacsfhir.index.writer import IndexRecord, write_instances

GENERATOR_VERSION = 1
INSTANCES_PER_STUDY = 10
STUDIES_PER_BATCH = 1000  # one write_instances call and one commit per 10,000 instances
FIRST_DAY = date(2005, 1, 1)
DAYS = (date(2024, 12, 31) - FIRST_DAY).days + 1  # 20 years

# modality -> (template file under pydicom's test_files, share of studies, body parts,
# descriptions). DX has no sample file: it reuses the CR file with DX's Modality and
# SOP Class (Digital X-Ray Image Storage - For Presentation).
MODALITIES: dict[str, tuple[str, float, tuple[str, ...], tuple[str, ...]]] = {
    "CT": (
        "CT_small.dcm",
        0.30,
        ("CHEST", "ABDOMEN", "HEAD", "PELVIS"),
        ("CT CHEST W/O CONTRAST", "CT ABDOMEN PELVIS W CONTRAST", "CT HEAD"),
    ),
    "MR": (
        "MR_small.dcm",
        0.20,
        ("HEAD", "KNEE", "LSPINE", "BRAIN"),
        ("MR BRAIN W/WO", "MR KNEE LEFT", "MR LUMBAR SPINE"),
    ),
    "US": (
        "examples_palette.dcm",
        0.15,
        ("ABDOMEN", "THYROID", "PELVIS"),
        ("US ABDOMEN COMPLETE", "US THYROID", "US OB"),
    ),
    "CR": (
        "dicomdirtests/77654033/CR1/6154",
        0.20,
        ("CHEST", "CSPINE", "HAND"),
        ("XR CHEST 2 VIEWS", "XR C SPINE", "XR HAND"),
    ),
    "DX": (
        "dicomdirtests/77654033/CR1/6154",
        0.15,
        ("CHEST", "KNEE", "FOOT"),
        ("DX CHEST PA", "DX KNEE 3 VIEWS", "DX FOOT"),
    ),
}
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True)
class CorpusSpec:
    studies: int
    seed: int = 1

    @property
    def instances(self) -> int:
        return self.studies * INSTANCES_PER_STUDY

    @property
    def patients(self) -> int:
        return max(1, self.studies // 5)  # 100,000 studies -> 20,000 patients

    def key(self) -> str:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head() or "none"
        raw = f"{GENERATOR_VERSION}:{self.studies}:{self.seed}:{head}"
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        return f"s{self.studies}_seed{self.seed}_g{GENERATOR_VERSION}_{digest}"


def _templates() -> dict[str, InstanceAttributes]:
    read: dict[str, InstanceAttributes] = {}
    out: dict[str, InstanceAttributes] = {}
    for modality, (name, *_rest) in MODALITIES.items():
        if name not in read:
            path = PYDICOM_TEST_FILES / name
            with open(path, "rb") as fp:
                read[name] = read_instance(fp, os.path.getsize(path))
        template = read[name]
        if modality == "DX":
            template = dataclasses.replace(
                template,
                series={**template.series, "Modality": "DX"},
                instance={**template.instance, "SOPClassUID": DX_SOP_CLASS},
            )
        out[modality] = template
    return out


def _uid(rng: random.Random) -> str:
    return f"2.25.{uuid.UUID(int=rng.getrandbits(128), version=4).int}"


def generate(spec: CorpusSpec) -> Iterator[list[IndexRecord]]:
    """Batches of index records, ``STUDIES_PER_BATCH`` studies each, deterministic for
    a given spec. Patients are chosen uniformly, so each has about 5 studies."""
    rng = random.Random(spec.seed)
    templates = _templates()
    modalities = list(MODALITIES)
    weights = [MODALITIES[m][1] for m in modalities]
    people: list[dict[str, Any]] = []
    for p in range(spec.patients):
        born = FIRST_DAY - timedelta(days=rng.randrange(365 * 80))
        people.append(
            {
                "PatientID": f"MRN{p:07d}",
                "IssuerOfPatientID": "",
                "IssuerOfPatientIDQualifiers": {},
                "PatientName": f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}",
                "PatientBirthDate": born.strftime("%Y%m%d"),
                "PatientSex": rng.choice("MFO"),
            }
        )
    batch: list[IndexRecord] = []
    for s in range(spec.studies):
        modality = rng.choices(modalities, weights)[0]
        template = templates[modality]
        _file, _share, body_parts, descriptions = MODALITIES[modality]
        study_uid = _uid(rng)
        day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
        study_date = day.strftime("%Y%m%d")
        study_time = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
        study_attrs = {
            **template.study,
            "StudyInstanceUID": study_uid,
            "StudyDate": study_date,
            "StudyTime": study_time,
            "AccessionNumber": f"ACC{s:09d}",
            "StudyID": str(rng.randint(1, 9999)),
            "StudyDescription": rng.choice(descriptions),
        }
        patient_attrs = people[rng.randrange(spec.patients)]
        n_series = rng.randint(1, 4)
        per_series = [INSTANCES_PER_STUDY // n_series] * n_series
        per_series[-1] += INSTANCES_PER_STUDY - sum(per_series)
        for k, count in enumerate(per_series):
            series_uid = f"{study_uid}.{k + 1}"
            series_attrs = {
                **template.series,
                "SeriesInstanceUID": series_uid,
                "SeriesNumber": str(k + 1),
                "SeriesDate": study_date,
                "SeriesTime": study_time,
                "BodyPartExamined": rng.choice(body_parts),
            }
            for i in range(count):
                sop_uid = f"{series_uid}.{i + 1}"
                attrs = dataclasses.replace(
                    template,
                    patient=patient_attrs,
                    study=study_attrs,
                    series=series_attrs,
                    instance={
                        **template.instance,
                        "SOPInstanceUID": sop_uid,
                        "InstanceNumber": str(i + 1),
                    },
                )
                sha = hashlib.sha256(sop_uid.encode()).hexdigest()
                blob = f"{study_uid}/{series_uid}/{sop_uid}.{sha[:16]}.dcm"  # not written
                batch.append(IndexRecord(attrs, blob, 39206, sha))
        if (s + 1) % STUDIES_PER_BATCH == 0:
            yield batch
            batch = []
    if batch:
        yield batch


def _build(
    engine: Engine, spec: CorpusSpec, analyze: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Write the corpus through ``write_instances``, one transaction per batch.

    ``analyze``: called after a batch whenever the index has grown by half since the last
    call (what autovacuum's analyze does on a server that has it on; without statistics
    PostgreSQL plans the writer's IN-list look-ups as sequential scans, see README)."""
    migrate(engine)
    started = time.perf_counter()
    generating = 0.0
    analyzing = 0.0
    analyzed_at = 0
    analyses = 0
    written = 0
    batches = generate(spec)
    last_report = started
    while True:
        t0 = time.perf_counter()
        records = next(batches, None)
        generating += time.perf_counter() - t0
        if records is None:
            break
        now = time.time_ns() // 1_000_000 * 1000
        with engine.begin() as conn:
            write_instances(conn, records, now)
        written += len(records)
        if analyze is not None and written >= analyzed_at * 1.5:
            t0 = time.perf_counter()
            analyze()
            analyzing += time.perf_counter() - t0
            analyzed_at = written
            analyses += 1
        if time.perf_counter() - last_report > 15:
            last_report = time.perf_counter()
            rate = written / (last_report - started)
            log(f"  corpus: {written:,}/{spec.instances:,} instances ({rate:,.0f}/s)")
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 1),
        "generate_seconds": round(generating, 1),
        "analyze_seconds": round(analyzing, 1),
        "analyze_runs": analyses,
        "instances_per_s": round(written / seconds) if seconds else 0,
    }


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            "patients": conn.execute(select(func.count()).select_from(patient)).scalar_one(),
            "studies": conn.execute(select(func.count()).select_from(study)).scalar_one(),
            "instances": conn.execute(select(func.count()).select_from(instance)).scalar_one(),
        }


@dataclass
class Corpus:
    backend: str
    data: Path  # the --data folder for pacsfhir serve
    database_url: str  # "" for SQLite (the default under data)
    info: dict[str, Any]

    def engine(self) -> Engine:
        if self.database_url:
            return create_index_engine(sqlalchemy_url(self.database_url))
        return create_index_engine(f"sqlite:///{self.data / 'index.db'}")


def sqlite_corpus(spec: CorpusSpec, cache: Path, rebuild: bool) -> Corpus:
    folder = cache / f"corpus-sqlite-{spec.key()}"
    marker = folder / "corpus.json"
    if marker.exists() and not rebuild:
        info = json.loads(marker.read_text())
        info["cached"] = True
        log(f"SQLite corpus: cached in {folder}")
        return Corpus("sqlite", folder, "", info)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    log(f"SQLite corpus: building {spec.studies:,} studies in {folder} (blobs not written)")
    corpus = Corpus("sqlite", folder, "", {})
    engine = corpus.engine()
    try:
        build = _build(engine, spec)
        counts = _counts(engine)
    finally:
        engine.dispose()
    size = sum(p.stat().st_size for p in folder.glob("index.db*"))
    corpus.info = {
        "key": spec.key(),
        "build": build,
        "counts": counts,
        "database_mb": round(size / 1_048_576, 1),
        "analyzed": False,
        "cached": False,
    }
    marker.write_text(json.dumps(corpus.info, indent=2))
    return corpus


def _analyze(url: str) -> None:
    run_sql(url, "ANALYZE")


def postgres_corpus(spec: CorpusSpec, url: str, rebuild: bool) -> Corpus:
    schema = f"corpus_{spec.key()}".lower()
    pacsfhir_url = with_search_path(url, schema)
    corpus = Corpus("postgresql", Path(), pacsfhir_url, {})
    (exists, marker) = run_sql(
        url,
        f"SELECT 1 FROM information_schema.schemata WHERE schema_name = '{schema}'",
        f"SELECT 1 FROM information_schema.tables WHERE table_schema = '{schema}' "
        "AND table_name = 'bench_corpus'",
    )
    if exists and marker and not rebuild:
        (row,) = run_sql(url, f'SELECT info FROM "{schema}".bench_corpus')
        corpus.info = json.loads(row[0])
        corpus.info["cached"] = True
        log(f"PostgreSQL corpus: cached in schema {schema}")
        return corpus
    run_sql(url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', f'CREATE SCHEMA "{schema}"')
    log(f"PostgreSQL corpus: building {spec.studies:,} studies in schema {schema} (no blobs)")
    engine = corpus.engine()
    try:
        build = _build(engine, spec, lambda: _analyze(pacsfhir_url))
        counts = _counts(engine)
    finally:
        engine.dispose()
    t0 = time.perf_counter()
    run_sql(pacsfhir_url, "VACUUM ANALYZE")  # what autovacuum does soon after a bulk load
    build["vacuum_analyze_seconds"] = round(time.perf_counter() - t0, 1)
    (size,) = run_sql(
        url,
        "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' "
        "AND c.relkind = 'r'",
    )
    corpus.info = {
        "key": spec.key(),
        "schema": schema,
        "build": build,
        "counts": counts,
        "database_mb": round(int(size[0] or 0) / 1_048_576, 1),
        "analyzed": True,
        "cached": False,
    }
    engine = corpus.engine()
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE bench_corpus (info text NOT NULL)"))
            conn.execute(
                text("INSERT INTO bench_corpus VALUES (:i)"), {"i": json.dumps(corpus.info)}
            )
    finally:
        engine.dispose()
    return corpus
