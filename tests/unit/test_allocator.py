"""``pacsfhir.allocator``: the malloc settings apply on glibc, in a fresh interpreter
(they are process-wide, so not in the test process), and the environment overrides."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = "from pacsfhir.allocator import tune_for_streaming; print(tune_for_streaming())"


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=clean | env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_applied_on_glibc() -> None:
    assert _probe() == "True"


def test_environment_takes_precedence() -> None:
    assert _probe(MALLOC_TRIM_THRESHOLD_="1048576") == "False"
