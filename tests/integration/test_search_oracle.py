"""ImagingStudy search checked against an independent oracle, on SQLite and PostgreSQL.

For every query in the table below, the ids the server returns (all pages) must be the ids
``tests/support/oracle.py`` computes by evaluating HL7's R4 SearchParameter FHIRPath
expressions (fhirpathpy) over the very resources the server emits, with the R4 matching
rules. The table covers every R4 ImagingStudy parameter pacsfhir supports, every token
form, every date prefix around real values and boundaries, comma-OR, repeated-parameter
AND, ``:not``, ``:missing`` and the Patient chains.

The query values are drawn from the resources emitted by a throw-away SQLite archive of the
same sample files, built once when this module is collected, so that each test id is the
query itself. Queries on ``_lastUpdated`` depend on when the archive under test was
filled: they carry placeholders (``{lu}``, ``{lu+1ms}``...) that each test fills in from
that archive's resources.
"""

from __future__ import annotations

import functools
import re
import tempfile
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from pacsfhir.api.app import create_app
from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import ingest
from tests.conftest import make_settings, sample_paths
from tests.support import fhir_r4
from tests.support.oracle import (
    Oracle,
    Range,
    TokenQuery,
    date_matches,
    date_range,
    format_instant,
    implicit_systems,
    parse_reference,
    parse_token,
    reference_matches,
    string_matches,
    token_matches,
)

JSON = dict[str, Any]
BASE_URL = "http://pacsfhir.test"
FHIR_BASE = BASE_URL + "/fhir"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
RFC3986 = "urn:ietf:rfc:3986"
STATUS = "http://hl7.org/fhir/imagingstudy-status"
GENDER = "http://hl7.org/fhir/administrative-gender"
OTHER_SYSTEM = "urn:example:other"
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
NOTHING = "0.0.0.0"  # a token no resource carries

# ----------------------------------------------------------------------------- talking


def _path(url: str) -> str:
    assert url.startswith(BASE_URL + "/"), url
    return url[len(BASE_URL) :]


def _get(client: TestClient, path: str) -> JSON:
    response = client.get(path)
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
    body: JSON = response.json()
    return body


def search_all(client: TestClient, query: str) -> list[JSON]:
    """Every match of ``GET /fhir/ImagingStudy?query``, following ``next`` links; fails
    if the server ignored a parameter (an OperationOutcome entry)."""
    path: str | None = f"/fhir/ImagingStudy?{query}"
    found: list[JSON] = []
    pages = 0
    while path is not None:
        bundle = _get(client, path)
        pages += 1
        assert pages < 100, "too many pages"
        for entry in bundle.get("entry", []):
            mode = entry.get("search", {}).get("mode")
            assert mode != "outcome", f"{query}: server ignored something: {entry['resource']}"
            if mode == "match":
                found.append(entry["resource"])
        nexts = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
        path = _path(nexts[0]) if nexts else None
    return found


def emitted(client: TestClient) -> tuple[list[JSON], dict[str, JSON]]:
    """All ImagingStudy resources, and the Patients they reference (read one by one)."""
    studies = search_all(client, "_count=1000")
    patients: dict[str, JSON] = {}
    for study in studies:
        reference = study["subject"]["reference"]
        assert reference.startswith("Patient/"), reference
        patient_id = reference.split("/", 1)[1]
        if patient_id not in patients:
            patients[patient_id] = _get(client, f"/fhir/Patient/{patient_id}")
    return studies, patients


@functools.cache
def collection_data() -> tuple[list[JSON], dict[str, JSON]]:
    """The resources of a throw-away SQLite archive of the sample files (query values)."""
    with tempfile.TemporaryDirectory(prefix="pacsfhir-oracle-") as tmp:
        settings = make_settings(Path(tmp), f"sqlite:///{Path(tmp) / 'index.db'}")
        archive = Archive.open(settings)
        try:
            ingest(sample_paths(), archive.engine, archive.blobs, workers=1)
            with TestClient(create_app(settings, archive)) as client:
                return emitted(client)
        finally:
            archive.close()


# ----------------------------------------------------------------------------- the table


def _day(text: str, days: int) -> str:
    return (date.fromisoformat(text[:10]) + timedelta(days=days)).isoformat()


