"""The EHR look-up of a token's patient: pacsfhir reads ``Patient/{id}`` at the EHR
(SMART Backend Services against the suite's real authorization server) and links the DICOM
patients its identifiers match, so a SMART token whose ``patient`` is the EHR's id sees
that patient's studies from every site. The EHR's FHIR side is the one declared stand-in
(tests/support/ehr_fhir.py); tokens, keys and the authorization server are real.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from pacsfhir.archive import Archive
from tests.support.authserver import AuthServer
from tests.support.ehr_fhir import EhrFhirServer, register_backend_client
from tests.support.secured import Studies, bearer, jwt_client
from tests.support.threads import run_together

SITE_A_OID = "1.2.826.0.1.3680043.10.777"
SITE_B = "PRIOR_SITE"
ALICE = "alice-1"


def alice(*identifiers: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": ALICE,
        "identifier": list(identifiers),
        "name": [{"family": "Liddell", "given": ["Alice"]}],
    }


MRN_A = {"system": f"urn:oid:{SITE_A_OID}", "value": "MRN-0001"}
MRN_B = {"value": "P-42", "assigner": {"display": SITE_B}}


@dataclass
class Setup:
    archive: Archive
    auth: AuthServer
    ehr: EhrFhirServer
    key_dir: Path
    site_a: str
    site_b: str
    other: str

    def client(self, **overrides: Any) -> TestClient:
        backend = register_backend_client(self.auth, self.key_dir, scope="system/Patient.rs")
        return jwt_client(
            self.archive,
            self.auth,
            ehr_fhir_url=self.ehr.base_url,
            ehr_client_id=backend.client_id,
            ehr_private_key=str(backend.key_path),
            **overrides,
        )

    def token(self, scope: str, patient: str | None = None) -> dict[str, str]:
        return bearer(self.auth, scope, patient)

    def alice_token(self) -> dict[str, str]:
        return self.token("patient/ImagingStudy.rs", ALICE)


@pytest.fixture
def setup(
    archive: Archive, auth_server: AuthServer, ehr_server: EhrFhirServer, tmp_path: Path
) -> Setup:
    studies = Studies(tmp_path / "dicom")
    site_a = studies.add(PatientID="MRN-0001", IssuerOfPatientID=SITE_A_OID)
    site_b = studies.add(PatientID="P-42", IssuerOfPatientID=SITE_B)
    other = studies.add(PatientID="MRN-0002", IssuerOfPatientID=SITE_A_OID)
    studies.ingest(archive)
    ehr_server.add_patient(alice(MRN_A, MRN_B))
    (tmp_path / "keys").mkdir()
    return Setup(archive, auth_server, ehr_server, tmp_path / "keys", site_a, site_b, other)


def studies(
    client: TestClient, headers: dict[str, str], path: str = "/fhir/ImagingStudy"
) -> set[str]:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", [])}


def test_the_token_patient_is_looked_up_once_and_sees_every_site(setup: Setup) -> None:
    with setup.client() as client:
        assert studies(client, setup.alice_token()) == {setup.site_a, setup.site_b}
        reads = setup.ehr.patient_reads
        assert reads == 1
        # the same patient again, on DICOMweb too: served from the links kept
        qido = client.get(f"/fhir/Patient/{ALICE}/$wado-rs/studies", headers=setup.alice_token())
        assert {s["0020000D"]["Value"][0] for s in qido.json()} == {setup.site_a, setup.site_b}
        assert setup.ehr.patient_reads == reads
        subject = client.get(
            f"/fhir/ImagingStudy/{setup.site_b}", headers=setup.alice_token()
        ).json()["subject"]
        assert subject["reference"] == f"Patient/{ALICE}"
        patient = client.get(f"/fhir/Patient/{ALICE}", headers=setup.token("system/Patient.rs"))
        assert patient.json()["name"] == [{"family": "Liddell", "given": ["Alice"]}]


def test_concurrent_first_requests_share_one_lookup(setup: Setup) -> None:
    with setup.client() as client:
        answers = run_together(8, lambda: studies(client, setup.alice_token()))
    assert all(a == {setup.site_a, setup.site_b} for a in answers)
    assert setup.ehr.patient_reads == 1


def test_an_ehr_that_cannot_be_asked_refuses_with_503(setup: Setup) -> None:
    with setup.client() as client, setup.ehr.down():
        response = client.get("/fhir/ImagingStudy", headers=setup.alice_token())
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0


def test_earlier_links_stand_while_the_ehr_is_down(setup: Setup) -> None:
    with setup.client(ehr_refresh_seconds=0) as client:
        assert studies(client, setup.alice_token()) == {setup.site_a, setup.site_b}
        with setup.ehr.down():
            assert studies(client, setup.alice_token()) == {setup.site_a, setup.site_b}


def test_a_changed_ehr_patient_is_seen_after_the_refresh_period(setup: Setup) -> None:
    with setup.client(ehr_refresh_seconds=0) as client:
        assert studies(client, setup.alice_token()) == {setup.site_a, setup.site_b}
        setup.ehr.add_patient(alice(MRN_A))
        assert studies(client, setup.alice_token()) == {setup.site_a}


def test_an_unknown_patient_sees_nothing_and_is_not_asked_again_at_once(setup: Setup) -> None:
    token = setup.token("patient/ImagingStudy.rs", "nobody-9")
    with setup.client() as client:
        assert studies(client, token) == set()
        assert studies(client, token) == set()
    assert setup.ehr.patient_reads == 1


def test_a_patient_the_ehr_deletes_loses_its_links(setup: Setup) -> None:
    with setup.client(ehr_refresh_seconds=0) as client:
        assert studies(client, setup.alice_token()) == {setup.site_a, setup.site_b}
        setup.ehr.delete_patient(ALICE)
        assert studies(client, setup.alice_token()) == set()


def test_a_patient_written_here_is_never_looked_up(setup: Setup) -> None:
    writer = setup.token("system/Patient.cud")
    with setup.client() as client:
        put = client.put(
            f"/fhir/Patient/{ALICE}",
            json=alice(MRN_B),
            headers={**writer, "Content-Type": "application/fhir+json"},
        )
        assert put.status_code == 201
        assert studies(client, setup.alice_token()) == {setup.site_b}
    assert setup.ehr.patient_reads == 0


def test_a_compartment_named_in_the_path_is_looked_up_too(setup: Setup) -> None:
    system = setup.token("system/ImagingStudy.rs")
    with setup.client() as client:
        found = studies(client, system, f"/fhir/Patient/{ALICE}/ImagingStudy")
    assert found == {setup.site_a, setup.site_b}


def test_dicom_patient_ids_are_not_looked_up(setup: Setup) -> None:
    system = setup.token("system/*.rs")
    with setup.client() as client:
        study = client.get(f"/fhir/ImagingStudy/{setup.other}", headers=system).json()
        derived = study["subject"]["reference"].split("/")[1]
        token = setup.token("patient/ImagingStudy.rs", derived)
        assert studies(client, token) == {setup.other}
    assert setup.ehr.patient_reads == 0


def test_a_settled_patient_costs_no_index_query(setup: Setup) -> None:
    """Once its links are current, a patient's further requests do not ask the index
    whether to look it up again (every request with a patient token passes here)."""
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "linked_patient" in statement:
            statements.append(statement)

    with setup.client() as client:
        assert studies(client, setup.alice_token()) == {setup.site_a, setup.site_b}
        event.listen(setup.archive.engine, "before_cursor_execute", count)
        try:
            for _ in range(5):
                assert studies(client, setup.alice_token()) == {setup.site_a, setup.site_b}
        finally:
            event.remove(setup.archive.engine, "before_cursor_execute", count)
    assert statements == []
