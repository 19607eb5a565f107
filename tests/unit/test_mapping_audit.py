"""The audit record -> AuditEvent mapping, table-tested, every output valid FHIR R4."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from pacsfhir.api.audit import parse_audit_search
from pacsfhir.errors import BadRequest
from pacsfhir.index.audit import AuditQuery
from pacsfhir.mapping.audit import DCM, audit_event, outcome_of
from pacsfhir.vocabulary.dates import fhir_period
from pacsfhir.vocabulary.records import AuditRecord
from tests.support.fhir_r4 import assert_valid

SERVER = "http://pacsfhir.test/fhir"
MOMENT = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def record(**fields: Any) -> AuditRecord:
    base: dict[str, Any] = {
        "id": "7",
        "recorded": MOMENT,
        "action": "R",
        "outcome": 0,
        "status": 200,
        "method": "GET",
        "route": "/fhir/ImagingStudy/{study_id}",
    }
    return AuditRecord(**(base | fields))


CASES = [
    # (record, type code, subtype, entity references)
    (
        record(subject="alice", client_id="viewer", study_uid="1.2.3"),
        "110110",
        "read",
        ["ImagingStudy/1.2.3"],
    ),
    (
        record(
            action="E",
            route="/fhir/ImagingStudy",
            query_names=("modality", "patient"),
            token_patient="p1",
        ),
        "110112",
        "search-type",
        ["Patient/p1", None],
    ),
    (
        record(action="C", method="POST", route="/dicom-web/studies", status=200),
        "110110",
        "create",
        [],
    ),
    (
        record(patient="p2", token_patient="p1", outcome=4, status=404),
        "110110",
        "read",
        ["Patient/p2", "Patient/p1"],
    ),
    (record(patient="p1", token_patient="p1"), "110110", "read", ["Patient/p1"]),
    (record(outcome=8, status=401, address="127.0.0.1"), "110110", "read", []),
    (record(subject="u", fhir_user="Practitioner/9", outcome=8, status=403), "110110", "read", []),
    (record(action="E", route="/fhir/AuditEvent"), "110112", "search-type", [None]),
]


@pytest.mark.parametrize(("rec", "code", "subtype", "references"), CASES)
def test_audit_event(
    rec: AuditRecord, code: str, subtype: str, references: list[str | None]
) -> None:
    event = audit_event(rec, SERVER)
    assert_valid(event)
    assert event["type"] == {"system": DCM, "code": code, "display": event["type"]["display"]}
    assert event["subtype"][0]["code"] == subtype
    assert event["action"] == rec.action
    assert event["outcome"] == str(rec.outcome)
    assert event["recorded"] == "2026-01-01T00:00:00.000Z"
    assert [e.get("what", {}).get("reference") for e in event.get("entity", [])] == references
    agent = event["agent"][0]
    assert agent["requestor"] is True
    assert agent["who"]["display"] == (rec.subject or "unknown (no valid token)")
    assert agent.get("altId") == rec.client_id
    assert agent.get("network", {}).get("address") == rec.address
    assert event["source"]["type"][0]["code"] == "4"


def test_a_search_keeps_parameter_names_only() -> None:
    event = audit_event(record(action="E", query_names=("_count", "modality")), SERVER)
    query = event["entity"][-1]
    assert base64.b64decode(query["query"]) == b"_count&modality"
    assert query["role"]["code"] == "24"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, 0),
        (204, 0),
        (304, 0),
        (400, 4),
        (404, 4),
        (406, 4),
        (401, 8),
        (403, 8),
        (500, 8),
        (503, 8),
    ],
)
def test_outcome_of(status: int, outcome: int) -> None:
    assert outcome_of(status) == outcome


def _period(value: str) -> tuple[int, int]:
    period = fhir_period(value)
    assert period is not None
    return period.low, period.high + 1


LOW, HIGH = _period("2026-01-01")

SEARCHES = [
    ([], AuditQuery(count=20)),
    ([("date", "ge2026-01-01")], AuditQuery(since=(LOW,), count=20)),
    ([("date", "gt2026-01-01")], AuditQuery(since=(HIGH,), count=20)),
    ([("date", "le2026-01-01")], AuditQuery(until=(HIGH,), count=20)),
    ([("date", "lt2026-01-01")], AuditQuery(until=(LOW,), count=20)),
    ([("date", "2026-01-01")], AuditQuery(since=(LOW,), until=(HIGH,), count=20)),
    ([("patient", "Patient/p1")], AuditQuery(patient="p1", count=20)),
    ([("patient", "p1")], AuditQuery(patient="p1", count=20)),
    ([("agent", "viewer")], AuditQuery(agent="viewer", count=20)),
    ([("outcome", "8")], AuditQuery(outcome=8, count=20)),
    ([("entity", "ImagingStudy/1.2.3")], AuditQuery(study_uid="1.2.3", count=20)),
    ([("entity", "Patient/p1")], AuditQuery(patient="p1", count=20)),
    ([("_count", "5"), ("_after", "9")], AuditQuery(count=5, after=9)),
    ([("_count", "99999")], AuditQuery(count=1000)),
    ([("_format", "json"), ("_pretty", "true")], AuditQuery(count=20)),
]


@pytest.mark.parametrize(("pairs", "expected"), SEARCHES)
def test_parse_audit_search(pairs: list[tuple[str, str]], expected: AuditQuery) -> None:
    assert parse_audit_search(pairs, 20) == expected


@pytest.mark.parametrize(
    "pairs",
    [
        [("date", "yesterday")],
        [("outcome", "1")],
        [("entity", "Observation/1")],
        [("patient", "Group/1")],
        [("_count", "-1")],
        [("_after", "x")],
        [("name", "x")],
    ],
)
def test_parse_audit_search_refuses(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(BadRequest):
        parse_audit_search(pairs, 20)
