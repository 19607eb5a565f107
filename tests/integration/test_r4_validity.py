"""Everything the server emits is valid FHIR R4, checked against HL7's R4 definitions
(tests/support/fhir_r4.py), and specific DICOM -> FHIR facts hold on pydicom's real files.

The archive behind ``sample_client`` holds every pydicom sample file (test_files,
charset_files and pydicom-data), on SQLite and on PostgreSQL. Expected values are read
from the files with pydicom here, not from the server's own mapping code.

Spec: FHIR R4 (4.0.1) search https://hl7.org/fhir/R4/search.html, RESTful API
https://hl7.org/fhir/R4/http.html, ImagingStudy https://hl7.org/fhir/R4/imagingstudy.html.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.sr.codedict import codes

from tests.conftest import PYDICOM_DATA, sample_paths
from tests.support.fhir_r4 import DEFINITIONS_DIR, assert_valid, require_definitions, validate

JSON = dict[str, Any]

FHIR_JSON = "application/fhir+json"
SNOMED = "http://snomed.info/sct"
SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")
EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
CHARSET_DIR = PYDICOM_DATA / "charset_files"
CT_SMALL = PYDICOM_DATA / "test_files" / "CT_small.dcm"

# DICOM PS3.16 2024c Annex L Table L-1 "Corresponding Codes and Terms for Human Use": the
# Body Part Examined Defined Terms that occur in the sample files, with their SNOMED CT
# code and Code Meaning (typed from the standard, not from the server's generated table).
TABLE_L1: dict[str, tuple[str, str]] = {
    "ABDOMEN": ("818981001", "Abdomen"),
    "CHEST": ("43799004", "Chest"),
    "CSPINE": ("122494005", "Cervical spine"),
    "EXTREMITY": ("66019005", "Extremity"),
    "HEAD": ("69536005", "Head"),
    "NECK": ("45048000", "Neck"),
    "PANCREAS": ("15776009", "Pancreas"),
}
# PS3.16 CID 244 "Laterality".
LATERALITY: dict[str, tuple[str, str]] = {
    "R": ("24028007", "Right"),
    "L": ("7771000", "Left"),
    "B": ("51440002", "Bilateral"),
}


@pytest.fixture(autouse=True)
def _definitions() -> None:
    require_definitions()


# --------------------------------------------------------------------------- helpers


def get_json(client: TestClient, url: str, **kwargs: Any) -> tuple[int, JSON]:
    """GET ``url`` (absolute next links are reduced to path + query) and return the status
    and the JSON body, after checking the response is FHIR JSON."""
    parts = urlsplit(url)
    if parts.scheme:
        url = parts.path + ("?" + parts.query if parts.query else "")
    response = client.get(url, **kwargs)
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith(FHIR_JSON), (url, response.status_code, content_type)
    body: JSON = response.json()
    return response.status_code, body


def ok_json(client: TestClient, url: str, **kwargs: Any) -> JSON:
    status, body = get_json(client, url, **kwargs)
    assert status == 200, (url, status, body)
    return body


def matches(bundle: JSON) -> list[JSON]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def entries(bundle: JSON, mode: str) -> list[JSON]:
    return [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == mode]


def link(bundle: JSON, relation: str) -> str | None:
    for item in bundle.get("link", []):
        if item["relation"] == relation:
            return str(item["url"])
    return None


def query_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def tags(resource: JSON) -> set[tuple[str, str]]:
    return {(t.get("system"), t.get("code")) for t in resource.get("meta", {}).get("tag", [])}


def problems_of(label: str, resource: JSON) -> list[str]:
    return [f"{label}: {p}" for p in validate(resource)]


def assert_no_problems(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


@functools.cache
def _imaging_study_elements() -> dict[str, JSON]:
    """ImagingStudy's ElementDefinitions (HL7 R4 snapshot) by path."""
    bundle = json.loads((DEFINITIONS_DIR / "profiles-resources.json").read_text("utf-8"))
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "StructureDefinition" and resource["id"] == "ImagingStudy":
            return {ed["path"]: ed for ed in resource["snapshot"]["element"]}
    raise AssertionError("no ImagingStudy StructureDefinition")


