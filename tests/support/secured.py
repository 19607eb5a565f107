"""What the authorization tests share: small archives of generated studies, pacsfhir in
JWT mode over them, and bearer tokens minted by the suite's authorization server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from pacsfhir.index import queries
from pacsfhir.index.engine import read_connection
from tests.support.authserver import AuthServer
from tests.support.dicom_factory import load_template, write_study

FHIR_BASE = "http://pacsfhir.test/fhir"  # the base URL conftest.make_settings gives


def bearer(auth: AuthServer, scope: str, patient: str | None = None) -> dict[str, str]:
    """An Authorization header with a valid token for ``scope`` (and launch ``patient``),
    signed with the authorization server's key and addressed to pacsfhir's FHIR base."""
    claims: dict[str, Any] = {"scope": scope, "aud": FHIR_BASE}
    if patient is not None:
        claims["patient"] = patient
    return {"Authorization": f"Bearer {auth.mint(claims)}"}


class Studies:
    """Studies of one series written from CT_small with the given attributes, ingested
    together by ``ingest``."""

    def __init__(self, folder: Path, instances: int = 1) -> None:
        self._folder = folder
        self._instances = instances
        self._template = load_template()
        self._files: list[str] = []

    def add(self, **attributes: Any) -> str:
        uid, paths = write_study(
            self._template,
            self._folder,
            series=1,
            instances=self._instances,
            **attributes,
        )
        self._files.extend(str(p) for p in paths)
        return uid

    def ingest(self, archive: Archive) -> None:
        ingest(self._files, archive.engine, archive.blobs, workers=1)
        self._files = []


def patient_of(archive: Archive, study_uid: str) -> str:
    """The id of the DICOM patient a study was made for (read from the index itself)."""
    with read_connection(archive.engine) as conn:
        rows = queries.load_studies(conn, study_uid=study_uid)
    return str(rows[0].patient["resource_id"])


def jwt_client(archive: Archive, auth: AuthServer, **settings: Any) -> TestClient:
    """pacsfhir checking the authorization server's JWTs, over ``archive`` (enter it)."""
    secured = archive.settings.replace(auth="jwt", jwt_issuer=auth.issuer, **settings)
    return TestClient(create_app(secured, Archive(secured, archive.engine, archive.blobs)))
