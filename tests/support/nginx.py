"""A real nginx (Debian's ``nginx-light``) in front of pacsfhir for the relay offload's
tests and bench: a throwaway prefix directory, the ``server`` block ``pacsfhir
nginx-config`` writes, run in the foreground and stopped with the test."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_problem() -> str | None:
    if not Path(NGINX).exists():
        return "nginx is not installed (Debian package nginx-light)"
    return None


class Nginx:
    def __init__(self, folder: Path, server_block: str, port: int) -> None:
        self.folder = folder
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        temp = folder / "temp"
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (temp / name).mkdir(parents=True, exist_ok=True)
        (folder / "server.conf").write_text(server_block)
        (folder / "nginx.conf").write_text(
            f"""worker_processes 1;
error_log {folder}/error.log warn;
pid {folder}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {folder}/server.conf;
}}
"""
        )

    def __enter__(self) -> Self:
        self.process = subprocess.Popen(
            [
                NGINX,
                "-p",
                str(self.folder),
                "-c",
                str(self.folder / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,  # read only when it fails to start (it says why there)
        )
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                said = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise RuntimeError(f"nginx exited: {said[-2000:]} {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not listen: {self.error_log()}") from None
                time.sleep(0.05)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
