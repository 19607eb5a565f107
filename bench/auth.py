"""``python -m bench.auth`` (also ``bench.run --only auth``): what token checking adds to a
request, and how often the authorization server is asked.

The same `pacsfhir serve` (SQLite, pydicom's sample files) runs three times: without
token checks (``PACSFHIR_AUTH=none``, the baseline), checking JWTs, and by RFC 7662
introspection, each against the test suite's authorization server (authlib; it runs in
this process, `tests/support/authserver.py`). A read `GET /fhir/ImagingStudy/{uid}` is
timed from one client (sequential) and from 8 clients at once (threads, keep-alive), with
one system token per client: the first request of each token is the cold one (keys or
introspection fetched), the rest run on a warm cache. Added latency = p50 with tokens
minus p50 without. Introspection calls are counted by the authorization server.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import log, pacsfhir_command, pacsfhir_env, pacsfhir_server, percentiles, table
from bench.dicomgen import PYDICOM_TEST_FILES
from tests.support.authserver import AuthServer

CLIENT, SECRET = "bench-backend", "bench-secret"
SEQUENTIAL = 400
CONCURRENT, PER_CLIENT = 8, 150


def _modes(server: AuthServer) -> dict[str, dict[str, str]]:
    return {
        "none": {},
        "jwt": {"PACSFHIR_AUTH": "jwt", "PACSFHIR_JWT_ISSUER": server.issuer},
        "introspection": {
            "PACSFHIR_AUTH": "introspection",
            "PACSFHIR_INTROSPECTION_URL": server.introspection_url,
            "PACSFHIR_INTROSPECTION_CLIENT_ID": server.introspection_client_id,
            "PACSFHIR_INTROSPECTION_CLIENT_SECRET": server.introspection_client_secret,
        },
    }


def _timed(client: httpx.Client, path: str, headers: dict[str, str], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
    return samples


def _run_mode(base: str, path: str, token: Any) -> dict[str, Any]:
    """Sequential then concurrent timings; ``token()`` gives a new token (None: none)."""

    def headers() -> dict[str, str]:
        value = token()
        return {"Authorization": f"Bearer {value}"} if value else {}

    with httpx.Client(base_url=base, timeout=30) as client:
        first = headers()
        cold = _timed(client, path, first, 1)
        sequential = _timed(client, path, first, SEQUENTIAL)
    results: list[list[float]] = [[] for _ in range(CONCURRENT)]

    def worker(i: int, own: dict[str, str]) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            results[i] = _timed(client, path, own, PER_CLIENT)

    threads = [threading.Thread(target=worker, args=(i, headers())) for i in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "cold_ms": round(cold[0], 2),
        "sequential": percentiles(sequential),
        "concurrent": percentiles([s for r in results for s in r]),
    }


def run(workdir: Path) -> dict[str, Any]:
    data = workdir / "auth-data"
    log("auth: ingesting pydicom's test files")
    subprocess.run(
        pacsfhir_command("ingest", str(PYDICOM_TEST_FILES), "--data", str(data)),
        capture_output=True,
        env=pacsfhir_env(),
        timeout=600,
        check=False,
    )
    result: dict[str, Any] = {}
    with AuthServer() as server:
        server.register_client(CLIENT, secret=SECRET, token_lifetime=3600)
        for mode, env in _modes(server).items():
            log(f"auth: {mode}")
            with pacsfhir_server(data, "", workdir / f"auth-{mode}.log", env) as (base, _pid):
                server.default_audience = f"{base}/fhir"
                with httpx.Client(base_url=base, timeout=30) as client:
                    token0 = (
                        server.client_credentials_token(CLIENT, SECRET, "system/*.rs")
                        if mode != "none"
                        else ""
                    )
                    auth = {"Authorization": f"Bearer {token0}"} if token0 else {}
                    study = client.get("/fhir/ImagingStudy?_count=1", headers=auth).json()
                path = f"/fhir/ImagingStudy/{study['entry'][0]['resource']['id']}"
                issued = 0

                def token(mode: str = mode) -> str:
                    nonlocal issued
                    if mode == "none":
                        return ""
                    issued += 1
                    return server.client_credentials_token(CLIENT, SECRET, "system/*.rs")

                before = server.introspection_calls
                timings = _run_mode(base, path, token)
                timings["tokens"] = issued
                timings["introspection_calls"] = server.introspection_calls - before
                result[mode] = timings
    return result


def report(result: dict[str, Any]) -> str:
    base_seq = result["none"]["sequential"]["p50_ms"]
    base_con = result["none"]["concurrent"]["p50_ms"]
    rows = []
    for mode, r in result.items():
        seq, con = r["sequential"], r["concurrent"]
        rows.append(
            [
                mode,
                r["cold_ms"],
                seq["p50_ms"],
                seq["p99_ms"],
                round(seq["p50_ms"] - base_seq, 2),
                con["p50_ms"],
                con["p99_ms"],
                round(con["p50_ms"] - base_con, 2),
                r.get("tokens", 0),
                r.get("introspection_calls", 0),
            ]
        )
    return table(
        f"TOKEN CHECKS: GET /fhir/ImagingStudy/{{uid}}, 1 client x {SEQUENTIAL} then "
        f"{CONCURRENT} clients x {PER_CLIENT} (target: added p50 < 1 ms)",
        [
            "mode",
            "cold ms",
            "1c p50",
            "1c p99",
            "1c added",
            "8c p50",
            "8c p99",
            "8c added",
            "tokens",
            "introspections",
        ],
        rows,
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pacsfhir-bench-auth-") as tmp:
        print(report(run(Path(tmp))))


if __name__ == "__main__":
    main()
