"""Mutated DICOM files (tests/support/mutate.py) through both ingest paths: the function
behind ``pacsfhir ingest`` and STOW-RS. Nothing escapes ingest and STOW never answers
5xx; each file is stored (then retrieved byte for byte with WADO-RS and found by FHIR
search) or rejected with a reason; afterwards the index is consistent with the blobs.
On each backend, each on a fresh archive."""

from __future__ import annotations

import email
import email.policy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.consistency import check as consistency_check
from pacsfhir.dicom.ingest import Outcome, Result, ingest
from tests.fuzz.invariants import (
    LEDGER,
    ExceptionRecorder,
    Finding,
    describe_exception,
    examples,
    problems,
)
from tests.support import mutate

# pydicom warns about the invalid values these files and requests carry; a server runs
# with warnings as warnings, so the suite does too (not as the errors the rest of the
# tests make them).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SCALE = max(1, examples(30) // 30)  # PACSFHIR_FUZZ_EXAMPLES scales the file corpus too
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module")
def mutants(tmp_path_factory: pytest.TempPathFactory) -> list[mutate.Mutant]:
    return mutate.corpus(tmp_path_factory.mktemp("mutants"), scale=SCALE)


@pytest.fixture
def served(archive: Archive) -> Iterator[tuple[TestClient, ExceptionRecorder]]:
    recorder = ExceptionRecorder(create_app(archive.settings, archive))
    with TestClient(recorder, raise_server_exceptions=False) as client:
        yield client, recorder


def parts(response: httpx.Response) -> list[bytes]:
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + response.content, policy=email.policy.HTTP)
    return [p.get_payload(decode=True) for p in message.iter_parts()]  # type: ignore[misc]


def retrieved(client: TestClient, study: str, series: str, sop: str) -> bytes | None:
    url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    response = client.get(url, headers={"Accept": DICOM_ANY})
    if response.status_code != 200:
        return None
    (data,) = parts(response)
    return data


def stored_location(archive: Archive, sop: str) -> tuple[str, str] | None:
    from sqlalchemy import select

    from pacsfhir.index.schema import instance, series, study

    query = (
        select(study.c.StudyInstanceUID, series.c.SeriesInstanceUID)
        .join(series, instance.c.series_pk == series.c.pk)
        .join(study, series.c.study_pk == study.c.pk)
        .where(instance.c.SOPInstanceUID == sop)
    )
    with archive.engine.connect() as conn:
        row = conn.execute(query).first()
    return (row[0], row[1]) if row else None


def fhir_search_problem(client: TestClient, study_uid: str) -> str:
    """ "" when FHIR search by the Study Instance UID finds the study, else what it said."""
    bundle = client.get(
        "/fhir/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
    )
    if bundle.status_code == 200 and bundle.json().get("total") == 1:
        return ""
    return f"HTTP {bundle.status_code} {bundle.text[:300]}"


def check_stored(
    archive: Archive, client: TestClient, sources: dict[str, mutate.Mutant], where: str
) -> list[str]:
    """Each instance stored from ``sources`` (SOP UID -> the bytes that were last stored
    under it) is retrievable byte for byte and found by FHIR search."""
    bad = []
    for sop, mutant in sources.items():
        location = stored_location(archive, sop)
        if location is None:
            bad.append(f"{where}: {mutant.name}: {sop} reported stored but not in the index")
            continue
        if retrieved(client, location[0], location[1], sop) != mutant.data:
            bad.append(f"{where}: {mutant.name}: {sop} not retrieved byte for byte")
        problem = fhir_search_problem(client, location[0])
        if problem:
            bad.append(
                f"{where}: {mutant.name}: study {location[0]} not found by FHIR search: {problem}"
            )
    return bad


def check_consistent(archive: Archive) -> list[str]:
    # staging_grace=0: nothing is in flight now, so any staged file is a leftover
    report = consistency_check(archive.engine, archive.blobs, verify_hash=True, staging_grace=0.0)
    return [] if report.clean else [f"index and blobs disagree: {report}"]


