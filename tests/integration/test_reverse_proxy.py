"""Behind a reverse proxy: every absolute URL (Bundle links and fullUrls, Endpoint
addresses, the CapabilityStatement's url, QIDO Retrieve URLs, metadata BulkDataURIs,
STOW Retrieve URLs, Location) starts with the public base a trusted proxy forwards, in
``Forwarded`` or ``X-Forwarded-*``; ``PACSFHIR_BASE_URL`` wins; an untrusted peer's
headers change nothing; a trusted proxy's malformed header is 400, never a URL with its
characters. Through a real nginx too, and the development-mode fence stays shut to
remote clients whatever the proxy and uvicorn do with the client address."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.errors import ConfigurationError
from tests.conftest import free_port, skip_or_fail
from tests.support.nginx import Nginx, nginx_problem

PUBLIC = "https://pacs.example:8443/imaging"
FORWARDED_HEADERS = {
    "X-Forwarded-Host": "pacs.example:8443",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Prefix": "/imaging",
}
URL = re.compile(r"(?:https?://)[^\s\"']+")
# code systems and profiles: not ours, never rewritten
EXTERNAL = re.compile(
    r"https?://(?:terminology\.)?(?:hl7\.org|dicom\.nema\.org|unitsofmeasure\.org)/"
)


def _client(archive: Archive, peer: str = "127.0.0.1", **changes: Any) -> TestClient:
    settings = archive.settings.replace(**{"base_url": "", **changes})
    shared = Archive(settings, archive.engine, archive.blobs)
    return TestClient(create_app(settings, shared), client=(peer, 40000))


@pytest.fixture(scope="module")
def proxied(sample_archive: Archive) -> Iterator[TestClient]:
    with _client(sample_archive, trusted_proxies="127.0.0.1, 10.0.0.0/8") as client:
        yield client


def absolute_urls(client: TestClient, headers: dict[str, str]) -> dict[str, list[str]]:
    """Every absolute URL of a tour of the surfaces, by where it was found."""
    found: dict[str, list[str]] = {}

    def get(label: str, path: str, **kwargs: Any) -> Any:
        response = client.get(path, headers={**headers, **kwargs.pop("extra", {})}, **kwargs)
        assert response.status_code == 200, (path, response.text)
        found[label] = [u for u in URL.findall(response.text) if not EXTERNAL.match(u)]
        return response.json()

    get("metadata", "/fhir/metadata")
    bundle = get(
        "search",
        "/fhir/ImagingStudy",
        params={"_count": "2", "_include": "ImagingStudy:endpoint"},
    )
    study = bundle["entry"][0]["resource"]
    patient = study["subject"]["reference"].split("/")[1]
    get("compartment", f"/fhir/Patient/{patient}/ImagingStudy", params={"_count": "1"})
    get("endpoint", f"/fhir/{study['endpoint'][0]['reference']}")
    uid = study["id"]
    get("qido", "/dicom-web/studies", params={"StudyInstanceUID": uid})
    get("patient qido", f"/fhir/Patient/{patient}/$wado-rs/studies")
    get("metadata json", f"/dicom-web/studies/{uid}/metadata")
    return found


def test_every_absolute_url_takes_the_forwarded_base(proxied: TestClient) -> None:
    urls = absolute_urls(proxied, FORWARDED_HEADERS)
    assert all(urls[label] for label in ("metadata", "search", "endpoint", "qido")), urls
    wrong = {
        label: [u for u in found if not u.startswith(PUBLIC + "/")] for label, found in urls.items()
    }
    assert wrong == {label: [] for label in urls}
    endpoint = json.loads(proxied.get("/fhir/Endpoint/dicomweb", headers=FORWARDED_HEADERS).text)
    assert endpoint["address"] == f"{PUBLIC}/dicom-web"


def test_forwarded_rfc_7239_says_the_same(proxied: TestClient) -> None:
    headers = {
        "Forwarded": 'for="[::1]:4711";host="pacs.example:8443";proto=https',  # loopback: dev mode
        "X-Forwarded-Prefix": "/imaging",
    }
    urls = absolute_urls(proxied, headers)
    assert {u.startswith(PUBLIC + "/") for found in urls.values() for u in found} == {True}


def test_without_forwarding_headers_nothing_changes(proxied: TestClient) -> None:
    urls = absolute_urls(proxied, {})
    default = "http://127.0.0.1:8080/"
    assert {u.startswith(default) for found in urls.values() for u in found} == {True}


def test_an_untrusted_peers_headers_are_ignored(sample_archive: Archive) -> None:
    with _client(sample_archive, trusted_proxies="10.9.9.9") as client:
        urls = absolute_urls(client, {**FORWARDED_HEADERS, "Forwarded": "host=evil.example"})
    flat = [u for found in urls.values() for u in found]
    assert flat
    assert not [u for u in flat if "pacs.example" in u or "evil" in u]


def test_base_url_wins(sample_archive: Archive) -> None:
    with _client(
        sample_archive, trusted_proxies="127.0.0.1", base_url="https://fixed.example/"
    ) as client:
        urls = absolute_urls(client, FORWARDED_HEADERS)
    assert {u.startswith("https://fixed.example/") for f in urls.values() for u in f} == {True}


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Host": 'evil.example/"><script>'},
        {"X-Forwarded-Host": "evil.example?x="},
        {"X-Forwarded-Host": "pacs.example", "X-Forwarded-Proto": "javascript"},
        {"X-Forwarded-Host": "pacs.example", "X-Forwarded-Prefix": "/../../etc"},
        {"Forwarded": 'host="a.example/b"'},
        {"Forwarded": 'host=pacs.example;proto="ht tp"'},
    ],
)
@pytest.mark.parametrize("path", ["/fhir/ImagingStudy?_count=1", "/dicom-web/studies"])
def test_a_trusted_proxys_malformed_header_is_400(
    proxied: TestClient, headers: dict[str, str], path: str
) -> None:
    response = proxied.get(path, headers=headers)
    assert response.status_code == 400, response.text
    assert "forwarding" in response.text
    if path.startswith("/fhir"):
        assert response.json()["resourceType"] == "OperationOutcome"
    else:
        assert response.headers["warning"].startswith("299 pacsfhir")


def test_location_of_a_patient_write_takes_the_forwarded_base(proxied: TestClient) -> None:
    response = proxied.put(
        "/fhir/Patient/proxy-test-patient",
        headers={**FORWARDED_HEADERS, "Content-Type": "application/fhir+json"},
        content=json.dumps({"resourceType": "Patient", "id": "proxy-test-patient"}),
    )
    assert response.status_code in (200, 201), response.text
    assert response.headers["location"].startswith(f"{PUBLIC}/fhir/Patient/proxy-test-patient/")


def test_a_malformed_trusted_proxies_setting_refuses_to_start(sample_archive: Archive) -> None:
    settings = sample_archive.settings.replace(trusted_proxies="10.0.0.1,not-an-address")
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        create_app(settings, sample_archive)


# -- the development-mode fence -----------------------------------------------------------


@pytest.mark.parametrize(
    ("trusted", "headers", "status"),
    [
        ("", {}, 200),
        ("", {"X-Forwarded-For": "127.0.0.1"}, 200),
        ("", {"X-Forwarded-For": "203.0.113.9"}, 403),
        ("", {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}, 403),
        ("", {"X-Real-IP": "203.0.113.9"}, 403),
        ("", {"Forwarded": "for=203.0.113.9"}, 403),
        ("", {"Forwarded": "for=unknown"}, 403),
        ("", {"Forwarded": "garbage"}, 403),
        ("127.0.0.1", {"Forwarded": 'for="[::1]";host=localhost'}, 200),
        ("127.0.0.1", {"Forwarded": "for=203.0.113.9;host=localhost"}, 403),
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, 403),
    ],
)
def test_the_development_fence_refuses_relayed_remote_clients(
    sample_archive: Archive, trusted: str, headers: dict[str, str], status: int
) -> None:
    with _client(sample_archive, trusted_proxies=trusted) as client:
        response = client.get("/fhir/ImagingStudy?_count=1", headers=headers)
    assert response.status_code == status, response.text


class Served:
    """pacsfhir under a real uvicorn on loopback, development mode, with or without
    uvicorn's own proxy-header handling (``pacsfhir serve`` turns it off when
    ``trusted_proxies`` is set)."""

    def __init__(self, archive: Archive, proxy_headers: bool, **changes: Any) -> None:
        self.port = free_port()
        settings = archive.settings.replace(port=self.port, **{"base_url": "", **changes})
        app = create_app(settings, Archive(settings, archive.engine, archive.blobs))
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", proxy_headers=proxy_headers
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.mark.parametrize("proxy_headers", [True, False], ids=["uvicorn-rewrites", "pacsfhir-reads"])
@pytest.mark.parametrize("trusted", ["", "127.0.0.1"])
def test_the_fence_under_uvicorn(
    sample_archive: Archive, proxy_headers: bool, trusted: str
) -> None:
    served = Served(sample_archive, proxy_headers, trusted_proxies=trusted)
    try:
        path = f"{served.url}/fhir/ImagingStudy?_count=1"
        assert httpx.get(path).status_code == 200
        assert httpx.get(path, headers={"X-Forwarded-For": "::1"}).status_code == 200
        for relayed in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}):
            assert httpx.get(path, headers=relayed).status_code == 403, relayed
    finally:
        served.stop()


# -- through a real nginx -------------------------------------------------------------------


@pytest.mark.parametrize("style", ["x-forwarded", "forwarded"])
def test_through_nginx(sample_archive: Archive, tmp_path: Path, style: str) -> None:
    problem = nginx_problem()
    if problem:
        skip_or_fail(problem)
    served = Served(sample_archive, proxy_headers=False, trusted_proxies="127.0.0.1")
    port = free_port()
    if style == "x-forwarded":
        forwarding = """
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Prefix /pacs;"""
    else:
        forwarding = """
            proxy_set_header Forwarded "for=$remote_addr;host=\\"$http_host\\";proto=$scheme";
            proxy_set_header X-Forwarded-Prefix /pacs;"""
    block = f"""
    server {{
        listen 127.0.0.1:{port};
        location /pacs/ {{
            proxy_pass http://127.0.0.1:{served.port}/;
            {forwarding}
        }}
    }}
    """
    try:
        with Nginx(tmp_path / "nginx", block, port):
            public = f"http://127.0.0.1:{port}/pacs"
            bundle = httpx.get(f"{public}/fhir/ImagingStudy", params={"_count": "1"}, timeout=30)
            assert bundle.status_code == 200, bundle.text
            body = bundle.json()
            assert body["link"][0]["url"].startswith(f"{public}/fhir/ImagingStudy?")
            assert body["entry"][0]["fullUrl"].startswith(f"{public}/fhir/ImagingStudy/")
            uid = body["entry"][0]["resource"]["id"]
            studies = httpx.get(f"{public}/dicom-web/studies", params={"StudyInstanceUID": uid})
            retrieve = studies.json()[0]["00081190"]["Value"][0]
            assert retrieve == f"{public}/dicom-web/studies/{uid}"
            metadata = httpx.get(f"{retrieve}/metadata", timeout=30)  # the URL works
            assert metadata.status_code == 200, metadata.text
            bulk = [
                v["BulkDataURI"] for i in metadata.json() for v in i.values() if "BulkDataURI" in v
            ]
            assert all(u.startswith(f"{public}/dicom-web/studies/{uid}/") for u in bulk)
    finally:
        served.stop()
