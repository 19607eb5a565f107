"""SMART v2 search-restricted scopes (``patient/ImagingStudy.rs?modality=CT``): a token
granted ImagingStudy only through restricted scopes sees the studies matching one of
them, on every route (FHIR search, compartment, read; QIDO-RS; WADO-RS under both
bases), and request parameters never widen that. A restriction this server cannot honour
grants nothing (403), nor does a restricted write. Real tokens from the test
authorization server (JWT mode), real DICOM files written with pydicom, both databases.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pacsfhir.archive import Archive
from tests.support.authserver import AuthServer
from tests.support.secured import Studies, bearer, jwt_client, patient_of

CT_ONLY = "patient/ImagingStudy.rs?modality=CT"
STUDY_UID = "0020000D"


@dataclass
class World:
    client: TestClient
    auth: AuthServer
    a: str  # patient ids (as FHIR and the token's patient name them)
    b: str
    a_ct: str  # study UIDs
    a_mr: str
    b_ct: str

    def token(self, scope: str, patient: str | None = None) -> dict[str, str]:
        return bearer(self.auth, scope, patient)

    def fhir_ids(
        self, path: str, auth: dict[str, str], form: dict[str, str] | None = None
    ) -> set[str]:
        if form is None:
            response = self.client.get(path, headers=auth)
        else:
            response = self.client.post(path, headers=auth, data=form)
        assert response.status_code == 200, response.text
        return {e["resource"]["id"] for e in response.json().get("entry", [])}

    def qido_ids(self, path: str, auth: dict[str, str]) -> set[str]:
        response = self.client.get(path, headers=auth)
        assert response.status_code in (200, 204), response.text
        if response.status_code == 204 or not response.content:
            return set()
        return {s[STUDY_UID]["Value"][0] for s in response.json()}

    def total(self, query: str, auth: dict[str, str]) -> int:
        response = self.client.get(f"/fhir/ImagingStudy?{query}", headers=auth)
        assert response.status_code == 200, response.text
        return int(response.json()["total"])


@pytest.fixture
def world(archive: Archive, auth_server: AuthServer, tmp_path: Path) -> Iterator[World]:
    studies = Studies(tmp_path / "dicom")
    a_ct = studies.add(PatientID="PAT-A", Modality="CT")
    a_mr = studies.add(PatientID="PAT-A", Modality="MR")
    b_ct = studies.add(PatientID="PAT-B", Modality="CT")
    studies.ingest(archive)
    a, b = patient_of(archive, a_ct), patient_of(archive, b_ct)
    assert a != b
    assert patient_of(archive, a_mr) == a
    with jwt_client(archive, auth_server) as client:
        yield World(client, auth_server, a, b, a_ct, a_mr, b_ct)


def test_a_ct_restriction_shows_the_patients_ct_on_every_search(world: World) -> None:
    auth = world.token(CT_ONLY, world.a)
    mine = {world.a_ct}
    assert world.fhir_ids("/fhir/ImagingStudy", auth) == mine
    assert world.fhir_ids(f"/fhir/Patient/{world.a}/ImagingStudy", auth) == mine
    assert world.fhir_ids("/fhir/ImagingStudy/_search", auth, {}) == mine
    assert world.fhir_ids(f"/fhir/Patient/{world.a}/ImagingStudy/_search", auth, {}) == mine
    assert world.qido_ids("/dicom-web/studies", auth) == mine
    assert world.qido_ids(f"/fhir/Patient/{world.a}/$wado-rs/studies", auth) == mine
    assert world.total("_summary=count", auth) == 1


def test_request_parameters_never_widen_a_restriction(world: World) -> None:
    auth = world.token(CT_ONLY, world.a)
    for query in (
        "modality=MR",
        f"_id={world.a_mr}",
        f"identifier=urn:oid:{world.a_mr}",
        f"_id={world.b_ct}",
        f"patient={world.b}",
        "modality:not=CT",
    ):
        assert world.fhir_ids(f"/fhir/ImagingStudy?{query}", auth) == set(), query
    assert world.fhir_ids("/fhir/ImagingStudy/_search", auth, {"modality": "MR"}) == set()
    assert world.fhir_ids(f"/fhir/Patient/{world.b}/ImagingStudy", auth) == set()
    assert world.qido_ids("/dicom-web/studies?ModalitiesInStudy=MR", auth) == set()
    assert world.qido_ids(f"/dicom-web/studies?StudyInstanceUID={world.a_mr}", auth) == set()
    assert world.qido_ids(f"/fhir/Patient/{world.b}/$wado-rs/studies", auth) == set()
    assert world.fhir_ids(f"/fhir/ImagingStudy?_id={world.a_ct}", auth) == {world.a_ct}


def test_a_study_outside_the_restriction_is_not_found(world: World) -> None:
    """404 by every read, as for another patient's study: never confirmed to exist."""
    auth = world.token(CT_ONLY, world.a)
    a, b = world.a, world.b
    for uid in (world.a_mr, world.b_ct):
        for path in (
            f"/fhir/ImagingStudy/{uid}",
            f"/dicom-web/studies/{uid}",
            f"/dicom-web/studies/{uid}/metadata",
            f"/dicom-web/studies/{uid}/rendered",
            f"/dicom-web/studies/{uid}/thumbnail",
            f"/dicom-web/studies/{uid}/pixeldata",
            f"/dicom-web/studies/{uid}/series",
            f"/fhir/Patient/{a}/$wado-rs/studies/{uid}/metadata",
            f"/fhir/Patient/{a}/$wado-rs/studies/{uid}",
            f"/fhir/Patient/{b}/$wado-rs/studies/{uid}/metadata",
        ):
            assert world.client.get(path, headers=auth).status_code == 404, path
    for path in (
        f"/fhir/ImagingStudy/{world.a_ct}",
        f"/dicom-web/studies/{world.a_ct}/metadata",
        f"/fhir/Patient/{a}/$wado-rs/studies/{world.a_ct}/metadata",
    ):
        assert world.client.get(path, headers=auth).status_code == 200, path


