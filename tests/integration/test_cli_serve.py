"""`pacsfhir demo` and `pacsfhir serve` as a user runs them: real processes, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import free_port
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
