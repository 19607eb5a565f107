"""``python -m bench.gateway`` (also ``bench.run --only gateway``): pacsfhir as a gateway
in front of Orthanc's DICOMweb, side by side with the upstream calls themselves.

- **Search**: a FHIR ``ImagingStudy?patient.identifier=P`` through ``pacsfhir serve``
  with ``PACSFHIR_UPSTREAM`` set, first (uncached: the job asks Orthanc for the studies,
  their series and each series' instances, and lands the answers) and again (cached: from
  the index), against the same QIDO-RS calls made straight to Orthanc by this process
  (``upstream.fetch.fetch_studies``). Targets (issue 14): uncached within 1.5x of the raw
  calls, cached at least 10x faster than uncached.
- **Retrieve**: a WADO-RS of one large study (noise pixels: nothing compresses), streamed
  and counted, straight from Orthanc, then through pacsfhir the first time (retrieved
  into the archive, then served) and again (from the archive), with pacsfhir's peak RSS.
  Target: at least 90% of direct throughput, RSS under 150 MB. A study none of whose
  instances is stored here is streamed straight through from the upstream (nothing
  stored); the metadata request after it retrieves the study into the archive, and the
  last retrieve is served from there.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import TreeSampler, log, pacsfhir_server, table
from bench.orthanc import Orthanc, post_instances
from pacsfhir.search.qido import parse_query
from pacsfhir.upstream.config import parse_upstream
from pacsfhir.upstream.dicomweb import DicomwebUpstreamClient
from pacsfhir.upstream.fetch import fetch_studies
from pacsfhir.vocabulary.levels import Level
from tests.support.dicom_factory import load_template, write_study, write_variant

PATIENTS = 10
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _write_corpus(folder: Path, big_mb: int) -> tuple[list[Path], str]:
    template = load_template()
    paths: list[Path] = []
    for p in range(PATIENTS):
        for _ in range(2):
            _uid, files = write_study(
                template, folder / "small", series=2, instances=10, PatientID=f"GWB-{p}"
            )
            paths += files
    side, frames = 1024, 2  # 4 MiB an instance
    count = max(1, big_mb // 4)
    big = template.copy()
    big.Rows = big.Columns = side
    big.NumberOfFrames = frames
    rng = np.random.default_rng(11)
    study_uid = ""
    for n in range(count):
        big.PixelData = rng.integers(0, 4096, (frames, side, side), dtype=np.uint16).tobytes()
        ds = write_variant(
            big,
            folder / "big" / f"{n}.dcm",
            study_uid=study_uid or None,
            series_uid=None,
            PatientID="GWB-BIG",
            InstanceNumber=n + 1,
        )
        study_uid = str(ds.StudyInstanceUID)
        paths.append(folder / "big" / f"{n}.dcm")
    return paths, study_uid


def _timed_get(client: httpx.Client, url: str, **kwargs: Any) -> tuple[float, int]:
    started = time.perf_counter()
    size = 0
    with client.stream("GET", url, **kwargs) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.read()[:200]!r}")
        for chunk in response.iter_raw(1 << 20):
            size += len(chunk)
    return time.perf_counter() - started, size


def run(workdir: Path, big_mb: int = 200) -> dict[str, Any]:
    files, big_study = _write_corpus(workdir / "dicom", big_mb)
    log(f"gateway: {len(files)} files written ({big_mb} MB study included)")
    orthanc = Orthanc(workdir / "orthanc").start()
    result: dict[str, Any] = {"orthanc_version": orthanc.version}
    try:
        posted = post_instances(orthanc, files, workers=4)
        assert posted.failed == 0, posted.first_error
        upstream_url = f"{orthanc.base_url}/dicom-web"
        env = {"PACSFHIR_UPSTREAM": upstream_url, "PACSFHIR_UPSTREAM_WAIT_SECONDS": "120"}
        raw_client = DicomwebUpstreamClient(parse_upstream(upstream_url, name="raw"))
        raw_ms, uncached_ms, cached_ms = [], [], []
        with (
            pacsfhir_server(workdir / "data", "", workdir / "serve.log", env) as (base, pid),
            httpx.Client(timeout=600) as client,
        ):
            for p in range(PATIENTS):
                patient = f"GWB-{p}"
                started = time.perf_counter()
                fetch_studies(raw_client, parse_query(Level.STUDY, [("PatientID", patient)]))
                raw_ms.append((time.perf_counter() - started) * 1000)
                search = f"{base}/fhir/ImagingStudy?patient.identifier={patient}"
                seconds, _ = _timed_get(client, search)
                uncached_ms.append(seconds * 1000)
                for _ in range(5):
                    seconds, _ = _timed_get(client, search)
                    cached_ms.append(seconds * 1000)
            log("gateway: retrieve")
            direct_s, size = _timed_get(
                client, f"{upstream_url}/studies/{big_study}", headers={"Accept": DICOM_ANY}
            )
            client.get(f"{base}/dicom-web/studies?PatientID=GWB-BIG")  # brings the study in
            sampler = TreeSampler(pid).start()
            first_s, first_size = _timed_get(
                client, f"{base}/dicom-web/studies/{big_study}", headers={"Accept": DICOM_ANY}
            )
            again_s, _ = _timed_get(
                client, f"{base}/dicom-web/studies/{big_study}", headers={"Accept": DICOM_ANY}
            )
            started = time.perf_counter()
            landed = client.get(f"{base}/dicom-web/studies/{big_study}/metadata")
            assert landed.status_code == 200, landed.text
            land_s = time.perf_counter() - started
            stored_s, _ = _timed_get(
                client, f"{base}/dicom-web/studies/{big_study}", headers={"Accept": DICOM_ANY}
            )
            sampler.stop()
            memory = sampler.summary()
            memory["start_rss_mb"] = (
                round(sampler.samples[0].rss / 1e6, 1) if sampler.samples else None
            )
        raw_client.close()
    finally:
        orthanc.stop()
    megabytes = size / 1e6
    result.update(
        {
            "search_raw_ms": statistics.median(raw_ms),
            "search_uncached_ms": statistics.median(uncached_ms),
            "search_cached_ms": statistics.median(cached_ms),
            "retrieve_mb": round(megabytes, 1),
            "retrieve_bytes_through": first_size,
            "direct_mb_s": megabytes / direct_s,
            "first_mb_s": megabytes / first_s,
            "again_mb_s": megabytes / again_s,
            "retrieve_into_archive_mb_s": megabytes / land_s,
            "stored_mb_s": megabytes / stored_s,
            "server_peak_rss_mb": memory.get("peak_tree_rss_mb"),
            "server_start_rss_mb": memory.get("start_rss_mb"),
        }
    )
    return result


def report(r: dict[str, Any]) -> str:
    uncached_ratio = r["search_uncached_ms"] / r["search_raw_ms"]
    cached_speedup = r["search_uncached_ms"] / r["search_cached_ms"]
    first_ratio = r["first_mb_s"] / r["direct_mb_s"]
    again_ratio = r["again_mb_s"] / r["direct_mb_s"]
    rows = [
        ["FHIR search, raw upstream calls (ms, median)", f"{r['search_raw_ms']:.1f}", "", ""],
        [
            "FHIR search through pacsfhir, uncached (ms)",
            f"{r['search_uncached_ms']:.1f}",
            f"{uncached_ratio:.2f}x raw",
            "PASS" if uncached_ratio <= 1.5 else "FAIL",
        ],
        [
            "FHIR search through pacsfhir, cached (ms)",
            f"{r['search_cached_ms']:.1f}",
            f"{cached_speedup:.0f}x faster",
            "PASS" if cached_speedup >= 10 else "FAIL",
        ],
        [
            f"WADO-RS {r['retrieve_mb']} MB, straight from Orthanc (MB/s)",
            f"{r['direct_mb_s']:.0f}",
            "",
            "",
        ],
        [
            "WADO-RS through pacsfhir, first (streamed through) (MB/s)",
            f"{r['first_mb_s']:.0f}",
            f"{first_ratio:.0%} of direct",
            "PASS" if first_ratio >= 0.9 else "FAIL",
        ],
        [
            "WADO-RS through pacsfhir, again (streamed through) (MB/s)",
            f"{r['again_mb_s']:.0f}",
            f"{again_ratio:.0%} of direct",
            "PASS" if again_ratio >= 0.9 else "FAIL",
        ],
        [
            "retrieval into the archive (WADO-RS, staged, ingested) (MB/s)",
            f"{r['retrieve_into_archive_mb_s']:.0f}",
            "",
            "",
        ],
        [
            "WADO-RS through pacsfhir, from the archive (MB/s)",
            f"{r['stored_mb_s']:.0f}",
            f"{r['stored_mb_s'] / r['direct_mb_s']:.0%} of direct",
            "PASS" if r["stored_mb_s"] >= 0.9 * r["direct_mb_s"] else "FAIL",
        ],
        [
            "pacsfhir peak RSS during the retrieves (MB)",
            f"{r['server_peak_rss_mb']}",
            f"{r['server_start_rss_mb']} before",
            "PASS" if (r["server_peak_rss_mb"] or 1e9) < 150 else "FAIL",
        ],
    ]
    return table(
        f"GATEWAY in front of Orthanc {r['orthanc_version']} (DICOMweb)",
        ["measure", "value", "ratio", "target"],
        rows,
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pacsfhir-bench-gateway-") as tmp:
        print(report(run(Path(tmp))))


if __name__ == "__main__":
    main()