def test_ingest_stores_or_rejects_each_mutated_file(
    archive: Archive,
    served: tuple[TestClient, ExceptionRecorder],
    mutants: list[mutate.Mutant],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    names: dict[str, mutate.Mutant] = {}
    for i, mutant in enumerate(mutants):
        path = folder / f"{i:04d}.dcm"
        path.write_bytes(mutant.data)
        names[str(path)] = mutant
    results: list[Result] = []
    LEDGER.files += len(mutants)
    try:
        ingest([str(folder)], archive.engine, archive.blobs, workers=1, on_result=results.append)
    except Exception as exc:  # the invariant: nothing escapes ingest
        cause = describe_exception(exc)
        LEDGER.add(Finding("file", "ingest", "exception escaped ingest", cause, cause))
        pytest.fail(f"an exception escaped ingest: {cause}")
    bad: list[str] = []
    seen = {r.source for r in results}
    bad += [f"no result for {names[p].name}" for p in names if p not in seen]
    last: dict[str, mutate.Mutant] = {}
    for result in results:  # in order: the last version stored under a SOP UID wins
        mutant = names[result.source]
        if result.outcome is Outcome.REJECTED:
            if not result.reason:
                bad.append(f"{mutant.name}: rejected without a reason")
        elif result.outcome in (Outcome.STORED, Outcome.REPLACED):
            last[result.sop_uid] = mutant
    client, _ = served
    bad += check_stored(archive, client, last, "ingest")
    bad += check_consistent(archive)
    for problem in bad:
        LEDGER.add(Finding("file", "ingest", problem.split(":")[0], "", problem))
    assert not bad, "\n".join(bad[:30])


def stow(client: TestClient, files: list[bytes]) -> httpx.Response:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
        for data in files
    )
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response: httpx.Response = client.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
    )
    return response


def sequence(body: Any, tag: str) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return []
    return list(body.get(tag, {}).get("Value", []))


def test_stow_stores_or_rejects_each_mutated_file(
    archive: Archive, served: tuple[TestClient, ExceptionRecorder], mutants: list[mutate.Mutant]
) -> None:
    client, recorder = served
    bad: list[str] = []
    last: dict[str, mutate.Mutant] = {}
    for mutant in mutants:
        response = stow(client, [mutant.data])
        LEDGER.files += 1
        LEDGER.requests += 1
        LEDGER.statuses[response.status_code] += 1
        cause, header_problems = recorder.take()
        for problem in problems(response) + header_problems:
            finding = Finding(
                "file", "STOW-RS", problem, cause, f"{mutant.name}: {response.text[:200]}"
            )
            LEDGER.add(finding)
            bad.append(f"{mutant.name}: {problem} <- {cause}")
        if response.status_code >= 500:
            continue
        body = response.json() if response.content else None
        stored = sequence(body, "00081199")
        failed = sequence(body, "00081198")
        if response.status_code == 200 and len(stored) != 1:
            bad.append(f"{mutant.name}: 200 without the one stored instance: {response.text[:200]}")
        if response.status_code >= 400 and not (failed or "warning" in response.headers):
            bad.append(f"{mutant.name}: {response.status_code} without a reason")
        for item in failed:
            if "00081197" not in item:  # FailureReason
                bad.append(f"{mutant.name}: failed without a FailureReason: {item}")
        for item in stored:
            last[item["00081155"]["Value"][0]] = mutant
    bad += check_stored(archive, client, last, "STOW-RS")
    bad += check_consistent(archive)
    assert not bad, "\n".join(bad[:30])


def test_stow_of_many_mutated_files_in_one_request(
    archive: Archive, served: tuple[TestClient, ExceptionRecorder], mutants: list[mutate.Mutant]
) -> None:
    """All the small mutants in one multipart body: one answer, each part accounted for."""
    client, recorder = served
    small = [m.data for m in mutants if len(m.data) < 100_000]
    response = stow(client, small)
    LEDGER.requests += 1
    LEDGER.statuses[response.status_code] += 1
    cause, header_problems = recorder.take()
    found = problems(response) + header_problems
    assert not found, f"{found} <- {cause}"
    body = response.json()
    accounted = len(sequence(body, "00081199")) + len(sequence(body, "00081198"))
    assert 0 < accounted <= len(small)
    assert not check_consistent(archive)
