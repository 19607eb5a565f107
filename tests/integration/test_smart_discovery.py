"""SMART discovery: ``/fhir/.well-known/smart-configuration`` (SMART App Launch 2.0.0,
"Conformance") and the CapabilityStatement's ``rest.security`` with ``oauth-uris``, which
the Python ``fhirclient`` reads to find where to authorize."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from fhirclient.models.capabilitystatement import CapabilityStatement

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.mapping.smart import OAUTH_URIS
from tests.support.fhir_r4 import assert_valid, require_definitions

AUTHORIZE = "https://auth.example.org/authorize"
TOKEN = "https://auth.example.org/token"


@pytest.fixture
def configured(archive: Archive) -> Iterator[TestClient]:
    settings = archive.settings.replace(smart_authorize_url=AUTHORIZE, smart_token_url=TOKEN)
    shared = Archive(settings, archive.engine, archive.blobs)
    with TestClient(create_app(settings, shared)) as client:
        yield client


def test_smart_configuration_names_the_endpoints(configured: TestClient) -> None:
    response = configured.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    config = response.json()
    # SMART App Launch 2.0.0: these are required
    assert config["authorization_endpoint"] == AUTHORIZE
    assert config["token_endpoint"] == TOKEN
    assert "S256" in config["code_challenge_methods_supported"]
    assert "authorization_code" in config["grant_types_supported"]
    assert {"launch-standalone", "permission-v2", "permission-patient"} <= set(
        config["capabilities"]
    )
    assert "patient/ImagingStudy.rs" in config["scopes_supported"]


def test_capability_statement_carries_the_oauth_uris(configured: TestClient) -> None:
    require_definitions()
    statement = configured.get("/fhir/metadata").json()
    assert_valid(statement)
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    # fhirclient's own parser reads the oauth-uris extension from it
    parsed = CapabilityStatement(statement)
    extension = next(e for e in parsed.rest[0].security.extension if e.url == OAUTH_URIS)
    uris = {e.url: e.valueUri for e in extension.extension}
    assert uris == {"authorize": AUTHORIZE, "token": TOKEN}


def test_without_smart_endpoints_discovery_is_404(archive: Archive) -> None:
    with TestClient(create_app(archive.settings, archive)) as client:
        response = client.get("/fhir/.well-known/smart-configuration")
        statement = client.get("/fhir/metadata").json()
    assert response.status_code == 404
    assert "security" not in statement["rest"][0]