def non_summary_elements(value: JSON, path: str = "ImagingStudy") -> Iterator[str]:
    """Paths of elements present in ``value`` that R4 does not mark isSummary."""
    elements = _imaging_study_elements()
    for key, child in value.items():
        if key == "resourceType":
            continue
        child_path = f"{path}.{key}"
        definition = elements.get(child_path)
        if definition is None:
            continue  # the schema check reports unknown elements
        if not definition.get("isSummary"):
            yield child_path
            continue
        if any(p.startswith(child_path + ".") for p in elements):  # a backbone element
            for item in child if isinstance(child, list) else [child]:
                yield from non_summary_elements(item, child_path)


def mandatory_top_level() -> set[str]:
    elements = _imaging_study_elements()
    return {
        path.split(".")[1]
        for path, ed in elements.items()
        if path.count(".") == 1 and ed["min"] >= 1
    }


# --------------------------------------------------------------------------- sample files


Header = dict[str, str]
SERIES_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "BodyPartExamined",
    "Laterality",
)
CT_KEYWORDS = (
    *SERIES_KEYWORDS,
    "SOPClassUID",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "TimezoneOffsetFromUTC",
    "SeriesNumber",
    "InstanceNumber",
)
NAME_KEYWORDS = ("StudyInstanceUID", "PatientName", "PatientID")