def test_frames_and_instances_outside_the_restriction_are_not_found(world: World) -> None:
    developer = world.token("system/ImagingStudy.rs")
    metadata = world.client.get(f"/dicom-web/studies/{world.a_mr}/metadata", headers=developer)
    instance = metadata.json()[0]
    series_uid, sop_uid = instance["0020000E"]["Value"][0], instance["00080018"]["Value"][0]
    base = f"/dicom-web/studies/{world.a_mr}/series/{series_uid}"
    auth = world.token(CT_ONLY, world.a)
    for path in (
        base,
        f"{base}/metadata",
        f"{base}/instances/{sop_uid}",
        f"{base}/instances/{sop_uid}/metadata",
        f"{base}/instances/{sop_uid}/frames/1",
        f"{base}/instances/{sop_uid}/rendered",
    ):
        assert world.client.get(path, headers=developer).status_code != 404, path
        assert world.client.get(path, headers=auth).status_code == 404, path


def test_a_user_level_restriction_reaches_every_patients_matching_studies(world: World) -> None:
    auth = world.token("user/ImagingStudy.rs?modality=MR")
    assert world.fhir_ids("/fhir/ImagingStudy", auth) == {world.a_mr}
    assert world.qido_ids("/dicom-web/studies", auth) == {world.a_mr}
    assert world.client.get(f"/fhir/ImagingStudy/{world.b_ct}", headers=auth).status_code == 404
    assert world.client.get(f"/fhir/ImagingStudy/{world.a_mr}", headers=auth).status_code == 200
    ct = world.token("system/ImagingStudy.rs?modality=CT")
    assert world.fhir_ids("/fhir/ImagingStudy", ct) == {world.a_ct, world.b_ct}


def test_two_restricted_scopes_grant_either(world: World) -> None:
    both = "patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs?modality=MR"
    auth = world.token(both, world.a)
    assert world.fhir_ids("/fhir/ImagingStudy", auth) == {world.a_ct, world.a_mr}
    assert world.qido_ids("/dicom-web/studies", auth) == {world.a_ct, world.a_mr}
    assert world.fhir_ids("/fhir/ImagingStudy?modality=MR", auth) == {world.a_mr}
    everyone = world.token(both.replace("patient/", "user/"))
    assert world.fhir_ids("/fhir/ImagingStudy", everyone) == {world.a_ct, world.a_mr, world.b_ct}


def test_an_unrestricted_scope_wins(world: World) -> None:
    auth = world.token(f"{CT_ONLY} patient/ImagingStudy.rs", world.a)
    assert world.fhir_ids("/fhir/ImagingStudy", auth) == {world.a_ct, world.a_mr}


@pytest.mark.parametrize(
    ("restriction", "named"),
    [("foo=bar", "foo"), ("_count=1", "_count"), ("modality:below=CT", "modality:below")],
)
def test_a_restriction_this_server_cannot_honour_is_refused(
    world: World, restriction: str, named: str
) -> None:
    auth = world.token(f"patient/ImagingStudy.rs?{restriction}", world.a)
    for path in (
        "/fhir/ImagingStudy",
        f"/fhir/ImagingStudy/{world.a_ct}",
        "/dicom-web/studies",
        f"/dicom-web/studies/{world.a_ct}/metadata",
    ):
        response = world.client.get(path, headers=auth)
        assert response.status_code == 403, path
        assert named in response.text


def test_a_restricted_scope_does_not_allow_stow(world: World) -> None:
    auth = world.token("user/ImagingStudy.cruds?modality=CT")
    response = world.client.post(
        "/dicom-web/studies",
        content=b"--x\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--x--\r\n",
        headers={**auth, "Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
    )
    assert response.status_code == 403
    assert "restrict" in response.text
    assert world.client.get("/dicom-web/studies", headers=auth).status_code == 200


def test_totals_are_counted_per_restriction(world: World) -> None:
    """Totals are remembered per scope: one restriction's count is never another's."""
    tokens = {
        "user/ImagingStudy.rs?modality=CT": 2,
        "user/ImagingStudy.rs?modality=MR": 1,
        "user/ImagingStudy.rs": 3,
        "user/ImagingStudy.rs?modality=CT user/ImagingStudy.rs?modality=MR": 3,
        "user/ImagingStudy.rs?modality=CT&modality=MR": 0,
    }
    for _ in range(2):  # the second time from the count cache
        for scope, expected in tokens.items():
            auth = world.token(scope)
            assert world.total("_summary=count", auth) == expected, scope
            assert world.total("_count=1", auth) == expected, scope
    patient_ct = world.token(CT_ONLY, world.a)
    assert world.total("_summary=count", patient_ct) == 1


def test_an_endpoint_confirms_only_a_patient_with_a_visible_study(world: World) -> None:
    """Patient A has an MR, patient B has none: an MR-restricted user token finds A's
    Endpoint and not B's (which would confirm B exists)."""
    auth = world.token("user/ImagingStudy.rs?modality=MR")
    assert world.client.get(f"/fhir/Endpoint/wado-{world.a}", headers=auth).status_code == 200
    assert world.client.get(f"/fhir/Endpoint/wado-{world.b}", headers=auth).status_code == 404
    unrestricted = world.token("user/ImagingStudy.rs")
    assert (
        world.client.get(f"/fhir/Endpoint/wado-{world.b}", headers=unrestricted).status_code == 200
    )
