"""Patient identity: the EHR's patient id meets the DICOM Patient ID.

``PUT /fhir/Patient/{ehrId}`` with identifiers links the DICOM patients they match (the
same MRN at two sites included); a token whose patient is the EHR id then sees all of
their studies, by every route, and nobody else's; the studies' subject becomes the EHR
patient, the derived ids keep answering with a link to it. Real tokens from the test
authorization server (JWT mode), real DICOM files written with pydicom, both databases.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pacsfhir.archive import Archive
from tests.support.authserver import AuthServer
from tests.support.secured import FHIR_BASE, Studies, bearer, jwt_client, patient_of

SITE_A_OID = "1.2.826.0.1.3680043.10.1234"  # an issuer with an OID: system urn:oid:...
SITE_A = f"urn:oid:{SITE_A_OID}"
SITE_B = "SITE_B"  # a local issuer name: no system, matched by assigner.display
EHR_ID = "ehr-1"
WRITER = "system/Patient.cud system/ImagingStudy.rs system/Patient.rs"


@dataclass
class World:
    client: TestClient
    auth: AuthServer
    archive: Archive
    tmp: Path
    site_a: list[str]  # study UIDs of MRN-100 at site A
    site_b: list[str]  # study UIDs of B-7 at site B (the same person)
    stranger: list[str]  # study UIDs of MRN-200 at site A

    def token(self, scope: str, patient: str | None = None) -> dict[str, str]:
        return bearer(self.auth, scope, patient)

    def patient_token(self, patient: str = EHR_ID) -> dict[str, str]:
        return self.token("patient/ImagingStudy.rs patient/Patient.rs", patient)

    def writer(self) -> dict[str, str]:
        return self.token(WRITER)

    def add_study(self, patient_id: str, issuer: str) -> str:
        more = Studies(self.tmp / "more")
        study_uid = more.add(PatientID=patient_id, IssuerOfPatientID=issuer)
        more.ingest(self.archive)
        return study_uid

    def put_patient(self, resource: dict[str, Any], **headers: str) -> Any:
        return self.client.put(
            f"/fhir/Patient/{resource['id']}",
            content=json.dumps(resource),
            headers={"Content-Type": "application/fhir+json", **self.writer(), **headers},
        )

    def derived_of(self, study_uid: str) -> str:
        return patient_of(self.archive, study_uid)


def ehr_patient(*identifiers: dict[str, Any], patient_id: str = EHR_ID) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": list(identifiers),
        "name": [{"family": "Example", "given": ["Erin"]}],
    }


MRN_A = {"system": SITE_A, "value": "MRN-100"}
MRN_B = {"value": "B-7", "assigner": {"display": SITE_B}}
SSN = {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-00-1234"}


@pytest.fixture
def world(archive: Archive, auth_server: AuthServer, tmp_path: Path) -> Iterator[World]:
    studies = Studies(tmp_path / "dicom", instances=2)
    site_a = [studies.add(PatientID="MRN-100", IssuerOfPatientID=SITE_A_OID) for _ in "ab"]
    site_b = [studies.add(PatientID="B-7", IssuerOfPatientID=SITE_B)]
    stranger = [studies.add(PatientID="MRN-200", IssuerOfPatientID=SITE_A_OID)]
    studies.ingest(archive)
    with jwt_client(archive, auth_server) as client:
        yield World(client, auth_server, archive, tmp_path, site_a, site_b, stranger)


def study_ids(bundle: dict[str, Any]) -> set[str]:
    return {
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e["resource"]["resourceType"] == "ImagingStudy"
    }


def qido_ids(answer: list[dict[str, Any]]) -> set[str]:
    return {study["0020000D"]["Value"][0] for study in answer}


def test_before_any_link_the_ehr_patient_sees_nothing(world: World) -> None:
    token = world.patient_token()
    assert world.client.get("/fhir/ImagingStudy", headers=token).json()["total"] == 0
    assert world.client.get(f"/fhir/Patient/{EHR_ID}", headers=token).status_code == 404


def test_put_links_every_matching_dicom_patient(world: World) -> None:
    response = world.put_patient(ehr_patient(MRN_A, MRN_B, SSN))
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"{FHIR_BASE}/Patient/{EHR_ID}/_history/1"
    assert response.headers["etag"] == 'W/"1"'
    served = response.json()
    assert served["name"] == [{"family": "Example", "given": ["Erin"]}]
    linked = {world.derived_of(world.site_a[0]), world.derived_of(world.site_b[0])}
    assert {link["other"]["reference"] for link in served["link"]} == {
        f"Patient/{i}" for i in linked
    }
    assert {link["type"] for link in served["link"]} == {"seealso"}

    token = world.patient_token()
    mine = set(world.site_a + world.site_b)
    bundle = world.client.get("/fhir/ImagingStudy?_count=50", headers=token).json()
    assert study_ids(bundle) == mine
    assert {e["resource"]["subject"]["reference"] for e in bundle["entry"]} == {f"Patient/{EHR_ID}"}
    compartment = world.client.get(f"/fhir/Patient/{EHR_ID}/ImagingStudy", headers=token)
    assert study_ids(compartment.json()) == mine
    qido = world.client.get(f"/fhir/Patient/{EHR_ID}/$wado-rs/studies", headers=token)
    assert qido_ids(qido.json()) == mine
    assert qido_ids(world.client.get("/dicom-web/studies", headers=token).json()) == mine
    # the Endpoint a patient token is given is that patient's base, and it serves
    endpoint = bundle["entry"][0]["resource"]["endpoint"][0]["reference"]
    assert endpoint == f"Endpoint/wado-{EHR_ID}"
    address = world.client.get(f"/fhir/{endpoint}", headers=token).json()["address"]
    assert address == f"{FHIR_BASE}/Patient/{EHR_ID}/$wado-rs"
    site_b_metadata = world.client.get(
        f"/fhir/Patient/{EHR_ID}/$wado-rs/studies/{world.site_b[0]}/metadata", headers=token
    )
    assert site_b_metadata.status_code == 200
    assert len(site_b_metadata.json()) == 2


def test_a_linked_token_never_reaches_the_stranger(world: World) -> None:
    assert world.put_patient(ehr_patient(MRN_A, MRN_B)).status_code == 201
    token = world.patient_token()
    stranger_study = world.stranger[0]
    stranger_id = world.derived_of(stranger_study)
    for path in (
        f"/fhir/ImagingStudy/{stranger_study}",
        f"/fhir/Patient/{stranger_id}",
        f"/dicom-web/studies/{stranger_study}/metadata",
        f"/fhir/Patient/{EHR_ID}/$wado-rs/studies/{stranger_study}/metadata",
        f"/fhir/Patient/{stranger_id}/$wado-rs/studies/{stranger_study}/metadata",
    ):
        assert world.client.get(path, headers=token).status_code == 404, path
    for query in (
        f"patient={stranger_id}",
        f"patient.identifier={SITE_A}|MRN-200",
        f"identifier=urn:dicom:uid|urn:oid:{stranger_study}",
    ):
        bundle = world.client.get(f"/fhir/ImagingStudy?{query}", headers=token).json()
        assert bundle["total"] == 0, query
    compartment = world.client.get(f"/fhir/Patient/{stranger_id}/ImagingStudy", headers=token)
    assert compartment.json()["total"] == 0


def test_derived_ids_keep_answering_with_a_link(world: World) -> None:
    assert world.put_patient(ehr_patient(MRN_A)).status_code == 201
    derived = world.derived_of(world.site_a[0])
    token = world.patient_token()
    patient = world.client.get(f"/fhir/Patient/{derived}", headers=token)
    assert patient.status_code == 200
    assert patient.json()["link"] == [
        {"other": {"reference": f"Patient/{EHR_ID}"}, "type": "refer"}
    ]
    compartment = world.client.get(f"/fhir/Patient/{derived}/ImagingStudy", headers=token)
    assert study_ids(compartment.json()) == set(world.site_a)
    system = world.token("system/*.rs")
    by_derived = world.client.get(f"/fhir/ImagingStudy?patient={derived}", headers=system)
    assert study_ids(by_derived.json()) == set(world.site_a)
    by_ehr = world.client.get(f"/fhir/ImagingStudy?subject=Patient/{EHR_ID}", headers=system)
    assert study_ids(by_ehr.json()) == set(world.site_a)


def test_chained_identifier_search_reaches_the_ehr_identifiers(world: World) -> None:
    assert world.put_patient(ehr_patient(MRN_A, MRN_B, SSN)).status_code == 201
    system = world.token("system/*.rs")
    ssn = f"{SSN['system']}|{SSN['value']}"
    bundle = world.client.get(f"/fhir/ImagingStudy?patient.identifier={ssn}", headers=system)
    assert study_ids(bundle.json()) == set(world.site_a + world.site_b)
    negated = world.client.get(
        f"/fhir/ImagingStudy?patient.identifier:not={ssn}", headers=system
    ).json()
    assert study_ids(negated) == set(world.stranger)
    included = world.client.get(
        f"/fhir/ImagingStudy?patient={EHR_ID}&_include=ImagingStudy:subject", headers=system
    ).json()
    patients = [e["resource"] for e in included["entry"] if e["search"]["mode"] == "include"]
    assert [p["id"] for p in patients] == [EHR_ID]


def test_studies_get_a_new_version_when_their_subject_changes(world: World) -> None:
    system = world.token("system/*.rs")
    before = world.client.get(f"/fhir/ImagingStudy/{world.site_b[0]}", headers=system).json()
    assert world.put_patient(ehr_patient(MRN_B)).status_code == 201
    after = world.client.get(f"/fhir/ImagingStudy/{world.site_b[0]}", headers=system).json()
    assert int(after["meta"]["versionId"]) == int(before["meta"]["versionId"]) + 1
    assert after["subject"]["reference"] == f"Patient/{EHR_ID}"
    untouched = world.client.get(f"/fhir/ImagingStudy/{world.stranger[0]}", headers=system)
    assert untouched.json()["meta"]["versionId"] == "1"


def test_update_relinks_and_versions(world: World) -> None:
    assert world.put_patient(ehr_patient(MRN_A, MRN_B)).status_code == 201
    response = world.put_patient(ehr_patient(MRN_A), **{"If-Match": 'W/"1"'})
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2"
    token = world.patient_token()
    bundle = world.client.get("/fhir/ImagingStudy", headers=token).json()
    assert study_ids(bundle) == set(world.site_a)
    site_b = world.derived_of(world.site_b[0])
    assert "link" not in world.client.get(f"/fhir/Patient/{site_b}", headers=world.writer()).json()
    stale = world.put_patient(ehr_patient(MRN_A), **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412


def test_studies_ingested_later_are_linked(world: World) -> None:
    assert (
        world.put_patient(ehr_patient(MRN_A, {"system": SITE_A, "value": "NEW-1"})).status_code
        == 201
    )
    later_same = world.add_study("MRN-100", SITE_A_OID)
    later_new_patient = world.add_study("NEW-1", SITE_A_OID)
    bundle = world.client.get("/fhir/ImagingStudy", headers=world.patient_token()).json()
    assert study_ids(bundle) == {*world.site_a, later_same, later_new_patient}


@pytest.mark.parametrize(
    ("scope", "patient"),
    [
        ("patient/Patient.cud patient/Patient.rs", EHR_ID),  # a patient's app links nobody
        ("patient/*.*", EHR_ID),
        ("system/Patient.rs", None),  # read only
    ],
)
def test_linking_needs_a_user_or_system_write_scope(
    world: World, scope: str, patient: str | None
) -> None:
    response = world.client.put(
        f"/fhir/Patient/{EHR_ID}",
        content=json.dumps(ehr_patient(MRN_A, MRN_B)),
        headers={"Content-Type": "application/fhir+json", **world.token(scope, patient)},
    )
    assert response.status_code == 403
    assert (
        world.client.get("/fhir/ImagingStudy", headers=world.patient_token()).json()["total"] == 0
    )


def test_one_identifier_belongs_to_one_ehr_patient(world: World) -> None:
    assert world.put_patient(ehr_patient(MRN_A)).status_code == 201
    other = world.put_patient(ehr_patient(MRN_A, patient_id="ehr-2"))
    assert other.status_code == 409
    assert "Patient/ehr-1" in other.json()["issue"][0]["diagnostics"]
    token = world.patient_token("ehr-2")
    assert world.client.get("/fhir/ImagingStudy", headers=token).json()["total"] == 0


def test_a_dicom_patient_cannot_be_overwritten(world: World) -> None:
    derived = world.derived_of(world.stranger[0])
    response = world.put_patient(ehr_patient(MRN_A, patient_id=derived))
    assert response.status_code == 409


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        ({"resourceType": "Observation", "id": EHR_ID}, "Patient.resourceType"),
        ({"resourceType": "Patient"}, "Patient.id"),
        ({"resourceType": "Patient", "id": "someone-else"}, "Patient.id"),
        ({"resourceType": "Patient", "id": EHR_ID, "identifier": {}}, "Patient.identifier"),
        (
            {"resourceType": "Patient", "id": EHR_ID, "identifier": [{"value": 7}]},
            "Patient.identifier[0].value",
        ),
        (
            {"resourceType": "Patient", "id": EHR_ID, "identifier": [MRN_A, {"system": ""}]},
            "Patient.identifier[1].system",
        ),
    ],
)
def test_a_bad_patient_is_400_naming_the_element(
    world: World, body: dict[str, Any], expression: str
) -> None:
    response = world.client.put(
        f"/fhir/Patient/{EHR_ID}",
        content=json.dumps(body),
        headers={"Content-Type": "application/fhir+json", **world.writer()},
    )
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == [expression]


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{not json", "application/fhir+json", 400),
        (b"\xff\xfe", "application/fhir+json", 400),
        (b"<Patient/>", "application/fhir+xml", 415),
        (b"{}" + b" " * 70_000, "application/fhir+json", 413),
        (b"[" * 30_000 + b"]" * 30_000, "application/fhir+json", 400),  # nested too deep
    ],
)
def test_unreadable_bodies_are_refused(
    world: World, content: bytes, content_type: str, status: int
) -> None:
    response = world.client.put(
        f"/fhir/Patient/{EHR_ID}",
        content=content,
        headers={"Content-Type": content_type, **world.writer()},
    )
    assert response.status_code == status


def test_prefer_return_minimal(world: World) -> None:
    response = world.put_patient(ehr_patient(MRN_A), Prefer="return=minimal")
    assert response.status_code == 201
    assert response.content == b""
    assert response.headers["etag"] == 'W/"1"'


def test_the_write_is_audited(world: World) -> None:
    assert world.put_patient(ehr_patient(MRN_A)).status_code == 201
    world.client.app.state.audit.flush()  # type: ignore[attr-defined]
    events = world.client.get(
        f"/fhir/AuditEvent?patient={EHR_ID}", headers=world.token("system/AuditEvent.rs")
    ).json()
    updates = [e["resource"] for e in events.get("entry", []) if e["resource"]["action"] == "U"]
    assert len(updates) == 1
    assert updates[0]["subtype"][0]["code"] == "update"


def test_an_ehr_id_of_64_characters_gets_a_readable_endpoint(world: World) -> None:
    long_id = "e" * 64
    assert world.put_patient(ehr_patient(MRN_A, patient_id=long_id)).status_code == 201
    token = world.patient_token(long_id)
    bundle = world.client.get("/fhir/ImagingStudy", headers=token).json()
    assert study_ids(bundle) == set(world.site_a)
    reference = bundle["entry"][0]["resource"]["endpoint"][0]["reference"]
    assert len(reference.removeprefix("Endpoint/")) <= 64
    endpoint = world.client.get(f"/fhir/{reference}", headers=token)
    assert endpoint.status_code == 200
    assert endpoint.json()["address"] == f"{FHIR_BASE}/Patient/{long_id}/$wado-rs"
    system = world.client.get(f"/fhir/{reference}", headers=world.token("system/*.rs"))
    assert system.status_code == 200
