"""Real FHIR clients, unmodified, against pacsfhir under a real uvicorn server.

* fhirclient (SMART on FHIR's Python client): ``FHIRClient``, ``Resource.where(...)``
  searches with its own Bundle paging, ``Resource.read``;
* fhirpy: ``SyncFHIRClient`` search sets (``fetch``, ``fetch_all``, ``limit``, ``count``,
  ``include``, chained parameters) and references.

Every answer is compared with what the raw HTTP API returns (httpx): the clients must see
exactly the same resources, in the same order, across the same pages.

fhirclient 4.x deprecates ``perform_resources()`` (the call the brief names) with a
DeprecationWarning; it is ignored here for this module, by its message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fhirclient import client as fhirclient_client
from fhirclient.models.bundle import Bundle
from fhirclient.models.imagingstudy import ImagingStudy
from fhirclient.models.patient import Patient
from fhirpy import SyncFHIRClient

from tests.conftest import LiveServer

JSON = dict[str, Any]

pytestmark = pytest.mark.filterwarnings(
    r"ignore:perform_resources\(\) is deprecated:DeprecationWarning"
)

MR = "MR"
SINCE = "2000-01-01"


# --------------------------------------------------------------------------- raw HTTP


class Raw:
    """The FHIR API through plain httpx: what the clients' answers are compared with."""

    def __init__(self, fhir_base: str) -> None:
        self.base = fhir_base
        self.http = httpx.Client(headers={"Accept": "application/fhir+json"}, timeout=30)

    def close(self) -> None:
        self.http.close()

    def get(self, path_or_url: str, params: Any = None) -> JSON:
        url = path_or_url if "://" in path_or_url else f"{self.base}/{path_or_url}"
        response = self.http.get(url, params=params)
        assert response.status_code == 200, (url, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/fhir+json")
        body: JSON = response.json()
        return body

    def pages(self, params: Any) -> Iterator[JSON]:
        """Every Bundle of an ImagingStudy search, following the next links."""
        bundle = self.get("ImagingStudy", params)
        seen = 0
        while True:
            yield bundle
            seen += 1
            assert seen < 1000, "next links do not end"
            next_url = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
            if next_url is None:
                return
            assert next_url.startswith(self.base + "/"), next_url
            bundle = self.get(next_url)

    def entries(self, params: Any) -> list[JSON]:
        """The resources of every entry (matches, includes, outcomes) of every page."""
        return [e["resource"] for b in self.pages(params) for e in b.get("entry", [])]

    def matches(self, params: Any) -> list[JSON]:
        return [
            e["resource"]
            for b in self.pages(params)
            for e in b.get("entry", [])
            if e["search"]["mode"] == "match"
        ]


@pytest.fixture(scope="module")
def fhir_base(live_server: LiveServer) -> str:
    return live_server.base_url + "/fhir"


@pytest.fixture(scope="module")
def raw(fhir_base: str) -> Iterator[Raw]:
    api = Raw(fhir_base)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="module")
def all_studies(raw: Raw) -> list[JSON]:
    studies = raw.matches({"_count": "1000"})
    assert len(studies) > 40
    return studies


@pytest.fixture(scope="module")
def busiest_patient(all_studies: list[JSON]) -> str:
    """The id of the Patient with the most studies (several, in pydicom's samples)."""
    counts = Counter[str](s["subject"]["reference"] for s in all_studies)
    reference, count = counts.most_common(1)[0]
    assert count >= 3
    return reference.split("/", 1)[1]


def ids(resources: list[JSON]) -> list[str]:
    return [f"{r['resourceType']}/{r['id']}" for r in resources]


def assert_same_entries(got: list[JSON], expected: list[JSON]) -> None:
    """Like assert_same, for entries that may lack an id (an OperationOutcome)."""
    assert [r["resourceType"] for r in got] == [r["resourceType"] for r in expected]
    assert got == expected


