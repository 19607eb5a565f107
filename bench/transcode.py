"""WADO-RS transcoding beside Orthanc in one run: frames per second retrieving every
frame of a compressed multi-frame instance uncompressed (``/frames/1,...,N`` with
``multipart/related; type="application/octet-stream"``, Explicit VR Little Endian),
curl as the client, and the peak RSS of ``pacsfhir serve`` meanwhile.

Two instances: pydicom's ``color3d_jpeg_baseline.dcm`` (JPEG baseline, 120 frames of
640 x 480 RGB, lossy: what ultrasound and endoscopy send) and a generated RLE Lossless
one (100 frames of 512 x 512, 16 bit, from pydicom-data's CT slice: a lossless
multi-frame CT). ``python -m bench.transcode`` alone, or ``python -m bench.run --only
transcode``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless, generate_uid

from bench.common import TreeSampler, log, pacsfhir_server, table
from bench.dicomweb import _peak_rss, _reset_peak_rss, curl_get, pacsfhir_ingest
from bench.orthanc import Orthanc, orthanc_problem, post_instances

EXPLICIT = "1.2.840.10008.1.2.1"
PACSFHIR_ACCEPT = 'multipart/related; type="application/octet-stream"'
ORTHANC_ACCEPT = f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT}'
RLE_FRAMES = 100


@dataclass
class Instance:
    label: str
    path: Path
    frames: int
    frame_bytes: int  # decoded
    uids: tuple[str, str, str]


def _read(path: Path | str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _with_new_uids(ds: pydicom.Dataset, target: Path) -> Instance:
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.SamplesPerPixel)
    frame_bytes = int(ds.Rows) * int(ds.Columns) * samples * int(ds.BitsAllocated) // 8
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    return Instance(target.stem, target, frames, frame_bytes, uids)


def make_instances(folder: Path) -> list[Instance]:
    jpeg = _read(str(get_testdata_file("color3d_jpeg_baseline.dcm")))
    made = [_with_new_uids(jpeg, folder / "jpeg_baseline_120f.dcm")]
    ct_path = get_testdata_file("693_UNCR.dcm")
    if ct_path is not None:
        ct = _read(str(ct_path))
        slice_ = ct.pixel_array
        rng = np.random.default_rng(15)
        noise = rng.integers(-8, 8, (RLE_FRAMES, *slice_.shape))
        pixels = np.clip(slice_[None] + noise, -32768, 32767).astype(slice_.dtype)
        ct.NumberOfFrames = RLE_FRAMES
        ct.compress(RLELossless, pixels, generate_instance_uid=False)
        made.append(_with_new_uids(ct, folder / f"ct_rle_{RLE_FRAMES}f.dcm"))
    return made


def _frames_url(base: str, instance: Instance) -> str:
    s, se, i = instance.uids
    numbers = ",".join(str(n) for n in range(1, instance.frames + 1))
    return f"{base}/studies/{s}/series/{se}/instances/{i}/frames/{numbers}"


def measure(
    url: str, accept: str, instance: Instance, runs: int, pid: int | None
) -> dict[str, Any]:
    """One warm-up, then ``runs`` timed retrieves; with ``pid``, the process's peak RSS
    (VmHWM, reset first) and sampled RSS over all of them."""
    sampler = TreeSampler(pid, interval=0.05).start() if pid else None
    reset = _reset_peak_rss(pid) if pid else False
    if sampler is not None:
        time.sleep(0.2)  # a few idle samples first
    status, size, _ = curl_get(url, accept)
    timed = [curl_get(url, accept) for _ in range(runs)] if status == 200 else []
    result: dict[str, Any] = {"accept": accept, "status": status, "bytes": size}
    if sampler is not None:
        sampler.stop()
        result["memory"] = sampler.summary()
        if sampler.samples:
            result["idle_rss_mb"] = round(sampler.samples[0].rss / 1_048_576, 1)
        hwm = _peak_rss(pid) if pid else None
        if hwm is not None and reset:
            result["peak_rss_hwm_mb"] = round(hwm / 1_048_576, 1)
    if not timed:
        result["error"] = f"HTTP {status}"
        return result
    decoded = instance.frames * instance.frame_bytes
    seconds = statistics.median(t[2] for t in timed)
    result.update(
        {
            "complete": all(t[0] == 200 and t[1] >= decoded for t in timed),
            "seconds": round(seconds, 3),
            "frames_per_s": round(instance.frames / seconds, 1),
            "frames_per_s_all_runs": [round(instance.frames / t[2], 1) for t in timed],
        }
    )
    return result


def run(workdir: Path, runs: int = 5, with_orthanc: bool = True) -> dict[str, Any]:
    folder = workdir / "transcode-src"
    instances = make_instances(folder)
    data = workdir / "transcode-data"
    pacsfhir_ingest(folder, data, workdir / "transcode-ingest.log")
    results: dict[str, Any] = {"instances": {}}
    orthanc: Orthanc | None = None
    problem = orthanc_problem() if with_orthanc else "not asked"
    if problem is None:
        orthanc = Orthanc(workdir / "transcode-orthanc").start()
        posted = post_instances(orthanc, [i.path for i in instances], workers=1)
        results["orthanc_version"] = orthanc.version
        if posted.failed:
            log(f"Orthanc refused {posted.failed}: {posted.first_error}")
    else:
        results["orthanc"] = problem
    try:
        with pacsfhir_server(data, "", workdir / "transcode-serve.log") as (base, pid):
            for instance in instances:
                row: dict[str, Any] = {
                    "frames": instance.frames,
                    "decoded_mb": round(instance.frames * instance.frame_bytes / 1_048_576, 1),
                    "stored_mb": round(instance.path.stat().st_size / 1_048_576, 1),
                }
                log(f"transcode: {instance.label} by pacsfhir")
                url = _frames_url(f"{base}/dicom-web", instance)
                row["pacsfhir"] = measure(url, PACSFHIR_ACCEPT, instance, runs, pid)
                if orthanc is not None:
                    log(f"transcode: {instance.label} by Orthanc")
                    theirs = _frames_url(f"{orthanc.base_url}/dicom-web", instance)
                    row["orthanc"] = measure(theirs, ORTHANC_ACCEPT, instance, runs, None)
                results["instances"][instance.label] = row
    finally:
        if orthanc is not None:
            orthanc.stop()
    return results


def report(results: dict[str, Any]) -> str:
    rows = []
    for label, r in results.get("instances", {}).items():
        ours = r.get("pacsfhir", {})
        theirs = r.get("orthanc", {})
        rows.append(
            [
                label,
                r["frames"],
                r["decoded_mb"],
                ours.get("frames_per_s", ours.get("error")),
                theirs.get("frames_per_s", theirs.get("error", "-")),
                ours.get("peak_rss_hwm_mb", (ours.get("memory") or {}).get("peak_tree_rss_mb")),
                ours.get("idle_rss_mb"),
            ]
        )
    header = [
        "instance",
        "frames",
        "decoded MB",
        "pacsfhir fps",
        "Orthanc fps",
        "pacsfhir RSS MB",
        "idle RSS MB",
    ]
    return table("WADO-RS frames, uncompressed (Explicit VR Little Endian)", header, rows)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pacsfhir-bench-transcode-") as tmp:
        results = run(Path(tmp))
    print(report(results))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