def _with_offset(micros: int, hours: int) -> str:
    """The instant ``micros`` written with a ``±hh:00`` offset, to the second."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        microseconds=micros + hours * 3_600_000_000
    )
    sign = "+" if hours >= 0 else "-"
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f"{sign}{abs(hours):02d}:00"


def _inside_in_another_zone(day: str) -> str:
    """An instant two hours into the UTC ``day``, written in +04:00."""
    span = date_range(day)
    assert span is not None, day
    return _with_offset(span.low + 7_200_000_000, 4)


def _date_values(value: str) -> list[str]:
    """Search values around one real ``started`` value: itself and the instants either side;
    for a dateTime with an offset also its day, the next day (where it falls in another
    zone) and the same instant written in +09:00; for a date also its month, first second,
    an instant inside it written in -02:00 and the next day."""
    span = date_range(value)
    assert span is not None, value
    if "T" not in value:
        return [
            value,
            value[:7],
            f"{value}T00:00:00Z",
            _with_offset(span.low + 3_600_000_000, -2),
            _day(value, 1),
        ]
    precision = "ms" if "." in value else "s"
    step = 1000 if precision == "ms" else 1_000_000
    values = [
        value,
        format_instant(span.low - step, precision),
        format_instant(span.high + 1, precision),
    ]
    if not value.endswith("Z") and precision == "s":
        values += [value[:10], _day(value, 1), _with_offset(span.low, 9)]
    return values


def _shape(value: str) -> str:
    if "T" not in value:
        return "date"
    if "." in value:
        return "fraction"
    return "utc" if value.endswith("Z") else "offset"


def _representatives(values: list[str]) -> list[str]:
    """The most frequent value of each shape: date, dateTime in UTC, with an offset, with
    a fraction of a second."""
    shapes: dict[str, str] = {}
    for value, _ in sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0])):
        shapes.setdefault(_shape(value), value)
    return [shapes[s] for s in sorted(shapes)]


def build_queries(studies: list[JSON], patients: dict[str, JSON]) -> list[str]:
    """The query table, as decoded ``name=value&...`` strings, drawn from the resources."""
    studies = sorted(studies, key=lambda s: s["id"])
    q: list[str] = []
    ids = [s["id"] for s in studies]
    series = [x for s in studies for x in s.get("series", [])]
    instances = [i for x in series for i in x.get("instance", [])]

    # _id
    q += [
        f"_id={ids[0]}",
        f"_id={ids[0]},{ids[-1]}",
        f"_id=|{ids[1]}",
        f"_id={OTHER_SYSTEM}|{ids[1]}",
        f"_id={NOTHING}",
        f"_id:not={ids[0]},{ids[1]}",
        f"_id={ids[0]},{ids[1]}&_id={ids[1]},{ids[2]}",
        "_id:missing=true",
        "_id:missing=false",
    ]

    # identifier: the Study Instance UID, accession numbers and Study IDs
    with_accession = [
        s for s in studies if any(i.get("use") == "usual" for i in s.get("identifier", []))
    ]
    for s in [studies[0], studies[len(studies) // 2], *with_accession[:2]]:
        q += [f"identifier=urn:dicom:uid|urn:oid:{s['id']}", f"identifier=urn:oid:{s['id']}"]
    q += [
        f"identifier={studies[0]['id']}",  # the bare UID is not the identifier's value
        f"identifier=|urn:oid:{studies[0]['id']}",
        "identifier=urn:dicom:uid|",
        f"identifier={OTHER_SYSTEM}|",
        "identifier=http://terminology.hl7.org/CodeSystem/v2-0203|ACSN",  # a type, not a value
    ]
    other_values = sorted(
        {
            (i.get("system", ""), i["value"])
            for s in studies
            for i in s.get("identifier", [])
            if i.get("system") != "urn:dicom:uid"
        }
    )
    q += [f"identifier={value}" for _, value in other_values[::2]]
    q += [f"identifier={value}" for _, value in other_values[1::2] if " " in value]
    for system, value in other_values[:6]:
        q += [f"identifier={system}|{value}", f"identifier={OTHER_SYSTEM}|{value}"]
    if with_accession:
        accession = next(i["value"] for i in with_accession[0]["identifier"] if i["use"] == "usual")
        q += [
            f"identifier:not={accession}",
            f"identifier={accession},urn:oid:{ids[0]}",
            f"identifier={accession}&identifier=urn:oid:{with_accession[0]['id']}",
            f"identifier={accession}&identifier=urn:oid:{ids[0]}",
        ]
    q += [
        f"identifier:not=urn:dicom:uid|urn:oid:{ids[0]}",
        "identifier:not=|1",
        "identifier:missing=true",
        "identifier:missing=false",
        r"identifier=exam\,Number",
    ]

    # status
    q += [
        "status=available",
        f"status={STATUS}|available",
        f"status={STATUS}|",
        "status=|available",
        f"status={OTHER_SYSTEM}|available",
        "status=registered",
        "status=registered,available",
        "status:not=available",
        "status:not=registered",
        "status:missing=true",
        "status:missing=false",
    ]

    # modality (ImagingStudy.series.modality)
    modalities = sorted({x["modality"]["code"] for x in series})
    for code in modalities:
        q += [f"modality={code}", f"modality={DCM}|{code}"]
    first, second = modalities[0], modalities[-1]
    q += [
        f"modality=|{first}",
        f"modality={OTHER_SYSTEM}|{first}",
        f"modality={first.lower()}",
        f"modality={DCM}|",
        f"modality={OTHER_SYSTEM}|",
        f"modality={first},{second}",
        f"modality={first},{DCM}|{second}",
        "modality=CT&modality=MR",
        "modality=OT&modality=SR",
        "modality:not=OT",
        "modality:not=CT,MR,OT",
        f"modality:not={DCM}|US",
        "modality:missing=true",
        "modality:missing=false",
    ]

    # series and instance UIDs (id elements: no system)
    many = max(studies, key=lambda s: len(s.get("series", [])))
    for x in [series[0], many["series"][-1]]:
        q += [f"series={x['uid']}", f"series=|{x['uid']}", f"series={OTHER_SYSTEM}|{x['uid']}"]
    q += [
        f"series={series[0]['uid']},{series[-1]['uid']}",
        f"series={series[0]['uid']}&series={many['series'][0]['uid']}",
        f"series={ids[0]}",  # a study UID is no series UID
        f"series:not={series[0]['uid']}",
        "series:missing=false",
        "series:missing=true",
    ]
    for i in [instances[0], instances[len(instances) // 2], instances[-1]]:
        q += [f"instance={i['uid']}", f"instance=|{i['uid']}"]
    q += [
        f"instance={OTHER_SYSTEM}|{instances[0]['uid']}",
        f"instance={instances[0]['uid']},{instances[-1]['uid']}",
        f"instance:not={instances[0]['uid']}",
        "instance:missing=true",
        "instance:missing=false",
    ]

    # dicom-class (Coding urn:ietf:rfc:3986|urn:oid:...)
    classes = sorted({i["sopClass"]["code"] for i in instances})
    for code in classes[::2]:
        q.append(f"dicom-class={code}")
    for code in classes[:3]:
        q += [
            f"dicom-class={RFC3986}|{code}",
            f"dicom-class=|{code}",
            f"dicom-class={code.removeprefix('urn:oid:')}",
        ]
    q += [
        f"dicom-class={RFC3986}|",
        f"dicom-class={classes[0]},{classes[-1]}",
        f"dicom-class:not={classes[0]}",
        "dicom-class:missing=true",
        "dicom-class:missing=false",
    ]

    # bodysite (Coding, SNOMED CT; an unknown Body Part Examined has a display only)
    sites = sorted({x["bodySite"].get("code", "") for x in series if "bodySite" in x} - {""})
    for code in sites:
        q += [f"bodysite={code}", f"bodysite={SNOMED}|{code}"]
    displays = sorted({x["bodySite"]["display"] for x in series if "bodySite" in x})
    q += [f"bodysite={d}" for d in displays[:3]]
    q += [
        f"bodysite={SNOMED}|",
        f"bodysite=|{sites[0]}",
        f"bodysite={sites[0]},{sites[-1]}",
        f"bodysite:not={SNOMED}|{sites[0]}",
        f"bodysite:not={SNOMED}|",
        "bodysite:missing=true",
        "bodysite:missing=false",
    ]

    # reason (CodeableConcept)
    q += [
        "reason=R52",
        f"reason={SNOMED}|",
        "reason:not=R52",
        "reason:missing=true",
        "reason:missing=false",
    ]

    # patient and subject
    by_patient = Counter(s["subject"]["reference"].split("/", 1)[1] for s in studies)
    busiest = max(by_patient, key=lambda p: (by_patient[p], p))
    quiet = sorted(p for p in by_patient if by_patient[p] == 1)
    p1, p2 = quiet[0], quiet[-1]
    for name in ("patient", "subject"):
        q += [
            f"{name}={busiest}",
            f"{name}=Patient/{busiest}",
            f"{name}={FHIR_BASE}/Patient/{busiest}",
            f"{name}=http://elsewhere.example/fhir/Patient/{busiest}",
            f"{name}:Patient={p1}",
            f"{name}={p1},Patient/{p2}",
            f"{name}={p1}&{name}={p2}",
            f"{name}=Patient/{NOTHING}",
            f"{name}=Patient/{p1}/_history/1",
            f"{name}:missing=true",
            f"{name}:missing=false",
        ]
    q += [f"subject=Group/{p1}", f"subject=Device/{p1}", f"subject:Group={p1}"]

    # endpoint and the references made from DICOM names (display only)
    q += [
        "endpoint=dicomweb",
        "endpoint=Endpoint/dicomweb",
        f"endpoint={FHIR_BASE}/Endpoint/dicomweb",
        "endpoint=Endpoint/elsewhere",
        "endpoint=http://elsewhere.example/fhir/Endpoint/dicomweb",
        "endpoint:missing=true",
        "endpoint:missing=false",
        "encounter=Encounter/e1",
        "encounter:missing=true",
        "encounter:missing=false",
        "basedon=ServiceRequest/r1",
        "basedon:missing=true",
        "basedon:missing=false",
    ]
    for name, target in (
        ("referrer", "Practitioner"),
        ("interpreter", "Practitioner"),
        ("performer", "Practitioner"),
    ):
        q += [
            f"{name}={target}/p1",
            f"{name}=p1",
            f"{name}:missing=true",
            f"{name}:missing=false",
        ]

    # started: every prefix around each shape of value present
    started = [s["started"] for s in studies if "started" in s]
    for value in _representatives(started):
        for search in _date_values(value):
            q += [f"started={p}{search}" for p in PREFIXES]
        q.append(f"started=ap{value}")
    year = next(v for v in started if "T" in v and not v.endswith("Z"))[:4]
    q += [f"started={p}{year}" for p in PREFIXES]
    q += [
        "started=1900",
        "started=gt1900",
        "started=2100",
        "started=ge2003&started=lt2005",
        "started=lt2000,gt2015",
        "started=ge2003-05-05&started=le2003-05-05",
        "started=ap2004",
        "started:missing=true",
        "started:missing=false",
    ]

    # _lastUpdated: placeholders filled in from the archive under test
    for value in ("{lu}", "{lu-1ms}", "{lu_max+1ms}", "{lu_s}", "{lu_+09}", "{lu_day}"):
        q += [f"_lastUpdated={p}{value}" for p in PREFIXES]
    q += [
        "_lastUpdated={lu_year}",
        "_lastUpdated=gt2000",
        "_lastUpdated=lt2000",
        "_lastUpdated=ap{lu_day}",
        "_lastUpdated:missing=false",
    ]

    # chains to the Patient
    with_identifier = sorted(
        (p["identifier"][0]["value"], p["id"]) for p in patients.values() if "identifier" in p
    )
    for value, _ in with_identifier[:: max(1, len(with_identifier) // 8)]:
        q += [f"patient.identifier={value}", f"patient.identifier=|{value}"]
    v1, v2 = with_identifier[0][0], with_identifier[-1][0]
    q += [
        f"patient.identifier={OTHER_SYSTEM}|{v1}",
        f"patient.identifier={v1},{v2}",
        f"patient.identifier:not={v1}",
        "patient.identifier:missing=true",
        "patient.identifier:missing=false",
        f"subject:Patient.identifier={v2}",
        f"subject:Patient.identifier=|{v2}",
        f"subject:Patient.identifier={v1}&subject:Patient.identifier={v2}",
        f"patient._id={busiest}",
        f"patient._id={p1},{p2}",
        f"patient._id=|{p1}",
        f"patient._id:not={busiest}",
        f"subject:Patient._id={p2}",
        "patient._id:missing=false",
    ]
    names = [
        "compressed",
        "CompressedSamples",
        "COMP",
        "jerome",
        "Jérôme",
        "JÉRÔME",
        "jér",
        "rudiger",
        "äneas",
        "aneas",
        "Διον",
        "διονυσιος",
        "山田",
        "やまだ",
        "ﾀﾛｳ",
        "タロウ",
        "mid",
        "pre",
        "First",
        "first name",
        "name",
        "Last Name",
        "Люк",
        "xiaodong",
        "Doe",
        "Anonym",
        "MCA",
        "Stroke",
        "zzz",
        f"compressed,{NOTHING}",
    ]
    q += [f"patient.name={n}" for n in names]
    q += [
        "patient.name:exact=Jérôme",
        "patient.name:exact=jérôme",
        "patient.name:exact=Jerome",
        "patient.name:exact=G Lestrade",
        "patient.name:exact=Last Name",
        "patient.name:exact=Last",
        "patient.name:contains=ompressed",
        "patient.name:contains=ERO",
        "patient.name:contains=stroke",
        "patient.name:contains=é",
        "patient.name:contains=name",
        "patient.name:missing=true",
        "patient.name:missing=false",
        "patient.name=compressed&patient.name=mr",
        "subject:Patient.name=doe",
        "subject:Patient.name:exact=Doe",
    ]
    q += [
        f"patient.family={n}"
        for n in ("compressed", "Last", "Last Name", "Name", "doe", "aneas", "やまだ", "First")
    ]
    q += [
        "patient.family:exact=Äneas",
        "patient.family:exact=äneas",
        "patient.family:exact=Aneas",
        "patient.family:exact=compressedsamples",
        "patient.family:contains=S_0",
        "patient.family:contains=%",
        "patient.family=pancreas_",
        "patient.family=%",
        "patient.family:contains=ampl",
        "patient.family:missing=true",
        "patient.family:missing=false",
        "subject:Patient.family=CompressedSamples",
    ]
    q += [f"patient.given={n}" for n in ("First", "mid", "MCA", "Stroke", "s", "tarou", "Pre")]
    q += [
        "patient.given:contains=stroke",
        "patient.given:exact=S R",
        "patient.given:exact=s r",
        "patient.given:missing=true",
        "patient.given:missing=false",
        "subject:Patient.given=jan",
    ]
    births = sorted({p["birthDate"] for p in patients.values() if "birthDate" in p})
    for value in [births[0], births[len(births) // 2]]:
        for search in (value, value[:4], _day(value, 1)):
            q += [f"patient.birthdate={p}{search}" for p in PREFIXES]
    q += [
        f"patient.birthdate=ap{births[len(births) // 2]}",
        f"patient.birthdate={_inside_in_another_zone(births[-1])}",
        "patient.birthdate=ge1900&patient.birthdate=lt1960",
        f"patient.birthdate={births[0]},{births[-1]}",
        "patient.birthdate:missing=true",
        "patient.birthdate:missing=false",
        f"subject:Patient.birthdate=le{births[len(births) // 2]}",
    ]
    q += [
        "patient.gender=male",
        "patient.gender=female",
        "patient.gender=other",
        "patient.gender=unknown",
        "patient.gender=male,female",
        f"patient.gender={GENDER}|female",
        f"patient.gender={GENDER}|",
        "patient.gender=|male",
        "patient.gender=M",
        "patient.gender:not=male",
        "patient.gender:missing=true",
        "patient.gender:missing=false",
        "subject:Patient.gender=other",
    ]

    # several parameters together
    q += [
        "modality=CT&started=ge2004",
        "modality=MR&patient.family=CompressedSamples",
        "identifier=|1&modality=US",
        "patient.gender=male&started=lt2005",
        "status=available&modality:not=OT",
        f"bodysite={SNOMED}|43799004&modality=CR",
        f"patient={busiest}&started:missing=false",
        "endpoint=dicomweb&referrer:missing=false&started=ge2000",
        "patient.name=compressed&patient.gender=female&modality:not=MR",
    ]
    return list(dict.fromkeys(q))


QUERIES = build_queries(*collection_data())
SORTS = [
    "_sort=started",
    "_sort=-started",
    "_sort=_lastUpdated",
    "_sort=-_lastUpdated",
    "_sort=started&_count=7",
    "_sort=-started&_count=5",
    "_sort=-started&modality=CT,MR",
    "_sort=started&patient.family=CompressedSamples&_count=2",
    "_sort=_lastUpdated,-started&_count=9",
]

# ----------------------------------------------------------------------------- the checks


def _range(text: str) -> Range:
    found = date_range(text)
    assert found is not None, text
    return found


def test_oracle_follows_the_r4_examples() -> None:
    """The oracle's rules on the examples of https://hl7.org/fhir/R4/search.html."""
    # 3.1.1.5.6 date: the table of examples (a Period "from 21-Jan 2013 onwards")
    onwards = Range(_range("2013-01-21").low, 2**62)
    assert date_matches("eq", _range("2013-01-14"), _range("2013-01-14T00:00"))
    assert date_matches("eq", _range("2013-01-14"), _range("2013-01-14T10:00"))
    assert not date_matches("eq", _range("2013-01-14"), _range("2013-01-15T00:00"))
    assert date_matches("ne", _range("2013-01-14"), _range("2013-01-15T00:00"))
    assert not date_matches("ne", _range("2013-01-14"), _range("2013-01-14T10:00"))
    assert date_matches("lt", _range("2013-01-14T10:00"), _range("2013-01-14"))
    assert date_matches("gt", _range("2013-01-14T10:00"), _range("2013-01-14"))
    assert date_matches("ge", _range("2013-03-14"), onwards)
    assert date_matches("le", _range("2013-03-14"), onwards)
    # implicit ranges, zones and precision
    assert _range("2004-08-26T18:50:59-04:00") == _range("2004-08-26T22:50:59Z")
    assert _range("2000-02") == Range(_range("2000-02-01").low, _range("2000-02-29").high)
    assert _range("2000") == Range(_range("2000-01-01").low, _range("2000-12-31").high)
    assert _range("2006-12-19T16:11:54.812Z").high - _range("2006-12-19T16:11:54.812Z").low == 999
    assert date_range("2013-02-30") is None
    # 3.1.1.5.9 token forms
    assert parse_token("a|b") == TokenQuery("a", "b")
    assert parse_token("|b") == TokenQuery("", "b")
    assert parse_token("a|") == TokenQuery("a", None)
    assert parse_token(r"a\|b") == TokenQuery(None, "a|b")
    assert token_matches(TokenQuery("", "x"), [(None, "x")])
    assert not token_matches(TokenQuery("", "x"), [("s", "x")])
    assert token_matches(TokenQuery("s", None), [("s", None)])
    assert not token_matches(TokenQuery("s", None), [(None, "x")])
    # 3.1.1.5.10 string: starts-with, case and accent insensitive; :exact; :contains
    assert string_matches("", "jero", "Jérôme")
    assert not string_matches("", "rome", "Jérôme")
    assert string_matches("contains", "ROM", "Jérôme")
    assert string_matches("exact", "Jérôme", "Jérôme")
    assert not string_matches("exact", "jérôme", "Jérôme")
    # 3.1.1.5.11 reference: id, Type/id and the server's own absolute URL are the same
    target = {"reference": "Patient/p1"}
    for raw in ("p1", "Patient/p1", f"{FHIR_BASE}/Patient/p1"):
        assert reference_matches(parse_reference(raw, "", FHIR_BASE), target, FHIR_BASE)
    assert reference_matches(parse_reference("p1", "Patient", FHIR_BASE), target, FHIR_BASE)
    assert not reference_matches(parse_reference("p1", "Group", FHIR_BASE), target, FHIR_BASE)
    elsewhere = parse_reference("http://elsewhere.example/fhir/Patient/p1", "", FHIR_BASE)
    assert not reference_matches(elsewhere, target, FHIR_BASE)
    assert not reference_matches(parse_reference("p1", "", FHIR_BASE), {"display": "p1"}, FHIR_BASE)