def assert_same(got: list[JSON], expected: list[JSON]) -> None:
    assert ids(got) == ids(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine == theirs, f"{mine['resourceType']}/{mine['id']} differs"


# --------------------------------------------------------------------------- fhirclient


@pytest.fixture(scope="module")
def smart(fhir_base: str) -> fhirclient_client.FHIRClient:
    return fhirclient_client.FHIRClient(
        settings={"app_id": "pacsfhir-tests", "api_base": fhir_base}
    )


def fc_search(smart: fhirclient_client.FHIRClient, struct: dict[str, str]) -> list[JSON]:
    found = ImagingStudy.where(struct=struct).perform_resources(smart.server)
    return [r.as_json() for r in found]


def test_fhirclient_search_by_patient(
    smart: fhirclient_client.FHIRClient, raw: Raw, busiest_patient: str
) -> None:
    got = fc_search(smart, {"patient": busiest_patient})
    expected = raw.entries({"patient": busiest_patient})
    assert len(expected) >= 3
    assert_same(got, expected)
    assert {s["subject"]["reference"] for s in got} == {f"Patient/{busiest_patient}"}


def test_fhirclient_search_by_modality(smart: fhirclient_client.FHIRClient, raw: Raw) -> None:
    got = fc_search(smart, {"modality": MR})
    expected = raw.entries({"modality": MR})
    assert expected
    assert_same(got, expected)
    assert all(any(m["code"] == MR for m in s["modality"]) for s in got)


def test_fhirclient_search_by_started(smart: fhirclient_client.FHIRClient, raw: Raw) -> None:
    got = fc_search(smart, {"started": f"ge{SINCE}"})
    expected = raw.entries({"started": f"ge{SINCE}"})
    assert expected
    assert_same(got, expected)
    assert all(s["started"][:10] >= SINCE for s in got)


def test_fhirclient_search_by_identifier(
    smart: fhirclient_client.FHIRClient, raw: Raw, all_studies: list[JSON]
) -> None:
    study = all_studies[0]
    token = f"urn:dicom:uid|urn:oid:{study['id']}"
    got = fc_search(smart, {"identifier": token})
    assert_same(got, raw.entries({"identifier": token}))
    assert ids(got) == [f"ImagingStudy/{study['id']}"]
    # an accession number shared by two studies (chrJapMulti / chrKoreanMulti)
    accession = "2008050417172310"
    got = fc_search(smart, {"identifier": accession})
    assert_same(got, raw.entries({"identifier": accession}))
    assert len(got) == 2


def test_fhirclient_reads_every_study_and_patient(
    smart: fhirclient_client.FHIRClient, raw: Raw, all_studies: list[JSON]
) -> None:
    for study in all_studies:
        got = ImagingStudy.read(study["id"], smart.server)
        assert got.as_json() == raw.get(f"ImagingStudy/{study['id']}")
    for reference in sorted({s["subject"]["reference"] for s in all_studies}):
        patient_id = reference.split("/", 1)[1]
        patient = Patient.read(patient_id, smart.server)
        assert patient.as_json() == raw.get(reference)


def test_fhirclient_follows_next_links(
    smart: fhirclient_client.FHIRClient, raw: Raw, all_studies: list[JSON]
) -> None:
    struct = {"_count": "3"}
    bundles: list[Bundle] = list(ImagingStudy.where(struct=struct).perform_iter(smart.server))
    expected = list(raw.pages(struct))
    assert len(bundles) == len(expected) == -(-len(all_studies) // 3)
    assert [b.as_json() for b in bundles] == expected
    got = fc_search(smart, struct)
    assert_same(got, raw.entries(struct))
    assert sorted(ids(got)) == sorted(ids(all_studies))


def test_fhirclient_include_and_outcome_entries(
    smart: fhirclient_client.FHIRClient, raw: Raw
) -> None:
    """Included Patients and the OperationOutcome for an ignored parameter are entries
    too; fhirclient parses them all, on every page."""
    struct = {"modality": MR, "_count": "2", "no-such-param": "x"}
    search = ImagingStudy.where(struct=struct).include("subject")
    got = [r.as_json() for r in search.perform_resources(smart.server)]
    expected = raw.entries([*struct.items(), ("_include", "ImagingStudy:subject")])
    assert_same_entries(got, expected)
    kinds = Counter(r["resourceType"] for r in got)
    assert kinds["ImagingStudy"] == len(raw.matches({"modality": MR}))
    assert kinds["Patient"] >= 1
    # only the first page: next links carry only the parameters the server used
    assert kinds["OperationOutcome"] == 1
    first_page = next(raw.pages([*struct.items(), ("_include", "ImagingStudy:subject")]))
    outcome_at = [r["resourceType"] for r in got].index("OperationOutcome")
    assert outcome_at == len(first_page["entry"]) - 1


@pytest.mark.parametrize(
    "struct",
    [{"_summary": "true"}, {"_elements": "identifier,modality"}, {"_summary": "count"}],
    ids=["summary-true", "elements", "summary-count"],
)
def test_fhirclient_parses_subsetted_results(
    smart: fhirclient_client.FHIRClient, raw: Raw, struct: dict[str, str]
) -> None:
    got = fc_search(smart, struct)
    assert_same(got, raw.entries(struct))
    bundle = next(ImagingStudy.where(struct=struct).perform_iter(smart.server))
    assert bundle.as_json() == raw.get("ImagingStudy", struct)


# --------------------------------------------------------------------------- fhirpy


@pytest.fixture(scope="module")
def fhirpy(fhir_base: str) -> SyncFHIRClient:
    return SyncFHIRClient(fhir_base)


def serialized(resources: list[Any]) -> list[JSON]:
    return [dict(r.serialize()) for r in resources]


def test_fhirpy_fetch_all_by_patient(
    fhirpy: SyncFHIRClient, raw: Raw, busiest_patient: str
) -> None:
    got = fhirpy.resources("ImagingStudy").search(patient=busiest_patient).fetch_all()
    expected = raw.matches({"patient": busiest_patient})
    assert_same(serialized(got), expected)
    # the same with a fhirpy reference as the value (sent as Patient/<id>)
    reference = fhirpy.reference("Patient", busiest_patient)
    got = fhirpy.resources("ImagingStudy").search(patient=reference).fetch_all()
    assert_same(serialized(got), expected)


def test_fhirpy_fetch_all_follows_next_links(
    fhirpy: SyncFHIRClient, raw: Raw, all_studies: list[JSON]
) -> None:
    got = fhirpy.resources("ImagingStudy").limit(3).fetch_all()
    assert_same(serialized(got), raw.matches({"_count": "3"}))
    assert sorted(ids(serialized(got))) == sorted(ids(all_studies))


def test_fhirpy_limit_fetches_one_page(fhirpy: SyncFHIRClient, raw: Raw) -> None:
    got = fhirpy.resources("ImagingStudy").search(modality=MR).limit(2).fetch()
    page = raw.get("ImagingStudy", {"modality": MR, "_count": "2"})
    expected = [e["resource"] for e in page["entry"]]
    assert len(expected) == 2
    assert_same(serialized(got), expected)


def test_fhirpy_started_ge(fhirpy: SyncFHIRClient, raw: Raw) -> None:
    got = fhirpy.resources("ImagingStudy").search(started__ge=SINCE).fetch_all()
    expected = raw.matches({"started": f"ge{SINCE}"})
    assert expected
    assert_same(serialized(got), expected)


def test_fhirpy_chained_patient_identifier(
    fhirpy: SyncFHIRClient, raw: Raw, busiest_patient: str
) -> None:
    patient = raw.get(f"Patient/{busiest_patient}")
    value = patient["identifier"][0]["value"]
    got = fhirpy.resources("ImagingStudy").search(patient__identifier=value).fetch_all()
    expected = raw.matches({"patient.identifier": value})
    assert_same(serialized(got), expected)
    # the chain finds the studies of every patient with that identifier value
    by_patient = raw.matches({"patient": busiest_patient})
    assert set(ids(by_patient)) <= set(ids(expected))


def test_fhirpy_include_subject(fhirpy: SyncFHIRClient, raw: Raw) -> None:
    search = fhirpy.resources("ImagingStudy").search(modality=MR).include("ImagingStudy", "subject")
    bundle = search.fetch_raw()
    params = [("modality", MR), ("_include", "ImagingStudy:subject")]
    expected = raw.get("ImagingStudy", params)
    got = [(e["search"]["mode"], dict(e["resource"].serialize())) for e in bundle["entry"]]
    want = [(e["search"]["mode"], e["resource"]) for e in expected["entry"]]
    assert [(m, f"{r['resourceType']}/{r['id']}") for m, r in got] == [
        (m, f"{r['resourceType']}/{r['id']}") for m, r in want
    ]
    assert got == want
    included = {r["id"] for m, r in want if m == "include"}
    matched = [r for m, r in want if m == "match"]
    assert included == {r["subject"]["reference"].split("/", 1)[1] for r in matched}
    # fetch() keeps the ImagingStudy matches only
    assert_same(serialized(search.fetch()), matched)


def test_fhirpy_reference_to_resource(
    fhirpy: SyncFHIRClient, raw: Raw, all_studies: list[JSON]
) -> None:
    for study in all_studies[:5]:
        got: Any = fhirpy.reference("ImagingStudy", study["id"]).to_resource()
        assert dict(got.serialize()) == raw.get(f"ImagingStudy/{study['id']}")
        patient: Any = fhirpy.reference(reference=study["subject"]["reference"]).to_resource()
        assert dict(patient.serialize()) == raw.get(study["subject"]["reference"])


def test_fhirpy_count(fhirpy: SyncFHIRClient, raw: Raw, all_studies: list[JSON]) -> None:
    assert fhirpy.resources("ImagingStudy").count() == len(all_studies)
    expected = raw.get("ImagingStudy", {"modality": MR, "_summary": "count"})["total"]
    assert fhirpy.resources("ImagingStudy").search(modality=MR).count() == expected
    assert expected == len(raw.matches({"modality": MR}))
