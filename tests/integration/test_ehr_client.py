"""EhrPatients against real peers: the suite's authorization server (authlib; tokens by
client_credentials with a private_key_jwt assertion, checked by introspection) and the
stand-in EHR FHIR server (tests/support/ehr_fhir.py), each on a loopback port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from pacsfhir.auth.ehr import EhrPatients, EhrUnavailable
from tests.support.authserver import AuthServer
from tests.support.ehr_fhir import BackendClient, EhrFhirServer, register_backend_client
from tests.support.threads import run_together

ALICE: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "alice-1",
    "identifier": [{"system": "urn:oid:1.2.3.4", "value": "MRN-0001"}],
    "name": [{"family": "Liddell", "given": ["Alice"]}],
}


@pytest.fixture
def ehr(ehr_server: EhrFhirServer) -> EhrFhirServer:
    ehr_server.add_patient(ALICE)
    return ehr_server


@pytest.fixture
def backend(auth_server: AuthServer, tmp_path: Path) -> BackendClient:
    return register_backend_client(auth_server, tmp_path)


@pytest.fixture
def patients(backend: BackendClient, ehr: EhrFhirServer) -> Iterator[EhrPatients]:
    client = EhrPatients(backend.settings(ehr))
    yield client
    client.close()


@pytest.mark.parametrize("kty", ["RSA", "EC"])  # RS384 and ES384
def test_fetch_returns_the_patient(
    auth_server: AuthServer, ehr: EhrFhirServer, tmp_path: Path, kty: str
) -> None:
    client = register_backend_client(auth_server, tmp_path, kty=kty, scope="system/Patient.rs")
    patients = EhrPatients(client.settings(ehr))
    try:
        assert patients.fetch("alice-1") == ALICE
        assert patients.signer.alg == ("RS384" if kty == "RSA" else "ES384")
    finally:
        patients.close()


def test_token_url_from_settings_skips_discovery(
    auth_server: AuthServer, backend: BackendClient, ehr: EhrFhirServer
) -> None:
    patients = EhrPatients(backend.settings(ehr, ehr_token_url=auth_server.token_url))
    try:
        assert patients.fetch("alice-1") == ALICE
        assert ehr.requests == 1  # the read alone: no smart-configuration
    finally:
        patients.close()


def test_many_fetches_one_token(
    auth_server: AuthServer, ehr: EhrFhirServer, patients: EhrPatients
) -> None:
    before = auth_server.token_calls
    for _ in range(5):
        assert patients.fetch("alice-1") == ALICE
    assert auth_server.token_calls - before == 1
    assert ehr.patient_reads == 5


def test_concurrent_fetches_share_one_token_request(
    auth_server: AuthServer, ehr: EhrFhirServer, patients: EhrPatients
) -> None:
    before = auth_server.token_calls
    results = run_together(8, lambda: patients.fetch("alice-1"))
    assert results == [ALICE] * 8
    assert auth_server.token_calls - before == 1
    assert patients.token_requests == 1


def test_unknown_and_deleted_patients_are_none(ehr: EhrFhirServer, patients: EhrPatients) -> None:
    assert patients.fetch("nobody") is None
    ehr.add_patient({**ALICE, "id": "bob-2"})
    ehr.delete_patient("bob-2")
    assert patients.fetch("bob-2") is None
    assert patients.fetch("") is None
    assert patients.fetch("..") is None


def test_the_id_is_quoted_into_the_path(ehr: EhrFhirServer, patients: EhrPatients) -> None:
    odd = {"resourceType": "Patient", "id": "a b/c?d#e"}
    ehr.add_patient(odd, under="a b/c?d#e")
    # werkzeug decodes %2F before routing, so a slash in an id cannot reach the route:
    # what matters is that it did not become a path or a query of its own
    assert patients.fetch("a b/c?d#e") is None
    spaced = {"resourceType": "Patient", "id": "a b?c#d"}
    ehr.add_patient(spaced)
    assert patients.fetch("a b?c#d") == spaced


def test_ehr_down_is_unavailable(ehr: EhrFhirServer, patients: EhrPatients) -> None:
    assert patients.fetch("alice-1") == ALICE  # a token in hand
    with ehr.down(), pytest.raises(EhrUnavailable):
        patients.fetch("alice-1")
    assert patients.fetch("alice-1") == ALICE


def test_ehr_down_before_any_token_is_unavailable(
    ehr: EhrFhirServer, patients: EhrPatients
) -> None:
    with ehr.down(), pytest.raises(EhrUnavailable, match="SMART configuration"):
        patients.fetch("alice-1")


def test_auth_server_down_without_a_token_is_unavailable(
    auth_server: AuthServer, backend: BackendClient, ehr: EhrFhirServer
) -> None:
    patients = EhrPatients(backend.settings(ehr, ehr_token_url=auth_server.token_url))
    try:
        with auth_server.down():
            with pytest.raises(EhrUnavailable):
                patients.fetch("alice-1")
            with pytest.raises(EhrUnavailable, match="a moment ago"):  # not asked again
                patients.fetch("alice-1")
        assert ehr.patient_reads == 0
    finally:
        patients.close()


def test_a_token_endpoint_that_failed_is_asked_again_later(
    auth_server: AuthServer, backend: BackendClient, ehr: EhrFhirServer
) -> None:
    now = [1000.0]
    patients = EhrPatients(
        backend.settings(ehr, ehr_token_url=auth_server.token_url), clock=lambda: now[0]
    )
    try:
        with auth_server.down(), pytest.raises(EhrUnavailable):
            patients.fetch("alice-1")
        with pytest.raises(EhrUnavailable, match="a moment ago"):
            patients.fetch("alice-1")
        now[0] += 6
        assert patients.fetch("alice-1") == ALICE
    finally:
        patients.close()


def test_wrong_key_is_unavailable(
    auth_server: AuthServer, ehr: EhrFhirServer, tmp_path: Path
) -> None:
    other = RSAKey.generate_key(2048)
    client = register_backend_client(auth_server, tmp_path, registered_key=other)
    patients = EhrPatients(client.settings(ehr))
    try:
        with pytest.raises(EhrUnavailable, match=r"token endpoint answered 40[01]"):
            patients.fetch("alice-1")
        assert ehr.patient_reads == 0
    finally:
        patients.close()


def test_a_scope_without_patient_read_is_unavailable(
    auth_server: AuthServer, ehr: EhrFhirServer, tmp_path: Path
) -> None:
    client = register_backend_client(auth_server, tmp_path, kty="EC", scope="system/Observation.rs")
    patients = EhrPatients(client.settings(ehr, ehr_scope="system/Observation.rs"))
    try:
        with pytest.raises(EhrUnavailable, match="403"):
            patients.fetch("alice-1")
    finally:
        patients.close()


def test_an_expiring_token_is_renewed(
    auth_server: AuthServer, ehr: EhrFhirServer, tmp_path: Path
) -> None:
    client = register_backend_client(auth_server, tmp_path, token_lifetime=2)
    patients = EhrPatients(client.settings(ehr))
    try:
        before = auth_server.token_calls
        assert patients.fetch("alice-1") == ALICE
        assert patients.fetch("alice-1") == ALICE
        assert auth_server.token_calls - before == 1
        time.sleep(2.1)  # expired at the authorization server too
        assert patients.fetch("alice-1") == ALICE
        assert auth_server.token_calls - before == 2
    finally:
        patients.close()


def test_a_token_refused_by_the_ehr_is_replaced_once(
    auth_server: AuthServer, ehr: EhrFhirServer, backend: BackendClient, patients: EhrPatients
) -> None:
    before = auth_server.token_calls
    assert patients.fetch("alice-1") == ALICE
    for issued in list(auth_server.state.tokens.values()):
        if issued.client_id == backend.client_id:
            auth_server.revoke(issued.access_token)  # the EHR now answers 401
    assert patients.fetch("alice-1") == ALICE
    assert auth_server.token_calls - before == 2
    assert ehr.requests == 1 + 1 + 2  # discovery, read, refused read, read


def test_a_token_refused_twice_is_unavailable(ehr: EhrFhirServer, patients: EhrPatients) -> None:
    with ehr.answers(401, '{"resourceType": "OperationOutcome"}'):
        with pytest.raises(EhrUnavailable, match="401"):
            patients.fetch("alice-1")
        assert ehr.patient_reads == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, "<html>maintenance</html>"),
        (200, '{"resourceType": "Bundle", "type": "searchset"}'),
        (200, '["Patient"]'),
        (200, '{"resourceType": "Patient", "id": "alice-1", "identifier": "MRN-0001"}'),
        (200, '{"resourceType": "Patient", "id": "alice-1", "identifier": ["MRN-0001"]}'),
        (500, '{"resourceType": "OperationOutcome"}'),
        (503, "busy"),
        (302, ""),
    ],
)
def test_garbage_is_unavailable(
    ehr: EhrFhirServer, patients: EhrPatients, status: int, body: str
) -> None:
    with ehr.answers(status, body), pytest.raises(EhrUnavailable):
        patients.fetch("alice-1")


def test_another_patient_is_unavailable(ehr: EhrFhirServer, patients: EhrPatients) -> None:
    ehr.add_patient({**ALICE, "id": "mallory-9"}, under="alice-1")
    with pytest.raises(EhrUnavailable, match="another Patient"):
        patients.fetch("alice-1")


def test_too_large_an_answer_is_unavailable(ehr: EhrFhirServer, patients: EhrPatients) -> None:
    padding = "x" * (1 << 20)
    ehr.add_patient({**ALICE, "text": {"status": "generated", "div": padding}})
    with pytest.raises(EhrUnavailable, match="too large"):
        patients.fetch("alice-1")


def test_nothing_secret_is_logged(
    auth_server: AuthServer,
    ehr: EhrFhirServer,
    backend: BackendClient,
    patients: EhrPatients,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="pacsfhir")
    assert patients.fetch("alice-1") == ALICE
    with ehr.answers(500, "{}"), pytest.raises(EhrUnavailable):
        patients.fetch("alice-1")
    with ehr.down(), pytest.raises(EhrUnavailable):
        patients.fetch("alice-1")
    tokens = [t.access_token for t in auth_server.state.tokens.values()]
    logged = caplog.text
    assert "500" in logged
    assert "alice-1" not in logged
    assert "MRN-0001" not in logged
    assert all(token not in logged for token in tokens)
    assert backend.key_path.read_text() not in logged
