"""``python -m bench.hostile`` (also ``bench.run --only hostile``): does one misbehaving
client stall everyone else? A real ``pacsfhir serve`` (SQLite, loopback) over pydicom's
sample files plus a generated large image; a probe client measures ``GET /fhir/metadata``
and a patient search (``ImagingStudy?patient=<id>``) alone (baseline), then while hostile
clients run, each in its own process: a huge STOW body streamed slowly, STOWs of many
tiny parts, render bombs (a large frame at ``viewport=8192,8192``, a frame list of one
frame ten times) and big ``POST _search`` bodies. Every phase stops by itself."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench.common import (
    RESULTS,
    log,
    pacsfhir_command,
    pacsfhir_env,
    pacsfhir_server,
    percentiles,
    table,
)
from bench.dicomgen import PYDICOM_TEST_FILES

TARGET_P99_MS = 100.0
PROBE_INTERVAL_S = 0.05
LARGE_SIDE = 4096  # the generated large image: 4096 x 4096 x 16 bit, 32 MiB of pixels
HOSTILE_KINDS = (
    "slow-huge-stow",
    "tiny-parts-stow",
    "render-bomb",
    "frame-list-bomb",
    "big-search-body",
)
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary={}'


# -- the archive ----------------------------------------------------------------------


def large_image(folder: Path) -> Path:
    """A CT_small variant with a LARGE_SIDE^2 16-bit frame (uncompressed, a gradient)."""
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = "HOSTILE-BIG", "Big^Frame"
    ds.Rows = ds.Columns = LARGE_SIDE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ramp = np.linspace(0, 4095, LARGE_SIDE, dtype=np.uint16)
    ds.PixelData = np.add.outer(ramp, ramp).clip(0, 4095).astype(np.uint16).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def build_archive(data: Path, work: Path) -> None:
    import subprocess

    extra = work / "extra"
    extra.mkdir()
    large_image(extra)
    sources = [
        str(PYDICOM_TEST_FILES),
        str(PYDICOM_TEST_FILES.parent / "charset_files"),
        str(extra),
    ]
    done = subprocess.run(
        pacsfhir_command("ingest", *sources, "--data", str(data)),
        capture_output=True,
        env=pacsfhir_env(),
        timeout=600,
        check=False,
    )
    if done.returncode not in (0, 1):  # 1: some sample files are rejected on purpose
        raise RuntimeError(f"pacsfhir ingest failed: {done.stderr.decode()[-2000:]}")


def targets(base: str) -> dict[str, str]:
    """Ids the clients use: a patient, the large image and a multi-frame instance."""
    with httpx.Client(base_url=base, timeout=30) as client:
        big = client.get("/dicom-web/instances", params={"PatientID": "HOSTILE-BIG"}).json()[0]
        frames = client.get("/dicom-web/instances", params={"includefield": "00280008"}).json()
        multi = max(frames, key=lambda i: int((i.get("00280008", {}).get("Value") or [1])[0]))
        study = client.get("/fhir/ImagingStudy", params={"_count": 1}).json()
        patient = study["entry"][0]["resource"]["subject"]["reference"].split("/")[1]

    def url(item: dict[str, Any]) -> str:
        uid = [item[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018")]
        return f"/dicom-web/studies/{uid[0]}/series/{uid[1]}/instances/{uid[2]}"

    count = int((multi.get("00280008", {}).get("Value") or [1])[0])
    return {"patient": patient, "large": url(big), "multiframe": url(multi), "frames": str(count)}


# -- hostile clients (each in its own process) ---------------------------------------


def slow_huge_stow(base: str, ids: dict[str, str], deadline: float) -> Iterator[int]:
    """One STOW whose single part is zeros, sent at about 8 MB/s until the deadline."""
    boundary = "hostileboundary"

    def body() -> Iterator[bytes]:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        chunk = bytes(1 << 16)
        while time.monotonic() < deadline:
            yield chunk
            time.sleep(0.008)
        yield f"\r\n--{boundary}--\r\n".encode()

    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < deadline:
            headers = {"Content-Type": STOW_TYPE.format(boundary)}
            yield client.post("/dicom-web/studies", content=body(), headers=headers).status_code


def tiny_parts_stow(base: str, ids: dict[str, str], deadline: float) -> Iterator[int]:
    """STOWs of 10,000 one-byte parts, one after another."""
    boundary = "tiny"
    part = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nx\r\n".encode()
    body = part * 10_000 + f"--{boundary}--\r\n".encode()
    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < deadline:
            headers = {"Content-Type": STOW_TYPE.format(boundary)}
            yield client.post("/dicom-web/studies", content=body, headers=headers).status_code


def render_bomb(base: str, ids: dict[str, str], deadline: float) -> Iterator[int]:
    """The large frame rendered at viewport=8192,8192, then at its own 4096 x 4096 (a
    render within any sane pixel budget: real work), again and again."""
    url = ids["large"] + "/frames/1/rendered"
    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < deadline:
            yield client.get(url, params={"viewport": "8192,8192"}).status_code
            yield client.get(url).status_code


def frame_list_bomb(base: str, ids: dict[str, str], deadline: float) -> Iterator[int]:
    """One frame ten times in a frame list at viewport=8192,8192 (on the multi-frame
    sample and on the large frame), then every frame of the multi-frame sample once."""
    every = ",".join(str(i) for i in range(1, int(ids["frames"]) + 1))
    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < deadline:
            for instance in (ids["multiframe"], ids["large"]):
                url = instance + "/frames/" + ",".join(["1"] * 10) + "/rendered"
                yield client.get(url, params={"viewport": "8192,8192"}).status_code
            yield client.get(ids["multiframe"] + "/frames/" + every + "/rendered").status_code


def big_search_body(base: str, ids: dict[str, str], deadline: float) -> Iterator[int]:
    """POST _search with a 100 MB form body, streamed as fast as it goes."""

    def body() -> Iterator[bytes]:
        chunk = b"a=b&" * (1 << 16)
        for _ in range(100 * (1 << 20) // len(chunk)):
            if time.monotonic() >= deadline:
                break
            yield chunk
        yield b"_count=1"

    with httpx.Client(base_url=base, timeout=120) as client:
        while time.monotonic() < deadline:
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            yield client.post(
                "/fhir/ImagingStudy/_search", content=body(), headers=headers
            ).status_code


CLIENTS: dict[str, Callable[[str, dict[str, str], float], Iterator[int]]] = {
    "slow-huge-stow": slow_huge_stow,
    "tiny-parts-stow": tiny_parts_stow,
    "render-bomb": render_bomb,
    "frame-list-bomb": frame_list_bomb,
    "big-search-body": big_search_body,
}


def _hostile_worker(kind: str, base: str, ids: dict[str, str], deadline: float, out: Any) -> None:
    statuses: Counter[str] = Counter()
    started = time.monotonic()
    try:
        for status in CLIENTS[kind](base, ids, deadline):
            statuses[str(status)] += 1
    except httpx.HTTPError as exc:  # the server may cut a hostile client off: say so
        statuses[type(exc).__name__] += 1
    out.put((kind, dict(statuses), round(time.monotonic() - started, 1)))


# -- the probe ------------------------------------------------------------------------


def probe(base: str, patient: str, seconds: float) -> dict[str, Any]:
    """Alternate GET /fhir/metadata and the patient search every PROBE_INTERVAL_S for
    ``seconds``; latency from send to the last body byte, per request."""
    samples: dict[str, list[float]] = {"metadata": [], "patient search": []}
    errors: Counter[str] = Counter()
    requests = {
        "metadata": ("/fhir/metadata", {}),
        "patient search": ("/fhir/ImagingStudy", {"patient": patient}),
    }
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=30) as client:
        i = 0
        while time.monotonic() < deadline:
            name = ("metadata", "patient search")[i % 2]
            path, params = requests[name]
            start = time.perf_counter()
            try:
                response = client.get(path, params=params)
                response.read()
                elapsed = (time.perf_counter() - start) * 1000
                if response.status_code != 200:
                    errors[f"{name}: HTTP {response.status_code}"] += 1
            except httpx.HTTPError as exc:
                elapsed = (time.perf_counter() - start) * 1000
                errors[f"{name}: {type(exc).__name__}"] += 1
            samples[name].append(elapsed)
            i += 1
            time.sleep(max(0.0, PROBE_INTERVAL_S - elapsed / 1000))
    result: dict[str, Any] = {name: percentiles(values) for name, values in samples.items()}
    result["errors"] = dict(errors)
    return result


def _vm(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(workdir: Path, baseline_s: float = 10.0, load_s: float = 20.0) -> dict[str, Any]:
    data = workdir / "hostile-data"
    log("hostile: ingesting the samples and a 4096x4096 image")
    build_archive(data, workdir)
    result: dict[str, Any] = {"baseline_s": baseline_s, "load_s": load_s}
    with pacsfhir_server(data, "", workdir / "hostile-serve.log") as (base, pid):
        ids = targets(base)
        result["idle_rss_mb"] = _vm(pid, "VmRSS")
        log(f"hostile: baseline probe for {baseline_s:.0f} s")
        result["baseline"] = probe(base, ids["patient"], baseline_s)
        log(f"hostile: {len(CLIENTS)} hostile clients for {load_s:.0f} s while probing")
        context = multiprocessing.get_context("spawn")
        queue: Any = context.Queue()
        go: Any = context.Event()
        deadline_wall: Any = context.Value("d", 0.0)
        workers = [
            context.Process(
                target=_hostile_worker_wall,
                args=(kind, base, ids, go, deadline_wall, queue),
                daemon=True,
            )
            for kind in CLIENTS
        ]
        for worker in workers:
            worker.start()
        for _ in workers:  # every client has started and imported what it needs
            queue.get(timeout=120)
        cpu_before = _cpu_seconds(pid)
        deadline_wall.value = time.time() + load_s
        go.set()
        time.sleep(1.0)  # let every hostile client get going before measuring
        result["under_load"] = probe(base, ids["patient"], load_s - 1.0)
        hostile: dict[str, Any] = {}
        for _ in workers:
            try:
                kind, statuses, seconds = queue.get(timeout=150)
                hostile[kind] = {"statuses": statuses, "seconds": seconds}
            except Exception:  # a client stuck past its deadline is reported as such
                break
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
        result["hostile"] = hostile
        result["server_cpu_s_under_load"] = round(_cpu_seconds(pid) - cpu_before, 1)
        result["peak_rss_mb"] = _vm(pid, "VmHWM")
        result["after"] = probe(base, ids["patient"], 2.0)
    result["load_average"] = os.getloadavg()
    return result


def _hostile_worker_wall(
    kind: str, base: str, ids: dict[str, str], go: Any, deadline_wall: Any, out: Any
) -> None:
    """Say ready, wait for the start, then run until the deadline (set at the start, in
    wall time: spawned processes do not share the monotonic clock's origin)."""
    out.put(("ready", kind))
    go.wait(timeout=300)
    _hostile_worker(kind, base, ids, time.monotonic() + (deadline_wall.value - time.time()), out)


# -- report ---------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    for phase in ("baseline", "under_load", "after"):
        probes = result.get(phase, {})
        for name in ("metadata", "patient search"):
            q = probes.get(name, {})
            errors = sum(n for k, n in probes.get("errors", {}).items() if k.startswith(name))
            rows.append(
                [
                    f"{phase.replace('_', ' ')}: {name}",
                    q.get("n"),
                    q.get("p50_ms"),
                    q.get("p99_ms"),
                    q.get("max_ms"),
                    errors,
                ]
            )
    parts = [
        table(
            f"HOSTILE CLIENTS: probe latency, {result['baseline_s']:.0f} s alone then "
            f"{result['load_s']:.0f} s beside {len(result.get('hostile', {}))} hostile clients "
            f"(target p99 < {TARGET_P99_MS:.0f} ms)",
            ["phase: probe", "n", "p50 ms", "p99 ms", "max ms", "errors"],
            rows,
        )
    ]
    hostile_rows = [
        [kind, h["seconds"], ", ".join(f"{k} x{n}" for k, n in sorted(h["statuses"].items()))]
        for kind, h in result.get("hostile", {}).items()
    ]
    parts.append(
        table("HOSTILE CLIENTS: what each got", ["client", "seconds", "answers"], hostile_rows)
    )
    parts.append(
        f"  server: idle RSS {result.get('idle_rss_mb')} MB, peak RSS (VmHWM) "
        f"{result.get('peak_rss_mb')} MB, CPU {result.get('server_cpu_s_under_load')} s under "
        f"load; machine load average {tuple(round(x, 2) for x in result['load_average'])}"
    )
    return "\n\n".join(parts)


def targets_met(result: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for name in ("metadata", "patient search"):
        value = result.get("under_load", {}).get(name, {}).get("p99_ms")
        checks.append(
            {
                "check": f"hostile load: {name} p99 ms",
                "value": value,
                "target": f"< {TARGET_P99_MS:.0f}",
                "ok": value is not None and value < TARGET_P99_MS,
            }
        )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds of probing alone")
    parser.add_argument("--load", type=float, default=20.0, help="seconds of hostile load")
    parser.add_argument("--output", type=Path, help="JSON results file (default bench/results/)")
    args = parser.parse_args(argv)
    if args.baseline <= 0 or args.load <= 2:
        parser.error("--baseline must be positive and --load more than 2 seconds")
    with tempfile.TemporaryDirectory(prefix="pacsfhir-hostile-") as tmp:
        result = run(Path(tmp), args.baseline, args.load)
    result["targets"] = targets_met(result)
    output = args.output or RESULTS / f"hostile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    for check in result["targets"]:
        verdict = "PASS" if check["ok"] else "FAIL"
        print(f"  {check['check']}: {check['value']} ({check['target']}): {verdict}")
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