@pytest.fixture(scope="module")
def oracle(sample_client: TestClient) -> Oracle:
    """The oracle over what the archive under test emits."""
    fhir_r4.require_definitions()
    studies, patients = emitted(sample_client)
    params = {t: fhir_r4.search_parameters(t) for t in ("ImagingStudy", "Patient")}
    systems = {t: implicit_systems(fhir_r4.DEFINITIONS_DIR, p) for t, p in params.items()}
    assert systems["ImagingStudy"].get("status") == STATUS
    assert systems["Patient"].get("gender") == GENDER
    return Oracle(studies, patients, params, systems, FHIR_BASE, time.time_ns() // 1000)


def placeholders(oracle: Oracle) -> dict[str, str]:
    ranges = [oracle.sort_value(i, "_lastUpdated") for i in oracle.studies]
    lows = [r.low for r in ranges if r is not None]
    low, high = min(lows), max(lows)
    return {
        "lu": format_instant(low),
        "lu-1ms": format_instant(low - 1000),
        "lu_max+1ms": format_instant(high + 1000),
        "lu_s": format_instant(low, "s"),
        "lu_+09": _with_offset(low, 9),
        "lu_day": format_instant(low)[:10],
        "lu_year": format_instant(low)[:4],
    }


def decode(query: str) -> list[tuple[str, str]]:
    pairs = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        pairs.append((name, value))
    return pairs


def fill(query: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], query)


