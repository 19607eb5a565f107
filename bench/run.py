"""``python -m bench.run``: ingest rate beside Orthanc, search latency at scale on
SQLite and PostgreSQL, DICOMweb (WADO-RS retrieval, QIDO-RS) beside Orthanc, and
latency under hostile clients. Tables
on stdout, progress on stderr, everything in a JSON file under bench/results/
(git-ignored). See bench/README.md for what the numbers mean."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import auth as auth_mod
from bench import corpus as corpus_mod
from bench import cstore as cstore_mod
from bench import dicomweb as dicomweb_mod
from bench import gateway as gateway_mod
from bench import hostile as hostile_mod
from bench import ingest as ingest_mod
from bench import search as search_mod
from bench import transcode as transcode_mod
from bench.common import (
    DEFAULT_CACHE,
    DEFAULT_POSTGRES_URL,
    REPO,
    RESULTS,
    ensure_database,
    log,
    run_sql,
    table,
)

TARGETS = {
    "ingest_instances_per_s": 500.0,
    "ingest_vs_orthanc": 10.0,
    "ingest_peak_mb": 300.0,
    "patient_search_p50_ms": 20.0,
    "read_p50_ms": 10.0,
    "wado_vs_orthanc": 1.0,
    "wado_peak_rss_mb": 150.0,
    "qido_studies_limit100_p50_ms": 20.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=(
            "pacsfhir benchmarks. ingest: `pacsfhir ingest` (CLI) and Orthanc's POST "
            "/instances on the same generated files, then patient search and read on both "
            "at that scale. search: p50/p95/p99 of FHIR searches over a synthetic corpus "
            "(default 100,000 studies / 1,000,000 instances, built once per backend "
            "through pacsfhir's index writer and cached; blobs are not written). dicomweb: "
            "WADO-RS retrieval of whole studies (curl) and QIDO-RS study searches, pacsfhir "
            "beside Orthanc. hostile: latency of GET /fhir/metadata and a patient search "
            "while hostile clients (huge slow STOW, tiny parts, render bombs, big _search "
            "bodies) run against `pacsfhir serve`. auth: what JWT and introspection token "
            "checks add to a request, and introspection calls per token."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--only",
        choices=[
            "ingest",
            "search",
            "dicomweb",
            "hostile",
            "auth",
            "cstore",
            "gateway",
            "transcode",
        ],
        help="run one part only",
    )
    parser.add_argument(
        "--hostile-load",
        type=float,
        default=20.0,
        help="hostile: seconds of hostile clients (after 10 s of probing alone)",
    )
    parser.add_argument(
        "--backend",
        choices=["sqlite", "postgresql", "both"],
        default="both",
        help="index backend(s) for pacsfhir (ingest, search, QIDO-RS at scale)",
    )
    parser.add_argument(
        "--studies", type=int, default=100_000, help="search corpus size (10 instances each)"
    )
    parser.add_argument(
        "--ingest-studies",
        type=int,
        default=20,
        help="ingest set size in studies of 5 series x 20 instances (20 -> 2,000 files)",
    )
    parser.add_argument("--requests", type=int, default=200, help="timed requests per query")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per query first")
    parser.add_argument(
        "--orthanc-workers",
        type=_int_list,
        default="1,4",
        help="comma-separated numbers of concurrent POST /instances clients, one Orthanc "
        "run (fresh storage) for each",
    )
    parser.add_argument(
        "--cstore-associations",
        type=_int_list,
        default="1,4",
        help="cstore: comma-separated numbers of storescu associations sending at once",
    )
    parser.add_argument(
        "--gateway-mb",
        type=int,
        default=500,
        help="gateway: size in MB of the study retrieved through the gateway",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="ingest runs per system (fresh storage each); the median run is reported",
    )
    parser.add_argument(
        "--wado-sizes",
        type=_int_list,
        default="300,2000",
        help="comma-separated sizes in MiB of the studies retrieved with WADO-RS",
    )
    parser.add_argument(
        "--wado-runs", type=int, default=3, help="timed retrieves per study and system (median)"
    )
    parser.add_argument(
        "--qido-small-studies",
        type=int,
        default=2000,
        help="studies (one instance each) stored in both pacsfhir and Orthanc for QIDO-RS",
    )
    parser.add_argument("--no-orthanc", action="store_true", help="skip Orthanc")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("PACSFHIR_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="database for PostgreSQL runs (created if missing; env PACSFHIR_BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="where SQLite corpora are cached"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild cached search corpora")
    parser.add_argument("--seed", type=int, default=1, help="search corpus random seed")
    parser.add_argument("--output", type=Path, help="JSON results file (default bench/results/)")
    args = parser.parse_args(argv)
    for name in (
        "studies",
        "ingest_studies",
        "requests",
        "repeat",
        "wado_runs",
        "qido_small_studies",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("give at least one number, each at least 1")
    return values


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(pg_url: str, pg_problem: str | None) -> dict[str, Any]:
    from pacsfhir import __version__

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pacsfhir": __version__,
        "git": _git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "sqlite": sqlite3.sqlite_version,
    }
    if not pg_problem:
        try:
            version, autovacuum = run_sql(pg_url, "SHOW server_version", "SHOW autovacuum")
            info["postgresql"] = version[0]
            info["postgresql_autovacuum"] = autovacuum[0]
        except Exception as exc:
            info["postgresql"] = f"error: {exc}"
    return info


# -- report -------------------------------------------------------------------------


def _mem(result: dict[str, Any], key: str) -> float | None:
    value = result.get("memory", {}).get(key)
    return float(value) if value is not None else None


def report(results: dict[str, Any]) -> str:
    parts: list[str] = []
    meta = results["machine"]
    parts.append(
        f"pacsfhir {meta['pacsfhir']} ({meta['git']}), Python {meta['python']}, "
        f"{meta['cpus']} CPUs, {meta['memory_gb']} GB, SQLite {meta['sqlite']}, "
        f"PostgreSQL {meta.get('postgresql', '-')} "
        f"(autovacuum {meta.get('postgresql_autovacuum', '-')})"
    )
    ingest = results.get("ingest")
    if ingest:
        files = ingest["files"]
        rows: list[list[Any]] = []
        for backend, r in ingest["pacsfhir"].items():
            rows.append(
                [
                    f"pacsfhir ingest CLI ({backend})",
                    r["indexed"],
                    r["seconds"],
                    r["instances_per_s"],
                    _spread(r),
                    r["instances_per_s_excluding_overhead"],
                    r.get("cpu_ms_per_instance"),
                    _mem(r, "peak_tree_pss_mb"),
                    _mem(r, "peak_tree_rss_mb"),
                    r["cpu"]["other_processes_cpu_s"],
                ]
            )
        orthanc = ingest.get("orthanc") or {}
        for label, o in orthanc.items():
            if not isinstance(o, dict):
                continue
            rows.append(
                [
                    f"Orthanc {o['version']} POST /instances, {label}",
                    o["stored"],
                    o["seconds"],
                    o["instances_per_s"],
                    _spread(o),
                    None,
                    o.get("cpu_ms_per_instance"),
                    _mem(o, "peak_tree_pss_mb"),
                    _mem(o, "peak_tree_rss_mb"),
                    o["cpu"]["other_processes_cpu_s"],
                ]
            )
        parts.append(
            table(
                f"INGEST: {files['count']:,} files ({files['shape']}, {files['mb']} MB, "
                f"{files['template']}), durable on both sides, median of runs",
                [
                    "system",
                    "stored",
                    "seconds",
                    "inst/s",
                    "min..max",
                    "w/o CLI start",
                    "CPU ms/inst",
                    "peak PSS MB",
                    "peak RSS MB",
                    "other CPU s",
                ],
                rows,
            )
        )
        notes = [
            "  inst/s: files / wall seconds of the whole CLI run (interpreter start and imports"
            " included) into an empty index created beforehand, as Orthanc's is, or of all POSTs;",
            "  w/o CLI start: the same minus the time `pacsfhir ingest` takes on an empty"
            " folder; PSS = real footprint of the process tree, RSS summed = upper bound;",
            "  CPU ms/inst: CPU time of the pacsfhir CLI + workers (+ PostgreSQL backends) or"
            " of the Orthanc process per instance: unlike inst/s, not inflated by other load;",
            "  other CPU s: CPU seconds other processes on the machine used during the run.",
        ]
        if "skipped" in orthanc:
            notes.append(f"  Orthanc: {orthanc['skipped']}")
        else:
            notes.append(f"  Orthanc client: {ingest.get('orthanc_client', '')}")
        for backend, r in ingest["pacsfhir"].items():
            memory = r.get("memory", {})
            notes.append(
                f"  pacsfhir ({backend}): CLI start {r['cli_overhead_seconds']} s "
                f"(index creation run {r.get('index_creation_run_seconds', '?')} s); "
                f"{memory.get('max_processes', 1)} processes; tree PSS MB at 25/50/75/100% "
                f"of the run {memory.get('tree_pss_mb_at_25_50_75_100pct')}"
            )
            for label, o in orthanc.items():
                if isinstance(o, dict):
                    ratio = r["instances_per_s"] / o["instances_per_s"]
                    notes.append(f"    ratio to Orthanc with {label}: {ratio:.1f}x")
        parts.append("\n".join(notes))
        equal = ingest.get("equal_scale_queries")
        if equal:
            rows = []
            for system in ("pacsfhir", "orthanc"):
                for name, q in equal[system].items():
                    rows.append([f"{system}: {name}", *_latency_cells(q)])
            parts.append(
                table(
                    f"QUERIES AT EQUAL SCALE: the ingest set ({equal['studies']} studies, "
                    f"{equal['patients']} patients) in pacsfhir "
                    f"({next(iter(ingest['pacsfhir']))}) and Orthanc, sequential",
                    ["query", "n", "p50 ms", "p95 ms", "p99 ms", "errors"],
                    rows,
                )
            )
    search = results.get("search")
    if search:
        for backend, r in search.items():
            if "skipped" in r:
                parts.append(f"SEARCH ({backend}): skipped: {r['skipped']}")
                continue
            info = r["corpus"]
            counts = info["counts"]
            build = info["build"]
            rows = [
                [
                    name,
                    *_latency_cells(q),
                    q.get("server_cpu_ms_per_request"),
                    _share(q.get("cpu", {})),
                ]
                for name, q in r["queries"].items()
            ]
            cached = "cached; built" if info.get("cached") else "built"
            parts.append(
                table(
                    f"SEARCH ({backend}): {counts['studies']:,} studies / "
                    f"{counts['instances']:,} instances / {counts['patients']:,} patients "
                    f"({cached} in {build['seconds']:,.0f} s at {build['instances_per_s']:,}/s "
                    f"through index.writer; blobs not written), {info['database_mb']:,} MB",
                    [
                        "query",
                        "n",
                        "p50 ms",
                        "p95 ms",
                        "p99 ms",
                        "errors",
                        "server CPU ms",
                        "other CPU",
                    ],
                    rows,
                )
            )
            parts.append(
                "  sequential requests over loopback, timed from send to the last body byte"
                " (JSON parse and checks outside the clock);\n"
                "  server CPU ms: CPU time of pacsfhir (+ PostgreSQL backends) per request;\n"
                "  other CPU: share of the machine's CPU used by unrelated processes meanwhile."
            )
    dicomweb = results.get("dicomweb")
    if dicomweb:
        parts.extend(dicomweb_report(dicomweb))
    if results.get("hostile"):
        parts.append(hostile_mod.report(results["hostile"]))
    if results.get("auth"):
        parts.append(auth_mod.report(results["auth"]))
    if results.get("cstore"):
        parts.append(cstore_mod.report(results["cstore"]))
    if results.get("gateway"):
        parts.append(gateway_mod.report(results["gateway"]))
    if "transcode" in results:
        parts.append(transcode_mod.report(results["transcode"]))
    parts.append(targets_text(results))
    return "\n\n".join(parts)


def dicomweb_report(dicomweb: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    wado = dicomweb.get("wado", {})
    if "skipped" in wado:
        parts.append(f"WADO-RS: skipped: {wado['skipped']}")
    elif wado.get("results"):
        rows: list[list[Any]] = []
        for label, systems in wado["results"].items():
            study = wado["studies"][label]
            ours, theirs = systems.get("pacsfhir", {}), systems.get("orthanc", {})
            for system, r in (("pacsfhir", ours), ("Orthanc", theirs)):
                if not r:
                    continue
                ratio = None
                if system == "pacsfhir" and ours.get("mb_per_s") and theirs.get("mb_per_s"):
                    ratio = f"{ours['mb_per_s'] / theirs['mb_per_s']:.2f}x"
                rows.append(
                    [
                        f"{label} ({study['instances']:,} inst): {system}",
                        r.get("mb_per_s"),
                        _rate_spread(r),
                        ratio,
                        r.get("server_cpu_s_per_gb"),
                        r.get("idle_rss_mb"),
                        _mem(r, "peak_tree_rss_mb"),
                        _mem(r, "peak_tree_pss_mb"),
                        r.get("errors", r.get("error")),
                        _share(r.get("cpu", {})),
                    ]
                )
        parts.append(
            table(
                f"WADO-RS: GET /dicom-web/studies/<uid> by curl ({wado['template']} copies, "
                f"new UIDs), median of {wado['runs']} warm runs",
                [
                    "study: system",
                    "MB/s",
                    "min..max",
                    "vs Orthanc",
                    "server CPU s/GB",
                    "idle RSS MB",
                    "peak RSS MB",
                    "peak PSS MB",
                    "errors",
                    "other CPU",
                ],
                rows,
            )
        )
        notes = [
            "  MB = 2^20 bytes; MB/s = bytes received by curl / curl's time_total (body to"
            " /dev/null), one untimed retrieve first (page cache warm);",
            "  peak RSS: the larger of the server's kernel peak-RSS mark (VmHWM, reset before"
            " the study's warm-up, read after its timed runs) and the sampled tree RSS;",
            "  peak PSS: server process tree sampled every 25 ms during the warm-up retrieve"
            " only (sampling slows the timed runs); idle RSS: just before the warm-up;",
            f"  pacsfhir: `pacsfhir serve` (SQLite), `pacsfhir ingest` of all studies "
            f"{wado.get('pacsfhir_ingest_seconds')} s; Orthanc "
            f"{wado.get('orthanc_version', '-')}: defaults, DICOMweb plugin, POST /instances "
            f"x{dicomweb_mod.ORTHANC_POST_WORKERS} {wado.get('orthanc_post_seconds', '-')} s",
        ]
        if wado.get("orthanc_note"):
            notes.append(f"  Orthanc: {wado['orthanc_note']}")
        parts.append("\n".join(notes))
    qido = dicomweb.get("qido", {})
    if "error" in qido:
        parts.append(f"QIDO-RS: failed: {qido['error']}")
    rows = []
    for backend, r in qido.get("corpus", {}).items():
        if "skipped" in r:
            rows.append([f"pacsfhir ({backend}), skipped: {r['skipped']}"])
            continue
        for name, q in r["queries"].items():
            rows.append(
                [
                    f"pacsfhir ({backend}) {r['studies']:,} studies: {name}",
                    *_latency_cells(q),
                    q.get("server_cpu_ms_per_request"),
                    _share(q.get("cpu", {})),
                ]
            )
    small = qido.get("small", {})
    for system in ("pacsfhir", "orthanc"):
        label = "pacsfhir (sqlite)" if system == "pacsfhir" else "Orthanc"
        for name, q in small.get(system, {}).items():
            rows.append(
                [
                    f"{label} {small['studies']:,} studies: {name}",
                    *_latency_cells(q),
                    q.get("server_cpu_ms_per_request"),
                    _share(q.get("cpu", {})),
                ]
            )
    if rows:
        rows = [row + [None] * (8 - len(row)) if len(row) < 8 else row for row in rows]
        parts.append(
            table(
                "QIDO-RS: GET /dicom-web/studies, Accept application/dicom+json, sequential",
                [
                    "system, scale: query",
                    "n",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "errors",
                    "server CPU ms",
                    "other CPU",
                ],
                rows,
            )
        )
        notes = [
            "  pacsfhir at scale: the search benchmark's corpus (blobs not written; study-level"
            " default attributes come from the index alone);",
            f"  small set: {small.get('studies', '-')} studies of one CT_small.dcm instance each"
            f" ({small.get('patients', '-')} patients) stored in both systems (Orthanc "
            f"{small.get('orthanc_version', '-')}: POST /instances x"
            f"{dicomweb_mod.ORTHANC_POST_WORKERS}, {small.get('orthanc_post_seconds', '-')} s);"
            " Orthanc is not measured at 100,000 studies (hours to store here).",
        ]
        if small.get("orthanc_note"):
            notes.append(f"  Orthanc: {small['orthanc_note']}")
        parts.append("\n".join(notes))
    return parts


def _rate_spread(r: dict[str, Any]) -> str:
    rates = r.get("mb_per_s_all_runs") or []
    return f"{min(rates):,.0f}..{max(rates):,.0f}" if rates else "-"


def _share(cpu: dict[str, Any]) -> str:
    share = cpu.get("other_processes_share_of_machine")
    return "-" if share is None else f"{share * 100:.0f}%"


def _spread(r: dict[str, Any]) -> str:
    rates = r.get("instances_per_s_all_runs") or [r["instances_per_s"]]
    return f"{min(rates):,.0f}..{max(rates):,.0f}"


def _latency_cells(q: dict[str, Any]) -> list[Any]:
    n = q.get("n")
    if q.get("reduced_from"):
        n = f"{n} (of {q['reduced_from']})"
    return [n, q.get("p50_ms"), q.get("p95_ms"), q.get("p99_ms"), q.get("errors")]


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, op: str, target: float) -> None:
        if value is None:
            return
        ok = value >= target if op == ">=" else value > target if op == ">" else value < target
        checks.append(
            {"check": name, "value": round(value, 2), "target": f"{op} {target:g}", "ok": ok}
        )

    ingest = results.get("ingest") or {}
    orthanc = {k: v for k, v in (ingest.get("orthanc") or {}).items() if isinstance(v, dict)}
    for backend, r in ingest.get("pacsfhir", {}).items():
        add(
            f"ingest inst/s ({backend})",
            r["instances_per_s"],
            ">=",
            TARGETS["ingest_instances_per_s"],
        )
        for label, o in orthanc.items():
            add(
                f"ingest vs Orthanc {label} ({backend})",
                r["instances_per_s"] / o["instances_per_s"],
                ">",
                TARGETS["ingest_vs_orthanc"],
            )
        add(
            f"ingest peak PSS MB, CLI + workers ({backend})",
            _mem(r, "peak_tree_pss_mb"),
            "<",
            TARGETS["ingest_peak_mb"],
        )
        add(
            f"ingest peak RSS MB summed, upper bound ({backend})",
            _mem(r, "peak_tree_rss_mb"),
            "<",
            TARGETS["ingest_peak_mb"],
        )
    for backend, r in (results.get("search") or {}).items():
        queries = r.get("queries", {})
        for name in ("patient=<id>", "patient.identifier=<pid>"):
            if name in queries:
                add(
                    f"search {name} p50 ms ({backend})",
                    queries[name].get("p50_ms"),
                    "<",
                    TARGETS["patient_search_p50_ms"],
                )
        if "read ImagingStudy/<uid>" in queries:
            add(
                f"read by id p50 ms ({backend})",
                queries["read ImagingStudy/<uid>"].get("p50_ms"),
                "<",
                TARGETS["read_p50_ms"],
            )
    dicomweb = results.get("dicomweb") or {}
    for label, systems in ((dicomweb.get("wado") or {}).get("results") or {}).items():
        ours, theirs = systems.get("pacsfhir", {}), systems.get("orthanc", {})
        if ours.get("mb_per_s") and theirs.get("mb_per_s"):
            add(
                f"WADO-RS {label} study MB/s vs Orthanc",
                ours["mb_per_s"] / theirs["mb_per_s"],
                ">=",
                TARGETS["wado_vs_orthanc"],
            )
        add(
            f"WADO-RS {label} study peak RSS MB (pacsfhir serve)",
            _mem(ours, "peak_tree_rss_mb"),
            "<",
            TARGETS["wado_peak_rss_mb"],
        )
    for backend, r in ((dicomweb.get("qido") or {}).get("corpus") or {}).items():
        q = r.get("queries", {}).get("/studies?limit=100", {})
        add(
            f"QIDO /studies?limit=100 p50 ms at {r['studies']:,} studies ({backend})",
            q.get("p50_ms"),
            "<",
            TARGETS["qido_studies_limit100_p50_ms"],
        )
    return checks


def targets_text(results: dict[str, Any]) -> str:
    checks = results.get("targets", [])
    if not checks:
        return ""
    rows = [[c["check"], c["value"], c["target"], "PASS" if c["ok"] else "FAIL"] for c in checks]
    return table("TARGETS (from the issue)", ["check", "value", "target", "result"], rows)


# -- main ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    pg_problem: str | None = None
    if "postgresql" in backends:
        pg_problem = ensure_database(args.postgres_url)
        if pg_problem:
            log(f"PostgreSQL skipped: {pg_problem}")
    usable = [b for b in backends if b == "sqlite" or not pg_problem]
    results: dict[str, Any] = {
        "machine": machine(args.postgres_url, pg_problem if "postgresql" in backends else "unused"),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "targets_definition": TARGETS,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pacsfhir-bench-") as tmp:
        workdir = Path(tmp)
        if args.only in (None, "ingest") and not usable:
            log("ingest skipped: no usable backend")
        if args.only in (None, "ingest") and usable:
            results["ingest"] = ingest_mod.run(
                backends=usable,
                pg_url=args.postgres_url,
                ingest_studies=args.ingest_studies,
                orthanc_workers=args.orthanc_workers,
                with_orthanc=not args.no_orthanc,
                repeat=args.repeat,
                n=args.requests,
                warmup=args.warmup,
                workdir=workdir,
            )
        if args.only in (None, "search"):
            results["search"] = {}
            spec = corpus_mod.CorpusSpec(args.studies, args.seed)
            for backend in backends:
                if backend == "postgresql" and pg_problem:
                    results["search"][backend] = {"skipped": pg_problem}
                    continue
                if backend == "sqlite":
                    built = corpus_mod.sqlite_corpus(spec, args.cache_dir, args.rebuild)
                else:
                    built = corpus_mod.postgres_corpus(spec, args.postgres_url, args.rebuild)
                results["search"][backend] = search_mod.run_backend(
                    built, args.requests, args.warmup, workdir
                )
        if args.only in (None, "dicomweb"):
            results["dicomweb"] = dicomweb_mod.run(
                backends=backends,
                pg_url=args.postgres_url,
                pg_problem=pg_problem,
                spec=corpus_mod.CorpusSpec(args.studies, args.seed),
                cache=args.cache_dir,
                rebuild=args.rebuild and args.only == "dicomweb",
                sizes_mb=args.wado_sizes,
                wado_runs=args.wado_runs,
                small_studies=args.qido_small_studies,
                with_orthanc=not args.no_orthanc,
                n=args.requests,
                warmup=args.warmup,
                workdir=workdir,
            )
        if args.only in (None, "hostile"):
            results["hostile"] = hostile_mod.run(workdir, load_s=args.hostile_load)
        if args.only in (None, "auth"):
            results["auth"] = auth_mod.run(workdir)
        if args.only in (None, "cstore"):
            results["cstore"] = cstore_mod.run(
                ingest_studies=args.ingest_studies,
                parallel=args.cstore_associations,
                with_orthanc=not args.no_orthanc,
                repeat=args.repeat,
                workdir=workdir,
                backends=usable,
                pg_url=args.postgres_url,
            )
        if args.only in (None, "gateway") and not args.no_orthanc:
            results["gateway"] = gateway_mod.run(workdir, big_mb=args.gateway_mb)
        if args.only in (None, "transcode"):
            results["transcode"] = transcode_mod.run(workdir, with_orthanc=not args.no_orthanc)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["targets"] = evaluate(results)
    if "hostile" in results:
        results["targets"] += hostile_mod.targets_met(results["hostile"])
    if "cstore" in results:
        results["targets"] += cstore_mod.targets(results["cstore"])
    output = args.output or RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\nresults: {output}  (total {results['seconds']:,.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
