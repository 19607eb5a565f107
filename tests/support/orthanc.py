"""A real Orthanc (Debian's package, with its DICOMweb plugin) for tests: a temporary
config with free loopback ports, storage in a temporary folder, stopped at the end."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_problem() -> str | None:
    if not Path(ORTHANC).exists():
        return "Orthanc is not installed (Debian package orthanc)"
    if not DICOMWEB_PLUGIN.exists():
        return "Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
    return None


class Orthanc:
    """``users``: HTTP basic credentials (user -> password) Orthanc then requires;
    ``modalities``: AE title -> (host, port) it may C-MOVE to."""

    def __init__(
        self,
        workdir: Path,
        http_port: int,
        dicom_port: int,
        users: dict[str, str] | None = None,
        modalities: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        self.workdir = workdir
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.users = users or {}
        self.modalities = modalities or {}
        self.base_url = f"http://127.0.0.1:{http_port}"
        self.dicomweb_url = f"{self.base_url}/dicom-web"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "pacsfhir-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANCTEST",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomModalities": {
                ae.lower(): [ae, host, port] for ae, (host, port) in self.modalities.items()
            },
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        self.log = open(self.workdir / "orthanc.log", "wb")
        self.process = subprocess.Popen(
            [ORTHANC, str(path)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self.log_tail()}")
            try:
                answer = httpx.get(f"{self.base_url}/system", timeout=1, auth=self.auth)
                if answer.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not start: {self.log_tail()}")

    def log_tail(self) -> str:
        return (self.workdir / "orthanc.log").read_text(errors="replace")[-2000:]

    @property
    def auth(self) -> tuple[str, str] | None:
        """Credentials of the first registered user (None: no authentication)."""
        return next(iter(self.users.items()), None)

    def store(self, paths: Iterable[Path]) -> int:
        """POST files to /instances; return how many Orthanc accepted."""
        accepted = 0
        with httpx.Client(base_url=self.base_url, timeout=60, auth=self.auth) as client:
            for path in paths:
                response = client.post(
                    "/instances",
                    content=path.read_bytes(),
                    headers={"Content-Type": "application/dicom"},
                )
                accepted += response.status_code == 200
        return accepted

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