@pytest.mark.parametrize("query", QUERIES, ids=QUERIES)
def test_search_agrees_with_oracle(sample_client: TestClient, oracle: Oracle, query: str) -> None:
    concrete = fill(query, placeholders(oracle))
    pairs = decode(concrete)
    expected = oracle.search(pairs)
    got = {r["id"] for r in search_all(sample_client, urlencode([*pairs, ("_count", "1000")]))}
    missing = sorted(expected.must - got)
    extra = sorted(got - expected.may)
    assert (missing, extra) == ([], []), (
        f"{concrete}\n  expected {len(expected.must)}, got {len(got)}"
        f"\n  missing (oracle has, server not): {missing}"
        f"\n  extra (server has, oracle not): {extra}"
    )


def test_query_table_discriminates(oracle: Oracle) -> None:
    """Most queries select some but not all studies, and every parameter is used."""
    values = placeholders(oracle)
    sizes = [len(oracle.search(decode(fill(q, values))).must) for q in QUERIES]
    everything = len(oracle.studies)
    partial = sum(1 for n in sizes if 0 < n < everything)
    assert len(QUERIES) >= 300
    assert partial >= len(QUERIES) // 2, f"only {partial} of {len(QUERIES)} queries discriminate"
    used = {re.split(r"[:.=]", p)[0] for q in QUERIES for p in q.split("&")}
    supported = {
        "_id",
        "_lastUpdated",
        "identifier",
        "status",
        "started",
        "modality",
        "series",
        "instance",
        "dicom-class",
        "bodysite",
        "reason",
        "patient",
        "subject",
        "endpoint",
        "encounter",
        "basedon",
        "referrer",
        "interpreter",
        "performer",
    }
    assert supported <= used, supported - used


def _sort_key(oracle: Oracle, study_id: str, code: str, descending: bool) -> tuple[int, int]:
    value: Range | None = oracle.sort_value(study_id, code)
    if value is None:
        return (1, 0)  # no value: last, whichever the direction
    return (0, -value.low if descending else value.low)


@pytest.mark.parametrize("query", SORTS, ids=SORTS)
def test_sort_agrees_with_oracle(sample_client: TestClient, oracle: Oracle, query: str) -> None:
    pairs = decode(query)
    if not any(name == "_count" for name, _ in pairs):
        pairs.append(("_count", "1000"))
    order = [r["id"] for r in search_all(sample_client, urlencode(pairs))]
    assert len(order) == len(set(order)), "a study came twice across pages"
    assert set(order) == oracle.search(pairs).must
    keys = dict(pairs)["_sort"].split(",")
    sequence = [
        tuple(
            part
            for key in keys
            for part in _sort_key(oracle, i, key.lstrip("-"), key.startswith("-"))
        )
        for i in order
    ]
    out_of_order = [
        (order[n], order[n + 1]) for n in range(len(order) - 1) if sequence[n] > sequence[n + 1]
    ]
    assert not out_of_order, f"{query}: out of order: {out_of_order[:5]}"
