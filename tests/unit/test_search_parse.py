"""FHIR search parameters -> SearchRequest: a table of query -> parsed meaning."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from pacsfhir.errors import InvalidSearchParameter, TooCostly, UnknownSearchParameter
from pacsfhir.search.model import Criterion, Cursor, ParamType, Reference, SortKey, Token
from pacsfhir.search.parse import decode_cursor, encode_cursor, parse_search, split_values

BASE = "http://pacsfhir.test/fhir"
T = ParamType


def parse(query: str, strict: bool = False):  # type: ignore[no-untyped-def]
    return parse_search(parse_qsl(query, keep_blank_values=True), strict=strict, fhir_base=BASE)


CRITERIA = [
    ("modality=CT", Criterion("modality", T.TOKEN, (Token(None, "CT"),))),
    (
        "modality=http://dicom.nema.org/resources/ontology/DCM|CT,MR",
        Criterion(
            "modality",
            T.TOKEN,
            (Token("http://dicom.nema.org/resources/ontology/DCM", "CT"), Token(None, "MR")),
        ),
    ),
    ("identifier=|ACC1", Criterion("identifier", T.TOKEN, (Token("", "ACC1"),))),
    (
        "identifier=urn:dicom:uid|",
        Criterion("identifier", T.TOKEN, (Token("urn:dicom:uid", None),)),
    ),
    ("identifier=a\\|b", Criterion("identifier", T.TOKEN, (Token(None, "a|b"),))),
    ("modality:not=CT", Criterion("modality", T.TOKEN, (Token(None, "CT"),), modifier="not")),
    ("started:missing=true", Criterion("started", T.DATE, missing=True)),
    ("patient=123", Criterion("patient", T.REFERENCE, (Reference(None, "123"),))),
    ("patient=Patient/123", Criterion("patient", T.REFERENCE, (Reference("Patient", "123"),))),
    (
        f"patient={BASE}/Patient/123",
        Criterion("patient", T.REFERENCE, (Reference("Patient", "123"),)),
    ),
    (
        "patient=https://elsewhere.example/fhir/Patient/1",
        Criterion(
            "patient",
            T.REFERENCE,
            (Reference(None, "https://elsewhere.example/fhir/Patient/1", external=True),),
        ),
    ),
    ("subject:Patient=123", Criterion("subject", T.REFERENCE, (Reference("Patient", "123"),))),
    (
        "patient=Patient/123/_history/4",
        Criterion("patient", T.REFERENCE, (Reference("Patient", "123"),)),
    ),
    (
        "patient.identifier=sys|42",
        Criterion(
            "patient", T.REFERENCE, chain=Criterion("identifier", T.TOKEN, (Token("sys", "42"),))
        ),
    ),
    (
        "subject:Patient.name:exact=Buc",
        Criterion(
            "subject", T.REFERENCE, chain=Criterion("name", T.STRING, ("Buc",), modifier="exact")
        ),
    ),
]


@pytest.mark.parametrize(("query", "expected"), CRITERIA, ids=[q for q, _ in CRITERIA])
def test_criteria(query: str, expected: Criterion) -> None:
    request = parse(query)
    assert request.criteria == (expected,)
    assert request.ignored == ()


def test_repeated_parameters_are_anded_and_kept_in_the_self_link() -> None:
    request = parse("started=ge2020&started=lt2021&modality=CT")
    assert [c.param for c in request.criteria] == ["started", "started", "modality"]
    assert request.used == (("started", "ge2020"), ("started", "lt2021"), ("modality", "CT"))


@pytest.mark.parametrize(
    ("prefix_query", "prefix"),
    [(f"started={p}2020-01-01", p) for p in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")]
    + [("started=2020-01-01", "eq")],
)
def test_date_prefixes(prefix_query: str, prefix: str) -> None:
    (criterion,) = parse(prefix_query).criteria
    (value,) = criterion.values
    assert value.prefix == prefix  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "query",
    [
        "started=notadate",
        "started=ge2020-13",
        "_lastUpdated=yesterday",
        "patient=Patient/",
        "patient=Observation/1",
        "subject=Patient/a b",
        "started:missing=maybe",
        "_count=-1",
        "_count=ten",
        "_count=\u00b2",  # str.isdigit() says yes
        "_count=\u0663",  # int() reads 3
        "_count=+5",
        "started=2004-01-19T07:27:30+15:00",  # no such offset
        "started=0000-01-01",
        "_total=some",
        "_summary=yes",
        "_cursor=bm90IGEgY3Vyc29y",
    ],
)
def test_malformed_values_are_400_even_when_lenient(query: str) -> None:
    with pytest.raises(InvalidSearchParameter):
        parse(query)


@pytest.mark.parametrize(
    "query",
    [
        "foo=bar",
        "modality:text=CT",
        "started:exact=2020",
        "_include=ImagingStudy:basedon",
        "_sort=description",
        "series.uid=1",
        "patient.organization=1",
        "patient:Group.name=x",
    ],
)
def test_unknown_or_unsupported_is_ignored_when_lenient_and_400_when_strict(query: str) -> None:
    request = parse(query)
    assert request.criteria == ()
    assert request.ignored
    assert query.split("=")[0] not in [k for k, _ in request.used]
    with pytest.raises(UnknownSearchParameter):
        parse(query, strict=True)


def test_control_parameters() -> None:
    request = parse(
        "_count=5&_sort=-started,_lastUpdated&_total=none&_summary=true"
        "&_elements=identifier,modality&_include=ImagingStudy:subject&_include=ImagingStudy:endpoint"
    )
    assert request.count == 5
    assert request.sort == (SortKey("started", True), SortKey("_lastUpdated", False))
    assert request.total == "none"
    assert request.summary == "true"
    assert request.elements == ("identifier", "modality")
    assert request.includes == ("subject", "endpoint")


def test_count_is_capped() -> None:
    assert parse("_count=100000").count == 1000


def test_empty_value_is_no_criterion() -> None:
    assert parse("modality=").criteria == ()


def test_hostile_sizes_are_refused() -> None:
    with pytest.raises(TooCostly):
        parse("modality=" + ",".join(["CT"] * 101))
    with pytest.raises(TooCostly):
        parse("&".join(f"modality=CT{i}" for i in range(65)))
    with pytest.raises(TooCostly):
        parse("identifier=" + "x" * 3000)


def test_split_values_honours_escapes() -> None:
    assert split_values("a,b\\,c,d\\\\") == ["a", "b,c", "d\\"]


def test_cursor_round_trip() -> None:
    cursor = Cursor((123, None, "1.2.3"), 42)
    assert decode_cursor(encode_cursor(cursor)) == cursor


def test_huge_counts_read_as_the_maximum() -> None:
    assert parse("_count=99999999999999999999").count == 1000
    assert parse("_count=" + "9" * 2000).count == 1000


_SEARCH_BASE64 = __import__("base64").urlsafe_b64encode


def _forged(data: bytes) -> str:
    return _SEARCH_BASE64(data).decode().rstrip("=")


@pytest.mark.parametrize(
    "raw",
    [
        encode_cursor(Cursor((), 10**20)),
        encode_cursor(Cursor((), -1)),
        encode_cursor(Cursor((2**63,), 1)),
        encode_cursor(Cursor(("x" * 65,), 1)),
        encode_cursor(Cursor((1, 2, 3, 4), 1)),
        _forged(b"[" * 1500),
        _forged(b"[[],true]"),
        _forged(b"[[false],1]"),
        _forged(b"[[1.5],1]"),
        _forged(b'{"a":1}'),
        _forged(b"[[],1,2]"),
        "\u65e5",
    ],
)
def test_forged_cursors_are_400(raw: str) -> None:
    with pytest.raises(InvalidSearchParameter, match="not a cursor this server issued"):
        decode_cursor(raw)


def test_cursors_at_the_edge_of_64_bits_are_ours() -> None:
    cursor = Cursor((2**63 - 1, -(2**63), "1" * 64), 2**63 - 1)
    assert decode_cursor(encode_cursor(cursor)) == cursor


def test_a_search_takes_at_most_200_values() -> None:
    values = ",".join(f"v{i}" for i in range(100))
    assert len(parse(f"_id={values}&identifier={values}").criteria) == 2
    with pytest.raises(TooCostly, match="200 values"):
        parse(f"_id={values}&identifier={values}&modality=CT")
    with pytest.raises(TooCostly, match="200 values"):
        parse(f"_id={values}&patient.identifier={values}&modality=CT")


def test_repeated_sort_keys_count_once() -> None:
    assert parse("_sort=started,-started,_id,started").sort == (
        SortKey("started"),
        SortKey("_id"),
    )
