"""`pacsfhir demo` and `pacsfhir serve` as a user runs them: real processes, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
from dicomweb_client.api import DICOMwebClient

from tests.conftest import free_port, skip_or_fail
from tests.support.dcmtk import dcmtk_problem, storescu
from tests.support.dicom_factory import load_template, write_variant
from tests.support.processes import wait_for_http


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pacsfhir", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes]) -> str:
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    return err.decode()


def test_demo_ingests_samples_and_serves(tmp_path: Path) -> None:
    port = free_port()
    process = _start(["demo", "--data", str(tmp_path / "demo"), "--port", str(port)], {})
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        wait_for_http(f"{base}/metadata", process)
        bundle = httpx.get(f"{base}/ImagingStudy", params={"modality": "CT"}).json()
        assert bundle["total"] > 0
        names = httpx.get(f"{base}/ImagingStudy", params={"patient.name": "buc"}).json()
        assert names["total"] == 1
    finally:
        err = _stop(process)
    assert "DEVELOPMENT MODE" in err
    assert f"curl -s '{base}/metadata'" in err


def test_serve_without_auth_refuses_non_loopback(tmp_path: Path) -> None:
    process = _start(["serve", "--host", "0.0.0.0", "--data", str(tmp_path)], {})
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "loopback only" in err.decode()


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def _workers(pid: int) -> set[int]:
    """The uvicorn workers among ``pid``'s children (multiprocessing's resource tracker is
    one too)."""
    return {
        child
        for child in _children(pid)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    }


def test_serve_with_several_workers_shares_one_index(tmp_path: Path) -> None:
    """``pacsfhir serve --workers 2`` with the C-STORE listener: two worker processes
    answer HTTP over one index (an instance stored through the listener, which runs once in
    the parent, and one stored by STOW-RS through a worker are both seen by every request);
    a worker killed is replaced and the server keeps answering; SIGTERM ends them all."""
    problem = dcmtk_problem()
    if problem:
        skip_or_fail(problem)
    http_port, dimse_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pacsfhir",
                "serve",
                "--data",
                str(tmp_path / "data"),
                "--port",
                str(http_port),
                "--workers",
                "2",
                "--dimse-port",
                str(dimse_port),
                "--ae-title",
                "WORKERS",
            ],
            env={k: v for k, v in os.environ.items() if not k.startswith("PACSFHIR_")},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_for_http(f"{base}/fhir/metadata", process)
        assert len(_workers(process.pid)) == 2
        template = load_template()
        listened = str(
            write_variant(template, tmp_path / "a.dcm", PatientID="WORKERS-1").StudyInstanceUID
        )
        assert storescu(dimse_port, "WORKERS", [str(tmp_path / "a.dcm")]).returncode == 0
        posted = str(
            write_variant(template, tmp_path / "b.dcm", PatientID="WORKERS-2").StudyInstanceUID
        )
        client = DICOMwebClient(f"{base}/dicom-web")
        client.store_instances([pydicom.dcmread(tmp_path / "b.dcm")])
        expected = {listened, posted}
        for _ in range(20):  # new connections, spread over the workers by the kernel
            found = httpx.get(f"{base}/dicom-web/studies", params={"PatientID": "WORKERS-*"})
            assert {s["0020000D"]["Value"][0] for s in found.json()} == expected

        victim = min(_workers(process.pid))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = _workers(process.pid)
            if len(workers) == 2 and victim not in workers:
                break
            time.sleep(0.2)
        assert len(workers) == 2
        assert victim not in workers
        assert httpx.get(f"{base}/fhir/metadata").status_code == 200
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0, log.read_text()[-2000:]
    for worker in workers:
        assert not Path(f"/proc/{worker}").exists() or b"zombie" in _state(worker)


def _state(pid: int) -> bytes:
    return Path(f"/proc/{pid}/status").read_bytes()