def read_header(path: Path, keywords: tuple[str, ...]) -> Header | None:
    """The named attributes of a DICOM file as stripped text ("" when absent), or None
    when pydicom cannot read it. pydicom warns about the deliberately odd sample files,
    also when a value is first decoded, so all of it happens here with warnings off."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            header = {}
            for keyword in keywords:
                value = dataset.get(keyword)
                header[keyword] = "" if value is None else str(value).strip()
            return header
        except Exception:
            return None


@functools.cache
def sample_headers() -> tuple[Header, ...]:
    """Every sample file pydicom can read that has a Study Instance UID."""
    found = []
    for root in sample_paths():
        for path in sorted(Path(root).rglob("*")):
            if not path.is_file():
                continue
            header = read_header(path, SERIES_KEYWORDS)
            if header is not None and header["StudyInstanceUID"]:
                found.append(header)
    return tuple(found)


def fhir_datetime(date: str, time: str, offset: str) -> str:
    """What a DICOM DA + TM + Timezone Offset From UTC are as a FHIR dateTime: full
    precision when the offset is known, the date alone otherwise (FHIR requires a zone
    with a time, and pacsfhir runs here without a default zone)."""
    text = f"{date[:4]}-{date[4:6]}-{date[6:8]}"
    time = time.replace(":", "")
    if not offset or not time:
        return text
    hours, minutes, seconds = time[0:2], time[2:4] or "00", time[4:6] or "00"
    fraction = time[7:] if len(time) > 7 and time[6] == "." else ""
    text += f"T{hours}:{minutes}:{seconds}" + (f".{fraction}" if fraction else "")
    zone = f"{offset[0]}{offset[1:3]}:{offset[3:5]}"
    return text + ("Z" if zone in ("+00:00", "-00:00") else zone)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def all_studies(sample_client: TestClient) -> list[JSON]:
    bundle = ok_json(sample_client, "/fhir/ImagingStudy", params={"_count": "1000"})
    assert link(bundle, "next") is None
    studies = matches(bundle)
    assert len(studies) == bundle["total"]
    assert len(studies) > 40, "the sample archive should hold pydicom's sample studies"
    return studies


@pytest.fixture(scope="module")
def studies_by_uid(all_studies: list[JSON]) -> dict[str, JSON]:
    return {s["id"]: s for s in all_studies}


def read_study(client: TestClient, uid: str) -> JSON:
    return ok_json(client, f"/fhir/ImagingStudy/{uid}")


def read_subject(client: TestClient, study: JSON) -> JSON:
    return ok_json(client, "/fhir/" + study["subject"]["reference"])


# --------------------------------------------------------------------------- reads


def test_capability_statement_is_valid_r4(sample_client: TestClient) -> None:
    statement = ok_json(sample_client, "/fhir/metadata")
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert_valid(statement)


def test_every_imaging_study_read_is_valid_r4(
    sample_client: TestClient, all_studies: list[JSON]
) -> None:
    problems: list[str] = []
    for found in all_studies:
        study = read_study(sample_client, found["id"])
        assert study["resourceType"] == "ImagingStudy"
        assert study["id"] == found["id"]
        assert study == found, f"read and search disagree on ImagingStudy/{found['id']}"
        problems += problems_of(f"ImagingStudy/{found['id']}", study)
    assert_no_problems(problems)


def test_every_referenced_patient_is_valid_r4(
    sample_client: TestClient, all_studies: list[JSON]
) -> None:
    references = sorted({s["subject"]["reference"] for s in all_studies})
    assert all(r.startswith("Patient/") for r in references)
    problems: list[str] = []
    for reference in references:
        patient = ok_json(sample_client, f"/fhir/{reference}")
        assert patient["resourceType"] == "Patient"
        assert f"Patient/{patient['id']}" == reference
        problems += problems_of(reference, patient)
    assert_no_problems(problems)


def test_the_endpoint_is_valid_r4(sample_client: TestClient, all_studies: list[JSON]) -> None:
    references = {e["reference"] for s in all_studies for e in s.get("endpoint", [])}
    assert len(references) == 1, references
    (reference,) = references
    endpoint = ok_json(sample_client, f"/fhir/{reference}")
    assert endpoint["resourceType"] == "Endpoint"
    assert f"Endpoint/{endpoint['id']}" == reference
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert_valid(endpoint)


# --------------------------------------------------------------------------- searches


def test_plain_search_bundle_is_valid_r4(
    sample_client: TestClient, all_studies: list[JSON]
) -> None:
    bundle = ok_json(sample_client, "/fhir/ImagingStudy")
    assert bundle["type"] == "searchset"
    assert bundle["total"] == len(all_studies)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"].endswith(f"/ImagingStudy/{resource['id']}")
    assert_valid(bundle)


def test_search_with_includes_is_valid_r4(sample_client: TestClient) -> None:
    params = [
        ("_include", "ImagingStudy:subject"),
        ("_include", "ImagingStudy:endpoint"),
        ("_count", "10"),
    ]
    bundle = ok_json(sample_client, "/fhir/ImagingStudy", params=params)
    assert_valid(bundle)
    found = matches(bundle)
    assert len(found) == 10
    included = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e
        for e in entries(bundle, "include")
    }
    wanted = {s["subject"]["reference"] for s in found} | {
        r["reference"] for s in found for r in s["endpoint"]
    }
    assert set(included) == wanted
    for reference, entry in included.items():
        assert entry["fullUrl"].endswith("/fhir/" + reference)


def test_summary_true_is_valid_r4_and_only_summary_elements(sample_client: TestClient) -> None:
    bundle = ok_json(sample_client, "/fhir/ImagingStudy", params={"_summary": "true"})
    assert_valid(bundle)
    found = matches(bundle)
    assert found
    for study in found:
        assert list(non_summary_elements(study)) == [], study["id"]
        assert SUBSETTED in tags(study), f"R4 search.html#summary: SUBSETTED on {study['id']}"


def test_summary_count_is_valid_r4(sample_client: TestClient, all_studies: list[JSON]) -> None:
    bundle = ok_json(sample_client, "/fhir/ImagingStudy", params={"_summary": "count"})
    assert_valid(bundle)
    assert bundle["total"] == len(all_studies)
    assert matches(bundle) == []


def test_elements_is_valid_r4_and_subsetted(sample_client: TestClient) -> None:
    bundle = ok_json(
        sample_client, "/fhir/ImagingStudy", params={"_elements": "identifier,modality"}
    )
    assert_valid(bundle)
    allowed = {"resourceType", "id", "meta", "identifier", "modality"} | mandatory_top_level()
    found = matches(bundle)
    assert found
    for study in found:
        assert set(study) <= allowed, (study["id"], sorted(set(study) - allowed))
        assert "identifier" in study
        assert SUBSETTED in tags(study)


def test_paged_search_is_valid_r4_and_complete(
    sample_client: TestClient, all_studies: list[JSON]
) -> None:
    url: str | None = "/fhir/ImagingStudy?_count=3"
    seen: list[str] = []
    pages = 0
    problems: list[str] = []
    while url is not None:
        bundle = ok_json(sample_client, url)
        pages += 1
        problems += problems_of(f"page {pages}", bundle)
        page = matches(bundle)
        assert len(page) <= 3
        assert bundle["total"] == len(all_studies)
        seen += [s["id"] for s in page]
        url = link(bundle, "next")
        if url is not None:
            assert dict(query_of(url)).get("_count") == "3", url
        assert pages <= len(all_studies), "next links do not end"
    assert_no_problems(problems)
    assert len(seen) == len(set(seen)), "a study appeared on two pages"
    assert sorted(seen) == sorted(s["id"] for s in all_studies)
    assert pages == -(-len(all_studies) // 3)


@pytest.mark.parametrize(
    "params",
    [
        {"_summary": "text"},
        {"_summary": "data"},
        {"_summary": "false"},
        {"_sort": "-started", "_count": "5"},
        {"_total": "none", "_count": "5"},
        {"_include": "ImagingStudy:patient", "_summary": "true", "_count": "5"},
    ],
    ids=["summary-text", "summary-data", "summary-false", "sort", "total-none", "include-sum"],
)
def test_other_search_bundles_are_valid_r4(
    sample_client: TestClient, params: dict[str, str]
) -> None:
    bundle = ok_json(sample_client, "/fhir/ImagingStudy", params=params)
    assert bundle["type"] == "searchset"
    assert matches(bundle)
    assert_valid(bundle)


def test_unknown_parameter_gives_an_outcome_entry(sample_client: TestClient) -> None:
    bundle = ok_json(
        sample_client, "/fhir/ImagingStudy", params={"modality": "CT", "no-such-param": "x"}
    )
    assert_valid(bundle)
    outcomes = entries(bundle, "outcome")
    assert len(outcomes) == 1
    outcome = outcomes[0]["resource"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] in ("warning", "information")
    assert "no-such-param" in json.dumps(outcome)
    # search.html#errors: the self link shows the parameters actually used
    self_params = [k for k, _ in query_of(link(bundle, "self") or "")]
    assert "modality" in self_params
    assert "no-such-param" not in self_params
    assert all(any(m["code"] == "CT" for m in s["modality"]) for s in matches(bundle))


def test_compartment_and_post_search_bundles_are_valid_r4(
    sample_client: TestClient, all_studies: list[JSON]
) -> None:
    patient = all_studies[0]["subject"]["reference"]
    bundle = ok_json(sample_client, f"/fhir/{patient}/ImagingStudy")
    assert_valid(bundle)
    assert {s["subject"]["reference"] for s in matches(bundle)} == {patient}
    response = sample_client.post(
        "/fhir/ImagingStudy/_search",
        data={"patient": patient},
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    posted = response.json()
    assert_valid(posted)
    assert [s["id"] for s in matches(posted)] == [s["id"] for s in matches(bundle)]


# --------------------------------------------------------------------------- errors

ERRORS = [
    pytest.param("/fhir/ImagingStudy/1.2.3.999999", {}, {}, 404, id="404-imagingstudy"),
    pytest.param("/fhir/Patient/no-such-patient", {}, {}, 404, id="404-patient"),
    pytest.param("/fhir/Endpoint/no-such-endpoint", {}, {}, 404, id="404-endpoint"),
    pytest.param("/fhir/ImagingStudy", {"started": "notadate"}, {}, 400, id="400-bad-date"),
    pytest.param(
        "/fhir/ImagingStudy",
        {"no-such-param": "x"},
        {"Prefer": "handling=strict"},
        400,
        id="400-strict-unknown",
    ),
    pytest.param("/fhir/ImagingStudy", {"_format": "xml"}, {}, 406, id="406-format-xml"),
    pytest.param("/fhir/metadata", {"_format": "xml"}, {}, 406, id="406-metadata-xml"),
    pytest.param(
        "/fhir/ImagingStudy",
        {},
        {"Accept": "application/fhir+xml"},
        406,
        id="406-accept-xml",
    ),
    pytest.param("/fhir/Observation", {}, {}, 404, id="404-unknown-type"),
]


@pytest.mark.parametrize(("path", "params", "headers", "status"), ERRORS)
def test_errors_are_valid_r4_operation_outcomes(
    sample_client: TestClient,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
) -> None:
    got, body = get_json(sample_client, path, params=params, headers=headers)
    assert got == status, body
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"]
    assert all(i["severity"] in ("error", "fatal") for i in body["issue"])
    assert_valid(body)


# --------------------------------------------------------------------------- DICOM facts


def _name_groups(person_name: str) -> list[str]:
    return [*person_name.split("="), "", ""][:3]


def _expected_name(group: str) -> JSON:
    """The parts of one PN component group (PS3.5 6.2: family^given^middle^prefix^suffix)."""
    family, given, middle, prefix, suffix = ([p.strip() for p in group.split("^")] + [""] * 5)[:5]
    expected: JSON = {}
    if family:
        expected["family"] = family
    if given or middle:
        expected["given"] = [p for p in (given, middle) if p]
    if prefix:
        expected["prefix"] = [prefix]
    if suffix:
        expected["suffix"] = [suffix]
    return expected


def _representation(name: JSON) -> str:
    for extension in name.get("extension", []):
        if extension["url"] == EN_REPRESENTATION:
            return str(extension["valueCode"])
    return "ABC"


def test_counts_are_consistent_in_every_study(all_studies: list[JSON]) -> None:
    wrong = []
    for study in all_studies:
        series = study.get("series", [])
        listed = sum(len(s.get("instance", [])) for s in series)
        per_series = sum(s.get("numberOfInstances", 0) for s in series)
        if not (
            study["numberOfSeries"] == len(series)
            and study["numberOfInstances"] == per_series == listed
            and all(s["numberOfInstances"] == len(s["instance"]) for s in series)
        ):
            wrong.append(
                f"{study['id']}: {study['numberOfSeries']} series, "
                f"{study['numberOfInstances']} instances; listed {len(series)}, {listed}"
            )
    assert not wrong, "\n".join(wrong)


def test_study_modality_is_the_acquisition_modalities_of_its_series(
    all_studies: list[JSON],
) -> None:
    """R4 ImagingStudy.modality: "A list of all the series.modality values that are actual
    acquisition modalities, i.e. those in the DICOM Context Group 29"
    (https://hl7.org/fhir/R4/imagingstudy-definitions.html#ImagingStudy.modality)."""
    acquisition = {code.value for code in codes.CID29.concepts.values()}
    wrong = []
    for study in all_studies:
        in_series = {s["modality"]["code"] for s in study.get("series", [])}
        expected = sorted(in_series & acquisition)
        got = sorted(m["code"] for m in study.get("modality", []))
        if got != expected:
            wrong.append(f"{study['id']}: modality {got}, series {sorted(in_series)}")
    assert not wrong, f"{len(wrong)} studies:\n" + "\n".join(wrong)


def _charset_header(filename: str) -> Header:
    header = read_header(CHARSET_DIR / filename, NAME_KEYWORDS)
    assert header is not None, filename
    return header


CHARSET_FILES = sorted(
    p.name
    for p in CHARSET_DIR.glob("*.dcm")
    if (header := read_header(p, NAME_KEYWORDS)) is not None and header["PatientName"]
)


@pytest.mark.parametrize("filename", CHARSET_FILES)
def test_patient_names_in_every_character_set(sample_client: TestClient, filename: str) -> None:
    """Each PN component group (alphabetic, ideographic, phonetic; PS3.5 6.2.1) as pydicom
    decodes it from the file's Specific Character Set is one HumanName with the same parts."""
    header = _charset_header(filename)
    person_name = header["PatientName"]
    study = read_study(sample_client, header["StudyInstanceUID"])
    patient = read_subject(sample_client, study)
    assert_valid(patient)
    got = {_representation(n): n for n in patient.get("name", [])}
    expected = {}
    for representation, group in zip(("ABC", "IDE", "SYL"), _name_groups(person_name), strict=True):
        if group.replace("^", "").strip():
            expected[representation] = _expected_name(group)
    assert set(got) == set(expected), (filename, person_name, patient.get("name"))
    for representation, parts in expected.items():
        name = got[representation]
        assert {k: name.get(k) for k in parts} == parts, (filename, representation, name)
        extra = {"prefix", "suffix", "given", "family"} - set(parts)
        assert not any(name.get(k) for k in extra), (filename, representation, name)
    assert header["PatientID"] in [i["value"] for i in patient["identifier"]]


def test_the_documented_character_set_examples(sample_client: TestClient) -> None:
    """The examples named in the brief, spelled out (chrFren, chrH31)."""

    def patient_of(filename: str) -> JSON:
        uid = _charset_header(filename)["StudyInstanceUID"]
        return read_subject(sample_client, read_study(sample_client, uid))

    fren = patient_of("chrFren.dcm")["name"]
    assert len(fren) == 1
    assert fren[0]["family"] == "Buc"
    assert fren[0]["given"] == ["Jérôme"]

    names = {_representation(n): n for n in patient_of("chrH31.dcm")["name"]}
    assert (names["ABC"]["family"], names["ABC"]["given"]) == ("Yamada", ["Tarou"])
    assert (names["IDE"]["family"], names["IDE"]["given"]) == ("山田", ["太郎"])
    assert (names["SYL"]["family"], names["SYL"]["given"]) == ("やまだ", ["たろう"])


@pytest.fixture(scope="module")
def ct_small(sample_client: TestClient) -> tuple[Header, JSON]:
    header = read_header(CT_SMALL, CT_KEYWORDS)
    assert header is not None
    return header, read_study(sample_client, header["StudyInstanceUID"])


def test_ct_small_study(ct_small: tuple[Header, JSON]) -> None:
    header, study = ct_small
    assert_valid(study)
    uid = header["StudyInstanceUID"]
    assert study["id"] == uid
    assert {
        "use": "official",
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{uid}",
    } in study["identifier"]
    assert [(m["system"], m["code"]) for m in study["modality"]] == [
        ("http://dicom.nema.org/resources/ontology/DCM", "CT")
    ]
    # CT_small.dcm carries Timezone Offset From UTC (0008,0201) = -0500, so the study
    # start is a full dateTime; a file without it would give the date alone.
    offset = header["TimezoneOffsetFromUTC"]
    assert offset == "-0500"
    assert study["started"] == fhir_datetime(header["StudyDate"], header["StudyTime"], offset)
    assert study["started"] == "2004-01-19T07:27:30-05:00"


def test_ct_small_counts_match_the_archive(ct_small: tuple[Header, JSON]) -> None:
    header, study = ct_small
    series = study["series"]
    instances = [i for s in series for i in s["instance"]]
    assert study["numberOfSeries"] == len(series)
    assert study["numberOfInstances"] == len(instances)
    assert all(s["numberOfInstances"] == len(s["instance"]) for s in series)
    # ... and with the files: every sample file of this study, by SOP Instance UID
    in_files: dict[str, set[str]] = defaultdict(set)
    for other in sample_headers():
        if other["StudyInstanceUID"] == header["StudyInstanceUID"]:
            in_files[other["SeriesInstanceUID"]].add(other["SOPInstanceUID"])
    assert {s["uid"]: {i["uid"] for i in s["instance"]} for s in series} == in_files


def test_ct_small_instance(ct_small: tuple[Header, JSON]) -> None:
    header, study = ct_small
    (series,) = [s for s in study["series"] if s["uid"] == header["SeriesInstanceUID"]]
    assert series["modality"]["code"] == "CT"
    assert series["number"] == int(header["SeriesNumber"])
    (instance,) = [i for i in series["instance"] if i["uid"] == header["SOPInstanceUID"]]
    # PS3.6 Annex A: 1.2.840.10008.5.1.4.1.1.2 is "CT Image Storage"
    assert header["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    assert instance["sopClass"] == {
        "system": "urn:ietf:rfc:3986",
        "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2",
        "display": "CT Image Storage",
    }
    assert instance["number"] == int(header["InstanceNumber"])


def test_ct_small_series_started_uses_the_files_timezone_offset(
    ct_small: tuple[Header, JSON],
) -> None:
    """PS3.3 C.12.1.1.8: Timezone Offset From UTC applies to every DA and TM attribute of
    the SOP Instance, Series Date/Time included, so series.started can be as precise as
    ImagingStudy.started is."""
    header, study = ct_small
    (series,) = [s for s in study["series"] if s["uid"] == header["SeriesInstanceUID"]]
    expected = fhir_datetime(
        header["SeriesDate"], header["SeriesTime"], header["TimezoneOffsetFromUTC"]
    )
    assert expected == "1997-04-30T11:27:49-05:00"
    assert series["started"] == expected


def _series_facts(keyword: str) -> dict[str, tuple[str, str]]:
    """SeriesInstanceUID -> (StudyInstanceUID, value of ``keyword``) for the series whose
    sample files all agree on a non-empty value."""
    values: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for header in sample_headers():
        if header["SeriesInstanceUID"]:
            values[header["SeriesInstanceUID"]].add((header["StudyInstanceUID"], header[keyword]))
    return {
        uid: next(iter(found))
        for uid, found in values.items()
        if len(found) == 1 and next(iter(found))[1]
    }


def _served_series(
    client: TestClient, studies_by_uid: dict[str, JSON], study_uid: str, series_uid: str
) -> JSON | None:
    study = studies_by_uid.get(study_uid)
    if study is None:
        return None  # every file of that study was rejected at ingest
    for series in study.get("series", []):
        if series["uid"] == series_uid:
            return dict(series)
    return None


def test_body_site_is_snomed_for_table_l1_terms(
    sample_client: TestClient, studies_by_uid: dict[str, JSON]
) -> None:
    facts = _series_facts("BodyPartExamined")
    checked: set[str] = set()
    for series_uid, (study_uid, term) in sorted(facts.items()):
        series = _served_series(sample_client, studies_by_uid, study_uid, series_uid)
        if series is None:
            continue
        site = series.get("bodySite")
        if term in TABLE_L1:
            code, meaning = TABLE_L1[term]
            assert site == {"system": SNOMED, "code": code, "display": meaning}, (term, site)
            checked.add(term)
        else:  # not a Defined Term of Table L-1 (e.g. "WHOLE BODY"): no invented code
            assert site is None or "code" not in site, (term, site)
    assert {"HEAD", "CHEST", "ABDOMEN", "CSPINE", "EXTREMITY"} <= checked, checked


def test_laterality_is_snomed(sample_client: TestClient, studies_by_uid: dict[str, JSON]) -> None:
    facts = _series_facts("Laterality")
    checked = 0
    for series_uid, (study_uid, value) in sorted(facts.items()):
        series = _served_series(sample_client, studies_by_uid, study_uid, series_uid)
        if series is None:
            continue
        code, meaning = LATERALITY[value]
        assert series.get("laterality") == {"system": SNOMED, "code": code, "display": meaning}
        checked += 1
    assert checked, "the samples hold a series with Laterality R (RG3)"
