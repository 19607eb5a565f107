"""QIDO-RS query parameters -> QidoQuery (pure): a table of query string -> plan, the
400s, and the DICOM JSON of index values."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from pacsfhir.errors import BadRequest
from pacsfhir.mapping.dicom_json import default_tags, element, result_object
from pacsfhir.search.qido import (
    MAX_RESULTS,
    QidoQuery,
    RangeMatch,
    ValueMatch,
    parse_match,
    parse_query,
    private_creator,
)
from pacsfhir.vocabulary.levels import Level, attribute_level, tag_of

ST, SE, IN = Level.STUDY, Level.SERIES, Level.INSTANCE


def parse(query: str, level: Level = ST, study: str | None = None) -> QidoQuery:
    return parse_query(level, parse_qsl(query, keep_blank_values=True), study)


def tags(*keywords: str) -> frozenset[int]:
    return frozenset(tag_of(k) for k in keywords)


MATCHES = [
    ("PatientID=12345", ValueMatch("PatientID", "LO", ("12345",))),
    ("00100020=12345", ValueMatch("PatientID", "LO", ("12345",))),
    ("PatientName=doe*", ValueMatch("PatientName", "PN", ("doe*",))),
    ("PatientName=D?e^J*", ValueMatch("PatientName", "PN", ("D?e^J*",))),
    ("AccessionNumber=A1\\A2", ValueMatch("AccessionNumber", "SH", ("A1", "A2"))),
    ("StudyInstanceUID=1.2.3,1.2.4", ValueMatch("StudyInstanceUID", "UI", ("1.2.3", "1.2.4"))),
    ("StudyInstanceUID=1.2.3\\1.2.4", ValueMatch("StudyInstanceUID", "UI", ("1.2.3", "1.2.4"))),
    ("0020000D=1.2.3", ValueMatch("StudyInstanceUID", "UI", ("1.2.3",))),
    ("ModalitiesInStudy=CT,MR", ValueMatch("ModalitiesInStudy", "CS", ("CT", "MR"))),
    ("ModalitiesInStudy=CT\\MR", ValueMatch("ModalitiesInStudy", "CS", ("CT", "MR"))),
    ("StudyDate=20040101", ValueMatch("StudyDate", "DA", ("20040101",))),
    ("StudyDate=20040101-20041231", RangeMatch("StudyDate", "DA", "20040101", "20041231")),
    ("StudyDate=-20041231", RangeMatch("StudyDate", "DA", None, "20041231")),
    ("StudyDate=20040101-", RangeMatch("StudyDate", "DA", "20040101", None)),
    ("StudyTime=0800-1200", RangeMatch("StudyTime", "TM", "0800", "120059.999999")),
    ("StudyTime=08-", RangeMatch("StudyTime", "TM", "08", None)),
    ("StudyTime=-12", RangeMatch("StudyTime", "TM", None, "125959.999999")),
    ("StudyTime=1230", RangeMatch("StudyTime", "TM", "1230", "123059.999999")),
    ("StudyTime=123045.5", RangeMatch("StudyTime", "TM", "123045.5", "123045.599999")),
    ("StudyID=*7*", ValueMatch("StudyID", "SH", ("*7*",))),
    ("StudyDescription=Chest CT", ValueMatch("StudyDescription", "LO", ("Chest CT",))),
    # a key given twice is a list (dicomweb-client sends lists that way)
    ("PatientID=a&00100020=b", ValueMatch("PatientID", "LO", ("a", "b"))),
    ("ModalitiesInStudy=CT&ModalitiesInStudy=", ValueMatch("ModalitiesInStudy", "CS", ("CT",))),
]


@pytest.mark.parametrize(("query", "match"), MATCHES)
def test_study_matches(query: str, match: ValueMatch | RangeMatch) -> None:
    parsed = parse(query)
    assert parsed.matches == (match,)
    assert parsed.ignored == ()
    assert tag_of(match.keyword) in parsed.includes  # a match key is returned


SERIES_AND_INSTANCE_MATCHES = [
    (SE, "Modality=CT", ValueMatch("Modality", "CS", ("CT",))),
    (SE, "SeriesNumber=+3", ValueMatch("SeriesNumber", "IS", ("3",))),
    (SE, "SeriesNumber=1,2", ValueMatch("SeriesNumber", "IS", ("1", "2"))),
    (SE, "00200011=4", ValueMatch("SeriesNumber", "IS", ("4",))),
    (SE, "SeriesInstanceUID=1.2.3", ValueMatch("SeriesInstanceUID", "UI", ("1.2.3",))),
    (SE, "PatientID=X", ValueMatch("PatientID", "LO", ("X",))),  # study keys on /series
    (
        IN,
        "SOPClassUID=1.2.840.10008.5.1.4.1.1.2",
        ValueMatch("SOPClassUID", "UI", ("1.2.840.10008.5.1.4.1.1.2",)),
    ),
    (IN, "SOPInstanceUID=1.2.3", ValueMatch("SOPInstanceUID", "UI", ("1.2.3",))),
    (IN, "InstanceNumber=7", ValueMatch("InstanceNumber", "IS", ("7",))),
    (IN, "Modality=MR", ValueMatch("Modality", "CS", ("MR",))),
]


@pytest.mark.parametrize(("level", "query", "match"), SERIES_AND_INSTANCE_MATCHES)
def test_lower_level_matches(level: Level, query: str, match: ValueMatch) -> None:
    assert parse(query, level).matches == (match,)


def test_defaults() -> None:
    parsed = parse("")
    assert parsed == QidoQuery(ST, limit=MAX_RESULTS)
    assert not parsed.fuzzy
    assert not parsed.include_all


UNIVERSAL = ["PatientName=", "PatientName=*", "PatientName=**", "StudyDate=", "PatientID=*"]


@pytest.mark.parametrize("query", UNIVERSAL)
def test_universal_matching_only_returns_the_key(query: str) -> None:
    parsed = parse(query)
    assert parsed.matches == ()
    assert parsed.includes == tags(query.split("=")[0])


OPTIONS = [
    ("limit=10&offset=20", {"limit": 10, "offset": 20}),
    ("limit=0", {"limit": 0}),
    (f"limit={MAX_RESULTS * 10}", {"limit": MAX_RESULTS}),
    ("fuzzymatching=true", {"fuzzy": True}),
    ("fuzzymatching=TRUE", {"fuzzy": True}),
    ("fuzzymatching=false", {"fuzzy": False}),
    ("includefield=all", {"include_all": True}),
    ("includefield=StudyDescription", {"includes": tags("StudyDescription")}),
    ("includefield=00081030", {"includes": tags("StudyDescription")}),
    (
        "includefield=StudyDescription,00101010&includefield=PatientComments",
        {"includes": tags("StudyDescription", "PatientAge", "PatientComments")},
    ),
    # a lower level's attribute is never returned (PS3.18 10.6.3.3.1)
    ("includefield=Modality&includefield=Rows", {"includes": frozenset()}),
    ("includefield=00091001", {"includes": frozenset()}),  # private: instance level
    ("accept=application/dicom%2Bjson&charset=utf-8", {}),
]


@pytest.mark.parametrize(("query", "expected"), OPTIONS)
def test_options(query: str, expected: dict[str, object]) -> None:
    parsed = parse(query)
    for name, value in expected.items():
        assert getattr(parsed, name) == value, name


def test_includes_at_lower_levels() -> None:
    parsed = parse("includefield=Rows,Columns,PatientComments,00091001", IN)
    private = {0x00091001, 0x00090010}  # with its Private Creator (PS3.18 10.6.3.3)
    assert parsed.includes == tags("Rows", "Columns", "PatientComments") | private
    assert parse("includefield=Rows,BodyPartExamined", SE).includes == tags("BodyPartExamined")


PRIVATE_CREATORS = [
    (0x00091001, 0x00090010),
    (0x0019100F, 0x00190010),
    (0x0029FF00, 0x002900FF),  # the last block
    (0x7FE11010, 0x7FE10010),
    (0x00090010, None),  # a Private Creator itself
    (0x000900FF, None),
    (0x00090001, None),  # (gggg,0001-000F): no block reserves them
    (0x00081010, None),  # even group: standard
    (0x00011010, None),  # odd groups 0001-0007 and FFFF are not private (PS3.5 7.8.1)
    (0x00071010, None),
    (0xFFFF1010, None),
]


@pytest.mark.parametrize(("tag", "creator"), PRIVATE_CREATORS, ids=lambda t: f"{t}")
def test_private_creator_of_a_private_element(tag: int, creator: int | None) -> None:
    assert private_creator(tag) == creator


def test_a_private_match_key_returns_its_creator_too() -> None:
    assert parse("00191002=912", IN).includes == {0x00191002, 0x00190010}


IGNORED = [
    (ST, "PatientComments=x", ("PatientComments",)),  # not indexed
    (ST, "Modality=CT", ("Modality",)),  # series level, searching studies
    (ST, "SOPClassUID=1.2.3", ("SOPClassUID",)),
    (ST, "00400275.00400009=X", ("00400275.00400009",)),  # sequence matching
    (ST, "00091001=x", ("00091001",)),
    (SE, "PerformedProcedureStepStartDate=20040101", ("PerformedProcedureStepStartDate",)),
    (SE, "SOPInstanceUID=1.2.3", ("SOPInstanceUID",)),
]


@pytest.mark.parametrize(("level", "query", "ignored"), IGNORED)
def test_unsupported_keys_are_ignored_and_reported(
    level: Level, query: str, ignored: tuple[str, ...]
) -> None:
    parsed = parse(query, level)
    assert parsed.matches == ()
    assert parsed.ignored == ignored


BAD = [
    "StudyDate=2004",
    "StudyDate=20041301",
    "StudyDate=20040230",
    "StudyDate=2004-01-01",
    "StudyDate=20040101-20041231-20051231",
    "StudyDate=20041231-20040101",
    "StudyDate=-",
    "StudyDate=20040101,20050101",
    "StudyDate=2004*",
    "StudyTime=2500",
    "StudyTime=1261",
    "StudyTime=12:30",
    "StudyTime=1",
    "StudyInstanceUID=1.2.x",
    "StudyInstanceUID=1.2.*",
    "StudyInstanceUID=1.2.3,abc",
    "StudyInstanceUID=" + "1." * 40 + "1",
    "includefield=Foo",
    "includefield=0010001",
    "includefield=Patient-Name",
    "NotAKeyword=1",
    "0010zz10=1",
    "limit=-1",
    "limit=ten",
    "offset=-5",
    "limit=1&limit=2",
    "fuzzymatching=yes",
    "StudyDate=20040101&StudyDate=20050101",
    "AccessionNumber=" + "\\".join(["a"] * 101),
    "limit=\u00b2",  # str.isdigit() says yes
    "offset=\u00b2",
    "limit=\uff13",  # a fullwidth 3, which int() reads
    "StudyDate=\u0662\u0660\u0662\u0664\u0660\u0661\u0660\u0662",  # Arabic-Indic digits
    "StudyTime=\u0661\u0662",
    "StudyDate=00000101",
    "StudyDate=99991232",
    "\u65e5=1",
    "includefield=\u65e5",
    "PatientName=" + "x" * 1025,
    "fuzzymatching=true&PatientName=" + " ".join(["w"] * 33),
    "fuzzymatching=true&PatientName="
    + "\\".join(" ".join(f"w{v}{i}" for i in range(11)) for v in range(3)),
    "&".join(
        f"{k}=" + "\\".join(f"a{i}" for i in range(100))
        for k in ("PatientID", "StudyID", "AccessionNumber")
    ),
]


@pytest.mark.parametrize("query", BAD)
def test_bad_queries_are_400(query: str) -> None:
    with pytest.raises(BadRequest):
        parse(query)


def test_bad_values_are_400_even_for_ignored_keys() -> None:
    with pytest.raises(BadRequest):
        parse("SeriesDate=yesterday", ST)
    with pytest.raises(BadRequest):
        parse("SeriesNumber=x", SE)
    with pytest.raises(BadRequest):
        parse("AcquisitionDateTime=20041301", IN)


DATETIMES = [
    ("2004", RangeMatch("AcquisitionDateTime", "DT", "2004", "20041231235959.999999")),
    (
        "20040101-20041231",
        RangeMatch("AcquisitionDateTime", "DT", "20040101", "20041231235959.999999"),
    ),
    (
        "200401011200-0500",  # a single value with an offset from UTC, not a range
        RangeMatch("AcquisitionDateTime", "DT", "200401011200", "20040101120059.999999"),
    ),
    ("-2004", RangeMatch("AcquisitionDateTime", "DT", None, "20041231235959.999999")),
    ("2004-", RangeMatch("AcquisitionDateTime", "DT", "2004", None)),
]


@pytest.mark.parametrize(("value", "match"), DATETIMES)
def test_datetime_values(value: str, match: RangeMatch) -> None:
    assert parse_match("AcquisitionDateTime", "DT", value) == match


def test_path_uids_are_checked() -> None:
    assert parse("", SE, "1.2.3").study_uid == "1.2.3"
    with pytest.raises(BadRequest):
        parse("", SE, "1.2.abc")
    with pytest.raises(BadRequest):
        parse_query(IN, [], "1.2.3", "../etc")


def test_attribute_levels() -> None:
    assert attribute_level(tag_of("PatientName")) is ST
    assert attribute_level(tag_of("StudyDescription")) is ST
    assert attribute_level(tag_of("InstitutionName")) is SE
    assert attribute_level(tag_of("Rows")) is IN
    assert attribute_level(0x00091001) is IN


def test_default_tags_per_target() -> None:
    study_uid = tag_of("StudyInstanceUID")
    assert tag_of("ModalitiesInStudy") in default_tags(ST, False, False)
    assert tag_of("NumberOfStudyRelatedSeries") in default_tags(SE, False, False)  # /series
    assert tag_of("NumberOfStudyRelatedSeries") not in default_tags(SE, True, False)
    assert tag_of("Modality") in default_tags(IN, True, False)  # /studies/{s}/instances
    assert tag_of("Modality") not in default_tags(IN, True, True)
    assert study_uid in default_tags(IN, True, True)


ELEMENTS = [
    ("SH", "", {"vr": "SH"}),
    ("SH", "A1", {"vr": "SH", "Value": ["A1"]}),
    ("CS", "CT\\MR", {"vr": "CS", "Value": ["CT", "MR"]}),
    ("CS", "ORIGINAL\\\\AXIAL", {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}),
    ("LT", "a\\b", {"vr": "LT", "Value": ["a\\b"]}),
    ("IS", "7", {"vr": "IS", "Value": [7]}),
    ("IS", 12, {"vr": "IS", "Value": [12]}),
    ("IS", "-3\\+4", {"vr": "IS", "Value": [-3, 4]}),
    ("IS", "²", {"vr": "IS", "Value": ["²"]}),  # a stored value int() refuses: as text
    ("IS", "+-5", {"vr": "IS", "Value": ["+-5"]}),
    ("PN", "Doe^John", {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}),
    (
        "PN",
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        {
            "vr": "PN",
            "Value": [
                {
                    "Alphabetic": "Yamada^Tarou",
                    "Ideographic": "山田^太郎",
                    "Phonetic": "やまだ^たろう",
                }
            ],
        },
    ),
    ("PN", "=山田^太郎", {"vr": "PN", "Value": [{"Ideographic": "山田^太郎"}]}),
    ("PN", ["A^B", "C^D"], {"vr": "PN", "Value": [{"Alphabetic": "A^B"}, {"Alphabetic": "C^D"}]}),
    ("PN", [], {"vr": "PN"}),
]


@pytest.mark.parametrize(("vr", "value", "expected"), ELEMENTS)
def test_elements(vr: str, value: object, expected: dict[str, object]) -> None:
    assert element(vr, value) == expected


def test_result_object() -> None:
    row = {
        "StudyInstanceUID": "1.2.3",
        "PatientName": "Müller^Jürgen",
        "PatientID": "",
        "AccessionNumber": "A1",
        "TimezoneOffsetFromUTC": "",
        "ModalitiesInStudy": "CT\\MR",
        "NumberOfStudyRelatedSeries": 2,
    }
    sidecar = {
        "00101000": {"vr": "LO", "Value": ["OTHER"]},  # OtherPatientIDs (retired)
        "00104000": {"vr": "LT", "Value": ["comment"]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "pacsfhir:instance/bulkdata/7FE00010"},
    }
    defaults = tags("PatientID", "TimezoneOffsetFromUTC", "RetrieveURL", "InstanceAvailability")
    wanted = defaults | tags("PatientName", "ModalitiesInStudy", "PatientComments", "PixelData")
    result = result_object(ST, wanted, row, "http://x/dicom-web", sidecar, defaults=defaults)
    assert result == {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
        "00081190": {"vr": "UR", "Value": ["http://x/dicom-web/studies/1.2.3"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
        "00100020": {"vr": "LO"},  # empty, still returned: a default
        "00104000": {"vr": "LT", "Value": ["comment"]},  # from the stored instance
    }  # no Timezone Offset (conditional, empty), no Pixel Data (bulk data)
    everything = result_object(ST, defaults, row, "http://x/dicom-web", sidecar, True, defaults)
    assert "00104000" in everything
    assert "00101000" not in everything  # retired, so not known as patient level
    assert "00080005" in everything
    plain = result_object(ST, tags("AccessionNumber"), row, "http://x/dicom-web")
    assert plain == {"00080050": {"vr": "SH", "Value": ["A1"]}}


def test_huge_limits_and_offsets_read_as_the_largest_integer() -> None:
    query = parse("limit=99999999999999999999&offset=99999999999999999999")
    assert query.limit == MAX_RESULTS
    assert query.offset == 2**63 - 1
    assert parse("offset=" + "9" * 5000).offset == 2**63 - 1
    assert parse("offset=007").offset == 7


def test_fuzzy_words_at_the_cap() -> None:
    query = parse("fuzzymatching=true&PatientName=" + " ".join(["w"] * 32))
    assert query.fuzzy
    plain = parse("PatientName=" + " ".join(["w"] * 200))  # one term, whatever its words
    assert len(plain.matches) == 1


def test_matchable_keys_are_the_index_columns() -> None:
    """``search.qido.MATCHABLE`` (what the parser keeps) is what ``index.qido`` has a
    column for."""
    from pacsfhir.index import qido as sql
    from pacsfhir.search.qido import MATCHABLE

    columns = (
        sql._PATIENT_COLUMNS.keys()
        | sql._STUDY_COLUMNS.keys()
        | sql._SERIES_COLUMNS.keys()
        | sql._INSTANCE_COLUMNS.keys()
    )
    assert columns == MATCHABLE
