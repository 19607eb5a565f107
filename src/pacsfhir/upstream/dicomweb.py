"""A DICOMweb upstream (httpx): QIDO-RS, and WADO-RS streamed through as it arrives.

One HTTP client per upstream (keep-alive), with its credentials (basic or bearer) and
timeout; the answer's status says what failed (``UpstreamError``), a transport error or
timeout likewise. Credentials never reach the log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from pacsfhir import __version__
from pacsfhir.search.qido import QidoQuery
from pacsfhir.upstream.bulk_get import BulkGetError, bulk_get
from pacsfhir.upstream.config import DicomwebUpstream
from pacsfhir.upstream.errors import UpstreamError
from pacsfhir.upstream.query import UNIQUE_TAGS, qido_path, qido_requests

DICOM_JSON = "application/dicom+json"
_SAFE = "*^\\,-._~:"  # besides letters and digits, kept as they are in a query value
MAX_QIDO_BYTES = 64 << 20
USER_AGENT = f"pacsfhir/{__version__}"


class DicomwebUpstreamClient:
    def __init__(self, upstream: DicomwebUpstream) -> None:
        self.upstream = upstream
        authorization = upstream.credentials.authorization
        self._authorization = [("Authorization", authorization)] if authorization else []
        self._client = httpx.Client(
            headers={"Accept": DICOM_JSON, **dict(self._authorization)},
            timeout=upstream.timeout,
            follow_redirects=False,
            trust_env=False,
        )

    def close(self) -> None:
        self._client.close()

    def qido(self, path: str, params: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
        """``GET {base}{path}?params`` (``/studies``, ``/studies/{uid}/series``...): the
        DICOM JSON matches (204: none); UpstreamError otherwise."""
        name = self.upstream.name
        target = self.upstream.base_url + path
        if params:
            target += "?" + query_string(params)
        try:
            with self._client.stream("GET", target) as response:
                if response.status_code == 204:
                    return []
                if response.status_code != 200:
                    raise UpstreamError(
                        f"{name}: QIDO-RS {path} answered {response.status_code}{_reason(response)}"
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_QIDO_BYTES:
                        raise UpstreamError(f"{name}: QIDO-RS answer over {MAX_QIDO_BYTES} bytes")
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"{name}: QIDO-RS {path} timed out", timed_out=True) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{name}: QIDO-RS {path}: {type(exc).__name__}") from exc
        try:
            found = json.loads(bytes(body)) if body.strip() else []
        except ValueError as exc:
            raise UpstreamError(f"{name}: QIDO-RS {path} answer is not JSON") from exc
        if not isinstance(found, list) or not all(isinstance(m, dict) for m in found):
            raise UpstreamError(f"{name}: QIDO-RS {path} answer is not a DICOM JSON array")
        return found

    def search(self, query: QidoQuery) -> list[dict[str, Any]]:
        """Every match of a parsed QIDO query (unpaged; ``upstream.query.qido_requests``),
        one per entity of its level."""
        unique = f"{UNIQUE_TAGS[query.level]:08X}"
        found: dict[str, dict[str, Any]] = {}
        for params in qido_requests(query):
            for match in self.qido(qido_path(query), params):
                uid = str((match.get(unique, {}).get("Value") or [""])[0])
                found.setdefault(uid, match)
        return list(found.values())

    def header(self, study_uid: str, series_uid: str, sop_uid: str) -> dict[str, Any]:
        """One instance's attributes as DICOM JSON (WADO-RS metadata)."""
        path = f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata"
        found = self.qido(path)  # the same answer shape: a DICOM JSON array
        if len(found) != 1:
            raise UpstreamError(f"{self.upstream.name}: {path} answered {len(found)} objects")
        return found[0]

    @contextmanager
    def retrieve(self, path: str, accept: str) -> Iterator[Retrieved]:
        """``GET {base}{path}`` (a WADO-RS resource) with the client's ``accept``, the
        answer streamed as it arrives (never held whole, read in large pieces:
        ``upstream.bulk_get``): its status, content type and body chunks. A failure
        before the answer is UpstreamError; one during the body surfaces from the chunk
        iterator as UpstreamError too (a transfer cut short must never pass for a whole
        one)."""
        name = self.upstream.name
        headers = [
            ("Accept", accept),
            # no compression: the bytes are relayed as they come (a DICOM file
            # compresses little, and decompressing would cost the relay a core)
            ("Accept-Encoding", "identity"),
            ("User-Agent", USER_AGENT),
            *self._authorization,
        ]
        url = self.upstream.base_url + path
        try:
            with bulk_get(url, headers, self.upstream.timeout) as answer:
                yield Retrieved(
                    answer.status,
                    answer.headers.get("content-type", ""),
                    _chunks(answer.body, name, path),
                )
        except BulkGetError as exc:
            raise UpstreamError(f"{name}: WADO-RS {path}: {exc.message}", exc.timed_out) from exc


@dataclass(frozen=True)
class Retrieved:
    status: int
    content_type: str
    chunks: Iterator[bytes | memoryview]


def _chunks(
    body: Iterator[bytes | memoryview], name: str, path: str
) -> Iterator[bytes | memoryview]:
    try:
        yield from body
    except BulkGetError as exc:
        what = "stalled" if exc.timed_out else "cut"
        raise UpstreamError(
            f"{name}: WADO-RS {path} {what} mid-transfer ({exc.message})", exc.timed_out
        ) from exc


def query_string(params: Sequence[tuple[str, str]]) -> str:
    """``params`` with only what must be escaped escaped: the matching characters ``*``,
    ``^``, ``\\`` and ``,`` go as they are (Orthanc 1.10's QIDO-RS does not decode
    ``%2A``, ``%5E`` or ``%5C`` in a value, so an escaped wildcard, person name or list
    matches nothing there)."""
    return "&".join(f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}" for k, v in params)


def _reason(response: httpx.Response) -> str:
    warning = response.headers.get("warning", "")
    return f" ({warning[:200]})" if warning else ""
