"""Orthanc (Debian's package) started the way the test fixtures do: a temporary config
with free loopback HTTP and DICOM ports, storage and index in a temporary folder, no
remote access, no authentication, the DICOMweb plugin; stopped at the end."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import TreeSampler, free_port, stop_process, tail, wait_http

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def orthanc_problem() -> str | None:
    if not Path(ORTHANC).exists() and not shutil.which("Orthanc"):
        return f"Orthanc not installed ({ORTHANC}; Debian package orthanc)"
    return None


@dataclass
class Orthanc:
    workdir: Path
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    version: str = ""
    log_path: Path = field(default_factory=Path)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        plugins = [DICOMWEB_PLUGIN] if Path(DICOMWEB_PLUGIN).exists() else []
        config = {
            "Name": "pacsfhir-bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": free_port(),
            "DicomAet": "BENCHORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "Plugins": plugins,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.log_path = self.workdir / "orthanc.log"
        binary = ORTHANC if Path(ORTHANC).exists() else (shutil.which("Orthanc") or ORTHANC)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [binary, str(config_path)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_http(f"{self.base_url}/system", self.proc, 60, "Orthanc")
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{tail(self.log_path)}") from exc
        self.version = str(httpx.get(f"{self.base_url}/system").json().get("Version", ""))
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30)
            self.proc = None

    def instance_count(self) -> int:
        return int(httpx.get(f"{self.base_url}/statistics", timeout=30).json()["CountInstances"])


@dataclass
class PostResult:
    seconds: float
    posted: int
    failed: int
    first_error: str
    memory: dict[str, Any]
    study_ids: dict[str, str]  # StudyInstanceUID -> Orthanc study id (from the responses)


def post_instances(orthanc: Orthanc, paths: Sequence[Path], workers: int) -> PostResult:
    """POST every file to /instances with ``workers`` threads sharing one httpx client
    (keep-alive, at most ``workers`` connections). The clock runs from the first request
    to the last response; each file is read inside the timed region (page cache)."""
    assert orthanc.proc is not None
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    failures: list[str] = []
    parents: dict[str, str] = {}
    lock = threading.Lock()

    with httpx.Client(base_url=orthanc.base_url, timeout=120, limits=limits) as client:

        def post(path: Path) -> None:
            body = path.read_bytes()
            try:
                response = client.post(
                    "/instances", content=body, headers={"Content-Type": "application/dicom"}
                )
            except httpx.HTTPError as exc:
                with lock:
                    failures.append(f"{path.name}: {type(exc).__name__}: {exc}")
                return
            with lock:
                if response.status_code != 200:
                    failures.append(f"{path.name}: HTTP {response.status_code} {response.text}")
                    return
                answer = response.json()
                if answer.get("Status") not in ("Success", "AlreadyStored"):
                    failures.append(f"{path.name}: {answer}")
                parents[answer.get("ParentStudy", "")] = ""

        sampler = TreeSampler(orthanc.proc.pid).start()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(post, paths))
        seconds = time.perf_counter() - started
        sampler.stop()
        study_ids: dict[str, str] = {}
        for orthanc_id in parents:
            if not orthanc_id:
                continue
            tags = client.get(f"/studies/{orthanc_id}").json().get("MainDicomTags", {})
            study_ids[tags.get("StudyInstanceUID", "")] = orthanc_id
    return PostResult(
        seconds=seconds,
        posted=len(paths) - len(failures),
        failed=len(failures),
        first_error=failures[0] if failures else "",
        memory=sampler.summary(),
        study_ids=study_ids,
    )
