"""The audit log: requests through the real app (development mode, and tokens of the test
authorization server) are recorded, allowed and refused alike, and come back through
``GET /fhir/AuditEvent``; no search value is ever stored; old events are forgotten; a
patient's token cannot read the log; every AuditEvent served is valid R4."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.index import audit
from pacsfhir.index.schema import audit_event
from pacsfhir.vocabulary.dates import US_PER_SECOND, format_instant
from pacsfhir.vocabulary.records import AuditRecord
from tests.integration.test_smart_auth import (
    FHIR_BASE,
    PATIENT_SCOPES,
    bearer,
    jwt_mode,
    studies_by_patient,
)
from tests.support.authserver import AuthServer
from tests.support.fhir_r4 import assert_valid

APP = "audit-viewer"
BACKEND = "audit-reader"
SECRET = "audit-secret"
DISTINCTIVE = "Zq7RareValue4411"


def events(client: TestClient, query: str, headers: dict[str, str] | None = None) -> list[Any]:
    response = client.get(f"/fhir/AuditEvent?_count=1000&{query}", headers=headers)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert_valid(bundle)
    found = [entry["resource"] for entry in bundle.get("entry", [])]
    for event in found:
        assert_valid(event)
    return found


@pytest.fixture
def dev(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive.settings, archive)) as client:
        yield client


def test_requests_are_recorded_and_searchable(dev: TestClient) -> None:
    start = format_instant(int((time.time() - 1) * US_PER_SECOND))
    assert dev.get("/fhir/ImagingStudy?modality=CT&_count=3").status_code == 200
    assert dev.get("/fhir/ImagingStudy/1.2.840.99.1").status_code == 404
    assert dev.get("/dicom-web/studies/1.2.840.99.2/metadata").status_code == 404
    assert dev.get("/fhir/metadata").status_code == 200  # public: not recorded
    found = events(dev, f"date=ge{start}")
    routes = [e["outcomeDesc"].split(" to ", 1)[1] for e in found]
    assert routes == [
        "GET /dicom-web/studies/{study}/metadata",
        "GET /fhir/ImagingStudy/{study_id}",
        "GET /fhir/ImagingStudy",
    ]
    search = found[2]
    assert (search["type"]["code"], search["action"], search["outcome"]) == ("110112", "E", "0")
    assert search["entity"][-1]["detail"][0]["valueString"] == "_count&modality"
    read = found[1]
    assert (read["type"]["code"], read["action"], read["outcome"]) == ("110110", "R", "4")
    assert read["entity"][0]["what"]["reference"] == "ImagingStudy/1.2.840.99.1"
    assert [e["id"] for e in events(dev, "entity=ImagingStudy/1.2.840.99.2")] == [found[0]["id"]]
    assert events(dev, "outcome=8") == []
    assert events(dev, f"date=lt{start}") == []
    one = dev.get(f"/fhir/AuditEvent/{read['id']}").json()
    assert one == read
    assert dev.get("/fhir/AuditEvent/999999").status_code == 404


def test_paging_follows_next_links(dev: TestClient) -> None:
    for n in range(5):
        dev.get(f"/fhir/ImagingStudy/1.2.840.99.{n}")
    seen: list[str] = []
    url: str | None = "/fhir/AuditEvent?_count=2&outcome=4"
    while url:
        bundle = dev.get(url).json()
        assert bundle["total"] == 5  # every match, on every page
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = nxt[0].replace("http://pacsfhir.test", "") if nxt else None
    assert len(seen) == 5 == len(set(seen))


@pytest.mark.parametrize(("total", "expected"), [("none", None), ("accurate", 5), ("estimate", 5)])
def test_total_follows_the_total_parameter(
    dev: TestClient, total: str, expected: int | None
) -> None:
    for _ in range(5):
        dev.get("/fhir/ImagingStudy/1.2.3.4.5")  # 404s: outcome 4
    bundle = dev.get(f"/fhir/AuditEvent?outcome=4&_total={total}").json()
    assert bundle.get("total") == expected
    assert dev.get("/fhir/AuditEvent?_total=exactly").status_code == 400


def test_no_search_value_is_stored(dev: TestClient, archive: Archive) -> None:
    dev.get(f"/fhir/ImagingStudy?patient.identifier={DISTINCTIVE}&family={DISTINCTIVE}")
    dev.get(f"/dicom-web/studies?PatientName={DISTINCTIVE}")
    dev.get(f"/fhir/Patient/p-1/$wado-rs/studies?PatientID={DISTINCTIVE}")
    dev.app.state.audit.flush()  # type: ignore[attr-defined]
    with archive.engine.connect() as conn:
        rows = conn.execute(select(audit_event)).all()
    assert len(rows) == 3
    assert [r.query_names for r in rows] == [
        "family&patient.identifier",
        "PatientName",
        "PatientID",
    ]
    assert DISTINCTIVE not in repr(rows)
    assert DISTINCTIVE not in dev.get("/fhir/AuditEvent").text


def _old_and_new(archive: Archive) -> None:
    now = int(time.time() * US_PER_SECOND)
    day = 86_400 * US_PER_SECOND

    def at(moment: int, uid: str) -> AuditRecord:
        return AuditRecord(
            "", moment, "R", 0, 200, "GET", "/fhir/ImagingStudy/{study_id}", study_uid=uid
        )

    audit.append(archive.engine, [at(now - 3 * day, "1.2.3.old"), at(now - day // 2, "1.2.3.new")])


def test_retention_forgets_old_events_at_start(archive: Archive) -> None:
    _old_and_new(archive)
    settings = archive.settings.replace(audit_retention_days=1)
    with TestClient(create_app(settings, Archive(settings, archive.engine, archive.blobs))) as dev:
        deadline = time.monotonic() + 10
        while events(dev, "entity=ImagingStudy/1.2.3.old") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert events(dev, "entity=ImagingStudy/1.2.3.old") == []
        assert len(events(dev, "entity=ImagingStudy/1.2.3.new")) == 1


def test_retention_zero_keeps_everything(archive: Archive) -> None:
    _old_and_new(archive)
    settings = archive.settings.replace(audit_retention_days=0)
    with TestClient(create_app(settings, Archive(settings, archive.engine, archive.blobs))) as dev:
        assert dev.app.state.audit.forget_expired() == 0  # type: ignore[attr-defined]
        assert len(events(dev, "entity=ImagingStudy/1.2.3.old")) == 1


# --- with tokens of a real authorization server -----------------------------------------


@pytest.fixture(scope="module")
def secured(sample_archive: Archive, auth_server: AuthServer) -> Iterator[TestClient]:
    settings = sample_archive.settings.replace(**jwt_mode(auth_server))
    shared = Archive(settings, sample_archive.engine, sample_archive.blobs)
    with TestClient(create_app(settings, shared)) as client:
        yield client


@pytest.fixture(scope="module")
def studies(sample_archive: Archive) -> dict[str, list[str]]:
    return studies_by_patient(sample_archive)


def test_allowed_and_refused_accesses_are_audited(
    secured: TestClient, auth_server: AuthServer, studies: dict[str, list[str]]
) -> None:
    a, b = sorted(studies, key=lambda p: -len(studies[p]))[:2]
    auth_server.register_client(APP)
    auth_server.register_client(BACKEND, secret=SECRET)
    auth_server.set_patients([{"id": a, "name": "Patient A"}, {"id": b, "name": "Patient B"}])
    launch = auth_server.authorization_code_token(APP, PATIENT_SCOPES, a, aud=FHIR_BASE)
    patient = bearer(launch["access_token"])
    system = bearer(
        auth_server.client_credentials_token(BACKEND, SECRET, "system/*.rs", aud=FHIR_BASE)
    )
    start = format_instant(int((time.time() - 1) * US_PER_SECOND))

    assert secured.get("/fhir/ImagingStudy", headers=patient).status_code == 200
    assert secured.get(f"/fhir/ImagingStudy/{studies[b][0]}", headers=patient).status_code == 404
    assert secured.get("/fhir/AuditEvent", headers=patient).status_code == 403
    assert secured.get("/fhir/Endpoint/audit-401").status_code == 401
    assert secured.get("/fhir/AuditEvent").status_code == 401

    mine = events(secured, f"agent={APP}", system)
    assert [(e["outcomeDesc"].split(" (")[0], e["action"]) for e in mine] == [
        ("HTTP 403", "E"),
        ("HTTP 404", "R"),
        ("HTTP 200", "E"),
    ]
    assert [e["outcome"] for e in mine] == ["8", "4", "0"]
    assert all(e["agent"][0]["altId"] == APP for e in mine)
    refs = {e["id"]: [x.get("what", {}).get("reference") for x in e["entity"]] for e in mine}
    assert refs[mine[1]["id"]] == [f"Patient/{a}", f"ImagingStudy/{studies[b][0]}"]
    assert [
        e["id"]
        for e in events(secured, f"entity=ImagingStudy/{studies[b][0]}", system)
        if e["agent"][0].get("altId") == APP
    ] == [mine[1]["id"]]
    assert {e["id"] for e in mine} <= {e["id"] for e in events(secured, f"patient={a}", system)}
    refused = events(secured, f"outcome=8&date=ge{start}", system)
    anonymous = [e for e in refused if "identifier" not in e["agent"][0]["who"]]
    assert sorted(e["outcomeDesc"] for e in anonymous) == [
        "HTTP 401 (serious failure) to GET /fhir/AuditEvent",
        "HTTP 401 (serious failure) to GET /fhir/Endpoint/{endpoint_id}",
    ]
    assert secured.get("/fhir/AuditEvent", headers=system).status_code == 200
