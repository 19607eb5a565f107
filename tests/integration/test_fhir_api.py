"""The FHIR surface through the real stack (in-process ASGI client), on SQLite and
PostgreSQL: reads, versions and ETags, search by GET and POST, the Patient compartment,
paging while data arrives, errors and content negotiation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from tests.support.dicom_factory import load_template, write_study, write_variant

BASE = "http://pacsfhir.test"


def path_of(url: str) -> str:
    assert url.startswith(BASE), url
    return url[len(BASE) :]


def all_pages(client: TestClient, url: str) -> Iterator[dict[str, Any]]:
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.text
        bundle = response.json()
        yield bundle
        url = next((path_of(x["url"]) for x in bundle["link"] if x["relation"] == "next"), "")


def match_ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def outcome_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body


@pytest.fixture(scope="module")
def studies(sample_client: TestClient) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for bundle in all_pages(sample_client, "/fhir/ImagingStudy?_count=100")
        for e in bundle.get("entry", [])
    ]


def test_metadata_states_every_search_parameter(sample_client: TestClient) -> None:
    body = sample_client.get("/fhir/metadata").json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    (imaging,) = [r for r in body["rest"][0]["resource"] if r["type"] == "ImagingStudy"]
    names = {p["name"] for p in imaging["searchParam"]}
    assert names >= {
        "_id", "_lastUpdated", "identifier", "patient", "subject", "started", "status",
        "modality", "series", "instance", "dicom-class", "bodysite", "reason", "endpoint",
        "encounter", "referrer", "basedon", "interpreter", "performer",
    }  # fmt: skip


def test_read_has_version_etag_and_last_modified(
    sample_client: TestClient, studies: list[dict[str, Any]]
) -> None:
    study = studies[0]
    response = sample_client.get(f"/fhir/ImagingStudy/{study['id']}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json; charset=utf-8"
    body = response.json()
    assert body == study
    assert response.headers["etag"] == f'W/"{body["meta"]["versionId"]}"'
    assert response.headers["last-modified"].endswith("GMT")
    again = sample_client.get(
        f"/fhir/ImagingStudy/{study['id']}", headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304


def test_unknown_ids_are_404_outcomes(sample_client: TestClient) -> None:
    for url in ("/fhir/ImagingStudy/1.2.3.4.5", "/fhir/Patient/nobody", "/fhir/Endpoint/other"):
        outcome = outcome_of(sample_client.get(url), 404)
        assert outcome["issue"][0]["code"] == "not-found"


def test_subject_and_endpoint_resolve(
    sample_client: TestClient, studies: list[dict[str, Any]]
) -> None:
    study = studies[0]
    patient = sample_client.get(f"/fhir/{study['subject']['reference']}").json()
    assert patient["resourceType"] == "Patient"
    endpoint = sample_client.get(f"/fhir/{study['endpoint'][0]['reference']}").json()
    assert endpoint["address"] == f"{BASE}/dicom-web"
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"


def test_post_search_equals_get(sample_client: TestClient) -> None:
    query = {"modality": "MR", "started": "ge2000", "_count": "50"}
    got = sample_client.get("/fhir/ImagingStudy", params=query).json()
    posted = sample_client.post("/fhir/ImagingStudy/_search", data=query).json()
    assert match_ids(got) == match_ids(posted)
    assert got["total"] == posted["total"] > 0


def test_post_search_wants_a_form(sample_client: TestClient) -> None:
    response = sample_client.post("/fhir/ImagingStudy/_search", json={"modality": "MR"})
    outcome_of(response, 415)


def test_compartment_never_reaches_another_patient(
    sample_client: TestClient, studies: list[dict[str, Any]]
) -> None:
    by_patient: dict[str, set[str]] = {}
    for study in studies:
        by_patient.setdefault(study["subject"]["reference"], set()).add(study["id"])
    (a, a_ids), (b, b_ids) = list(by_patient.items())[:2]
    a_id, b_id = a.split("/")[1], b.split("/")[1]
    got = {
        i
        for p in all_pages(sample_client, f"/fhir/Patient/{a_id}/ImagingStudy")
        for i in match_ids(p)
    }
    assert got == a_ids
    escape = sample_client.get(f"/fhir/Patient/{a_id}/ImagingStudy", params={"patient": b_id})
    assert match_ids(escape.json()) == []
    escape = sample_client.get(
        f"/fhir/Patient/{a_id}/ImagingStudy", params={"_id": sorted(b_ids)[0]}
    )
    assert match_ids(escape.json()) == []
    nobody = sample_client.get("/fhir/Patient/nobody/ImagingStudy").json()
    assert nobody["total"] == 0


def test_paging_covers_everything_once(
    sample_client: TestClient, studies: list[dict[str, Any]]
) -> None:
    for sort in ("", "&_sort=-started", "&_sort=_lastUpdated", "&_sort=started,-_id"):
        pages = list(all_pages(sample_client, f"/fhir/ImagingStudy?_count=7{sort}"))
        ids = [i for p in pages for i in match_ids(p)]
        assert sorted(ids) == sorted(s["id"] for s in studies), sort
        assert all(p["total"] == len(studies) for p in pages)


def test_paging_stays_correct_while_studies_arrive(archive: Archive, tmp_path: Path) -> None:
    template = load_template()
    before = [write_study(template, tmp_path / "a", series=1, instances=1)[1][0] for _ in range(9)]
    ingest([str(p) for p in before], archive.engine, archive.blobs, workers=1)
    with TestClient(create_app(archive.settings, archive)) as client:
        first = client.get("/fhir/ImagingStudy?_count=4").json()
        seen = match_ids(first)
        later = [
            write_study(template, tmp_path / "b", series=1, instances=1)[1][0] for _ in range(5)
        ]
        ingest([str(p) for p in later], archive.engine, archive.blobs, workers=1)
        next_url = next(x["url"] for x in first["link"] if x["relation"] == "next")
        for bundle in all_pages(client, path_of(next_url)):
            seen += match_ids(bundle)
    assert len(seen) == len(set(seen)) == 14  # nothing twice, nothing skipped


def test_strict_handling_rejects_what_lenient_ignores(sample_client: TestClient) -> None:
    lenient = sample_client.get("/fhir/ImagingStudy", params={"colour": "blue", "modality": "MR"})
    bundle = lenient.json()
    self_link = next(x["url"] for x in bundle["link"] if x["relation"] == "self")
    assert "colour" not in self_link
    assert "modality=MR" in self_link
    assert bundle["entry"][-1]["search"]["mode"] == "outcome"
    strict = sample_client.get(
        "/fhir/ImagingStudy",
        params={"colour": "blue"},
        headers={"Prefer": "handling=strict"},
    )
    assert "colour" in outcome_of(strict, 400)["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "query",
    ["started=notadate", "_count=abc", "patient=Observation/1", "_cursor=garbage"],
)
def test_malformed_values_are_400(sample_client: TestClient, query: str) -> None:
    outcome_of(sample_client.get(f"/fhir/ImagingStudy?{query}"), 400)


def test_hostile_query_sizes_are_refused(sample_client: TestClient) -> None:
    outcome_of(sample_client.get("/fhir/ImagingStudy?identifier=" + "9" * 20_000), 400)
    many = "&".join(f"modality=X{i}" for i in range(200))
    outcome_of(sample_client.get(f"/fhir/ImagingStudy?{many}"), 400)
    assert sample_client.get("/fhir/metadata").status_code == 200  # still serving


@pytest.mark.parametrize(
    ("headers", "params", "status"),
    [
        ({}, {}, 200),
        ({"Accept": "application/fhir+json"}, {}, 200),
        ({"Accept": "application/json"}, {}, 200),
        ({"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, {}, 200),
        ({}, {"_format": "json"}, 200),
        ({}, {"_format": "application/fhir+json"}, 200),
        ({"Accept": "application/fhir+xml"}, {}, 406),
        ({}, {"_format": "xml"}, 406),
        ({"Accept": "application/fhir+xml"}, {"_format": "json"}, 200),  # _format wins
    ],
)
def test_format_negotiation(
    sample_client: TestClient, headers: dict[str, str], params: dict[str, str], status: int
) -> None:
    response = sample_client.get("/fhir/ImagingStudy", headers=headers, params=params)
    assert response.status_code == status
    if status == 406:
        outcome_of(response, 406)


def test_summary_count_total_none_elements_and_includes(sample_client: TestClient) -> None:
    count = sample_client.get("/fhir/ImagingStudy?_summary=count").json()
    assert count["total"] > 0
    assert "entry" not in count
    no_total = sample_client.get("/fhir/ImagingStudy?_total=none&_count=1").json()
    assert "total" not in no_total
    elements = sample_client.get("/fhir/ImagingStudy?_elements=identifier&_count=3").json()
    for entry in elements["entry"]:
        resource = entry["resource"]
        assert set(resource) <= {"resourceType", "id", "meta", "status", "subject", "identifier"}
        assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"
    summary = sample_client.get("/fhir/ImagingStudy?_summary=true&_count=3").json()
    assert all("instance" not in s for e in summary["entry"] for s in e["resource"]["series"])
    included = sample_client.get(
        "/fhir/ImagingStudy?_count=5&_include=ImagingStudy:subject&_include=ImagingStudy:endpoint"
    ).json()
    matches = [e for e in included["entry"] if e["search"]["mode"] == "match"]
    includes = {e["fullUrl"] for e in included["entry"] if e["search"]["mode"] == "include"}
    wanted = {f"{BASE}/fhir/{m['resource']['subject']['reference']}" for m in matches}
    assert wanted | {f"{BASE}/fhir/Endpoint/dicomweb"} == includes
    for entry in included["entry"]:  # an included Patient is the Patient a read returns
        if entry["resource"]["resourceType"] == "Patient":
            read = sample_client.get(f"/fhir/Patient/{entry['resource']['id']}").json()
            assert entry["resource"] == read


def test_errors_never_leak_tracebacks(sample_client: TestClient) -> None:
    response = sample_client.get("/fhir/Nothing/here")
    assert response.status_code == 404
    assert "Traceback" not in response.text
    outcome_of(sample_client.delete("/fhir/ImagingStudy/1.2.3"), 405)


def test_compartment_studies_point_at_the_patients_dicomweb_base(
    sample_client: TestClient, studies: list[dict[str, Any]]
) -> None:
    patient_id = studies[0]["subject"]["reference"].split("/")[1]
    bundle = sample_client.get(
        f"/fhir/Patient/{patient_id}/ImagingStudy",
        params={"_include": "ImagingStudy:endpoint"},
    ).json()
    matches = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    wanted = f"Endpoint/wado-{patient_id}"
    assert {m["endpoint"][0]["reference"] for m in matches} == {wanted}
    (included,) = [e for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert included["resource"]["address"] == f"{BASE}/fhir/Patient/{patient_id}/$wado-rs"
    assert sample_client.get(f"/fhir/{wanted}").json() == included["resource"]
    by_endpoint = sample_client.get(
        f"/fhir/Patient/{patient_id}/ImagingStudy", params={"endpoint": wanted}
    ).json()
    assert by_endpoint["total"] == len(matches)
    outcome_of(sample_client.get("/fhir/Endpoint/wado-nobody"), 404)


def test_cors_only_for_configured_origins(sample_archive: Archive) -> None:
    viewer = "http://viewer.test"
    settings = sample_archive.settings.replace(cors_origins=viewer)
    shared = Archive(settings, sample_archive.engine, sample_archive.blobs)
    with TestClient(create_app(settings, shared)) as client:
        preflight = client.options(
            "/dicom-web/studies",
            headers={"Origin": viewer, "Access-Control-Request-Method": "GET"},
        )
        assert preflight.headers["access-control-allow-origin"] == viewer
        other = client.get("/fhir/metadata", headers={"Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in other.headers


def test_totals_follow_new_studies_in_search_and_compartment(
    archive: Archive, tmp_path: Path
) -> None:
    """Bundle.total is remembered between pages and forgotten when any writer (here a
    second archive on the same index, as a CLI ingest would be) adds studies; the
    compartment's total is its own."""
    template = load_template()

    def add(name: str, count: int, patient_id: str) -> None:
        folder = tmp_path / name
        for n in range(count):
            write_variant(template, folder / f"{n}.dcm", PatientID=patient_id)
        writer = Archive.open(archive.settings)
        try:
            ingest([str(folder)], writer.engine, writer.blobs, workers=1)
        finally:
            writer.close()

    add("a", 3, "PA")
    add("b", 2, "PB")
    with TestClient(create_app(archive.settings, archive)) as client:

        def total(url: str) -> int:
            return int(client.get(url).json()["total"])

        every = "/fhir/ImagingStudy?_count=1"
        assert total(every) == 5
        first = client.get(every).json()
        next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        assert client.get(path_of(next_url)).json()["total"] == 5
        patient_a = client.get("/fhir/ImagingStudy?patient.identifier=PA").json()
        patient_id = patient_a["entry"][0]["resource"]["subject"]["reference"].split("/")[1]
        compartment = f"/fhir/Patient/{patient_id}/ImagingStudy?_count=1"
        assert total(compartment) == 3
        assert total("/fhir/ImagingStudy?_summary=count&patient.identifier=PB") == 2
        add("c", 2, "PA")
        assert total(every) == 7
        assert client.get(path_of(next_url)).json()["total"] == 7
        assert total(compartment) == 5
        assert total("/fhir/ImagingStudy?_summary=count&patient.identifier=PB") == 2
