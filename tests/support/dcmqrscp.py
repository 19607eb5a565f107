"""dcmtk's ``dcmqrscp`` for tests: a real DIMSE Query/Retrieve SCP (C-FIND, C-GET,
C-MOVE, and C-STORE into its own storage), on a free loopback port with a temporary
configuration and database, loaded with ``storescu``, stopped at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

DCMQRSCP = shutil.which("dcmqrscp") or "/usr/bin/dcmqrscp"
STORESCU = shutil.which("storescu") or "/usr/bin/storescu"
AE_TITLE = "QRSCP"


def dcmtk_problem() -> str | None:
    if not (Path(DCMQRSCP).exists() and Path(STORESCU).exists()):
        return "dcmtk is not installed (Debian package dcmtk)"
    return None


class Dcmqrscp:
    """``move_destinations``: AE title -> (host, port) this SCP may C-MOVE to."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        move_destinations: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.ae_title = AE_TITLE
        self.move_destinations = move_destinations or {}
        self.process: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        database = self.workdir / "db"
        database.mkdir(parents=True, exist_ok=True)
        hosts = "\n".join(
            f"{ae.lower()} = ({ae}, {host}, {port})"
            for ae, (host, port) in self.move_destinations.items()
        )
        return (
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 65536\nMaxAssociations = 16\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{AE_TITLE} {database} RW (200, 1024mb) ANY\nAETable END\n"
        )

    def __enter__(self) -> Dcmqrscp:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "dcmqrscp.cfg"
        config.write_text(self._config())
        self.log = open(self.workdir / "dcmqrscp.log", "wb")
        self.process = subprocess.Popen(
            [DCMQRSCP, "-c", str(config), str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,  # it forks a child per association: one group to stop
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dcmqrscp exited: {self.log_tail()}")
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"dcmqrscp did not start: {self.log_tail()}")

    def store(self, paths: Iterable[Path | str]) -> None:
        """Send files with ``storescu`` (every one must be accepted)."""
        files = [str(p) for p in paths]
        if not files:
            return
        result = subprocess.run(
            [
                STORESCU,
                "-aec",
                AE_TITLE,
                "-aet",
                "LOADER",
                "--propose-lossless",
                "-R",
                "127.0.0.1",
                str(self.port),
                *files,
            ],
            capture_output=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed: {result.stderr.decode(errors='replace')[-2000:]}")

    def log_tail(self) -> str:
        return (self.workdir / "dcmqrscp.log").read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        """Stop it dead, associations in progress included (an upstream that dies)."""
        self._signal(signal.SIGKILL)

    def _signal(self, number: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, number)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __exit__(self, *_exc: object) -> None:
        self._signal(signal.SIGTERM)
        self.log.close()
