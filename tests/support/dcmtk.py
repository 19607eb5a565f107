"""dcmtk's command-line peers (Debian package dcmtk): ``storescu`` and ``echoscu`` as a
modality would run them, in subprocesses, bounded in time."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

TIMEOUT = 300.0


def dcmtk_problem() -> str | None:
    missing = [tool for tool in ("storescu", "echoscu") if shutil.which(tool) is None]
    if missing:
        return f"dcmtk is not installed ({', '.join(missing)} not found; Debian package dcmtk)"
    return None


@dataclass(frozen=True)
class Run:
    returncode: int
    output: str


def _run(args: Sequence[str]) -> Run:
    done = subprocess.run(
        list(args), capture_output=True, text=True, errors="replace", timeout=TIMEOUT
    )
    return Run(done.returncode, done.stdout + done.stderr)


def echoscu(port: int, called: str, calling: str = "ECHOSCU") -> Run:
    return _run(["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)])


def storescu(
    port: int,
    called: str,
    paths: Sequence[str],
    *options: str,
    calling: str = "STORESCU",
) -> Run:
    """Send files and folders (recursively, the files' own transfer syntaxes proposed,
    going on past a file it cannot read or send)."""
    return _run(
        [
            "storescu",
            "-aet",
            calling,
            "-aec",
            called,
            "+sd",
            "+r",
            "-nh",
            *options,
            "127.0.0.1",
            str(port),
            *paths,
        ]
    )
