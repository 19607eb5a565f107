"""What every answer to a hostile request must be, and the ledger of what the fuzz
suite tried and found (printed at the end of the session, written to
``.cache/fuzz/figures.json``)."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
FIGURES = REPO / ".cache" / "fuzz" / "figures.json"
# 503 (index busy or unreachable, with Retry-After: errors.ServiceUnavailable) is the one
# 5xx the server answers by design.
ALLOWED_5XX = frozenset({503})


def is_dicomweb_path(path: str) -> bool:
    """The server's own rule (``api.dicomweb_context.is_dicomweb``) on the decoded path."""
    return path.startswith("/dicom-web/") or "/$wado-rs" in path or path == "/wado"


def problems(response: httpx.Response) -> list[str]:
    """What is wrong with an answer to a hostile request (empty when it is fine)."""
    status = response.status_code
    found: list[str] = []
    if status >= 500 and status not in ALLOWED_5XX:
        found.append(f"HTTP {status}")
    if status == 503 and "retry-after" not in response.headers:
        found.append("503 without a Retry-After header")
    if status == 405 and "allow" not in response.headers:
        found.append("405 without an Allow header")
    if status < 400:
        return found
    try:
        body = json.loads(response.content)
    except ValueError:
        return [*found, f"{status} body is not JSON: {response.content[:120]!r}"]
    if is_dicomweb_path(response.request.url.path):
        store_response = isinstance(body, dict) and "00081198" in body  # FailedSOPSequence
        if "warning" not in response.headers and not store_response:
            found.append(f"DICOMweb {status} without a Warning header")
        if not isinstance(body, dict):
            found.append(f"DICOMweb {status} body is not a JSON object")
    elif not (isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"):
        found.append(f"FHIR {status} body is not an OperationOutcome: {response.content[:120]!r}")
    return found


def describe_exception(exc: BaseException) -> str:
    """Type, message and the deepest pacsfhir frame: one line that tells 5xx apart."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/pacsfhir/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    inner = ""
    if exc.__context__ is not None and exc.__context__ is not exc:
        inner = f" (during {type(exc.__context__).__name__})"
    return f"{type(exc).__name__}: {str(exc)[:160]} at {where}{inner}"


def header_problem(name: bytes, value: bytes) -> str:
    """A response header value that is not visible ASCII (RFC 9110 5.5: obs-text is
    obsolete, control characters are invalid), else ""."""
    if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
        return f"control character in response header {name.decode('latin-1')}"
    if any(b > 0x7E for b in value):
        return f"non-ASCII response header {name.decode('latin-1')}"
    return ""


class ExceptionRecorder:
    """ASGI wrapper that remembers the last exception the app raised (Starlette re-raises
    after answering 500), so each 5xx is told apart by its cause, and the response
    headers that are not ASCII (passed on decodable: the TestClient reads them as UTF-8
    and would turn them into a 500 of its own)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last = ""  # requests are sent one at a time; the app runs in another thread
        self.headers: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def checked_send(message: Any) -> None:
            if message.get("type") == "http.response.start":
                clean = []
                for name, value in message.get("headers", []):
                    problem = header_problem(name, value)
                    if problem:
                        self.headers.append(f"{problem}: {value[:80]!r}")
                        value = value.decode("latin-1").encode("ascii", "backslashreplace")
                    clean.append((name, value))
                message = {**message, "headers": clean}
            await send(message)

        try:
            await self.app(scope, receive, checked_send)
        except Exception as exc:
            self.last = describe_exception(exc)
            raise

    def take(self) -> tuple[str, list[str]]:
        last, self.last = self.last, ""
        headers, self.headers = self.headers, []
        return last, headers


@dataclass
class Finding:
    kind: str  # "request" or "file"
    where: str  # route, or the file path (ingest / STOW)
    problem: str
    cause: str
    example: str

    @property
    def key(self) -> tuple[str, str]:
        """What tells findings apart: the problem's kind, the exception type and where it
        was raised (not its message, which holds the hostile value)."""
        kind, _, where = self.cause.partition(":")
        return self.problem.split(":")[0], kind + " at " + where.rsplit(" at ", 1)[-1]


@dataclass
class Ledger:
    requests: int = 0
    files: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    server_peak_rss_mb: float | None = None
    mode: str = "in-process"

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def distinct(self) -> dict[tuple[str, str], list[Finding]]:
        groups: dict[tuple[str, str], list[Finding]] = {}
        for f in self.findings:
            groups.setdefault(f.key, []).append(f)
        return groups

    def fives(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "requests": self.requests,
            "files": self.files,
            "5xx": self.fives(),
            "statuses": dict(sorted(self.statuses.items())),
            "server_peak_rss_mb": self.server_peak_rss_mb,
            "distinct_findings": [
                {
                    "problem": problem,
                    "cause": cause,
                    "count": len(group),
                    "where": sorted({f.where for f in group})[:8],
                    "example": group[0].example,
                }
                for (problem, cause), group in self.distinct().items()
            ],
        }

    def write(self) -> Path:
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        FIGURES.write_text(json.dumps(self.summary(), indent=2, ensure_ascii=False) + "\n")
        return FIGURES


LEDGER = Ledger()


def examples(default: int) -> int:
    """Examples per route (or scale of the file corpus): ``PACSFHIR_FUZZ_EXAMPLES``."""
    try:
        return max(1, int(os.environ.get("PACSFHIR_FUZZ_EXAMPLES", default)))
    except ValueError:
        print("PACSFHIR_FUZZ_EXAMPLES is not a number; using the default", file=sys.stderr)
        return default
