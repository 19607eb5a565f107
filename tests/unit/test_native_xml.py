"""DICOM JSON -> Native DICOM Model (``dicom.native_xml``): tables of JSON attribute ->
the XML PS3.19 A.1.5 says, escaping, characters XML cannot hold, and any text at all
giving a document that parses, is valid against PS3.19's schema and reads back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacsfhir.dicom.native_xml import (
    escape_attribute,
    escape_text,
    native_xml,
    value_text,
)
from tests.support.native_model import read_native, schema_errors

HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM" '
    'xml:space="preserve">\n'
)

ATTRIBUTES: list[tuple[dict[str, Any], str]] = [
    (
        {"00080060": {"vr": "CS", "Value": ["MR"]}},
        '<DicomAttribute tag="00080060" vr="CS" keyword="Modality">'
        '<Value number="1">MR</Value></DicomAttribute>',
    ),
    (  # PS3.19's own example: "MPG\\XR3", the second value empty
        {"00080008": {"vr": "CS", "Value": ["MPG", None, "XR3"]}},
        '<DicomAttribute tag="00080008" vr="CS" keyword="ImageType">'
        '<Value number="1">MPG</Value><Value number="2"></Value>'
        '<Value number="3">XR3</Value></DicomAttribute>',
    ),
    (  # zero length: no Value at all
        {"00080050": {"vr": "SH"}},
        '<DicomAttribute tag="00080050" vr="SH" keyword="AccessionNumber"></DicomAttribute>',
    ),
    (
        {"00200013": {"vr": "IS", "Value": [7]}, "00280030": {"vr": "DS", "Value": [0.5, 2.0]}},
        '<DicomAttribute tag="00200013" vr="IS" keyword="InstanceNumber">'
        '<Value number="1">7</Value></DicomAttribute>\n'
        '<DicomAttribute tag="00280030" vr="DS" keyword="PixelSpacing">'
        '<Value number="1">0.5</Value><Value number="2">2</Value></DicomAttribute>',
    ),
    (
        {"00209165": {"vr": "AT", "Value": ["00100010"]}},
        '<DicomAttribute tag="00209165" vr="AT" keyword="DimensionIndexPointer">'
        '<Value number="1">00100010</Value></DicomAttribute>',
    ),
    (
        {
            "00100010": {
                "vr": "PN",
                "Value": [
                    {
                        "Alphabetic": "Yamada^Tarou",
                        "Ideographic": "山田^太郎",
                        "Phonetic": "やまだ",
                    },
                    {"Alphabetic": "Doe^John^Q^Dr.^Jr."},
                    None,
                ],
            }
        },
        '<DicomAttribute tag="00100010" vr="PN" keyword="PatientName">'
        '<PersonName number="1"><Alphabetic><FamilyName>Yamada</FamilyName>'
        "<GivenName>Tarou</GivenName></Alphabetic><Ideographic><FamilyName>山田</FamilyName>"
        "<GivenName>太郎</GivenName></Ideographic><Phonetic><FamilyName>やまだ</FamilyName>"
        '</Phonetic></PersonName><PersonName number="2"><Alphabetic>'
        "<FamilyName>Doe</FamilyName><GivenName>John</GivenName><MiddleName>Q</MiddleName>"
        "<NamePrefix>Dr.</NamePrefix><NameSuffix>Jr.</NameSuffix></Alphabetic></PersonName>"
        '<PersonName number="3"></PersonName></DicomAttribute>',
    ),
    (  # a middle name only: the empty components before it are left out
        {"00081070": {"vr": "PN", "Value": [{"Alphabetic": "^^Q"}]}},
        '<DicomAttribute tag="00081070" vr="PN" keyword="OperatorsName">'
        '<PersonName number="1"><Alphabetic><MiddleName>Q</MiddleName></Alphabetic>'
        "</PersonName></DicomAttribute>",
    ),
    (
        {
            "00081115": {
                "vr": "SQ",
                "Value": [{"0020000E": {"vr": "UI", "Value": ["1.2.3"]}}, {}],
            }
        },
        '<DicomAttribute tag="00081115" vr="SQ" keyword="ReferencedSeriesSequence">'
        '<Item number="1"><DicomAttribute tag="0020000E" vr="UI" keyword="SeriesInstanceUID">'
        '<Value number="1">1.2.3</Value></DicomAttribute>\n</Item><Item number="2"></Item>'
        "</DicomAttribute>",
    ),
    (
        {"7FE00010": {"vr": "OW", "BulkDataURI": "http://h/s/1/bulkdata/7FE00010?a=1&b=2"}},
        '<DicomAttribute tag="7FE00010" vr="OW" keyword="PixelData">'
        '<BulkData uri="http://h/s/1/bulkdata/7FE00010?a=1&amp;b=2"/></DicomAttribute>',
    ),
    (
        {"00283006": {"vr": "OW", "InlineBinary": "AAEAAQ=="}},
        '<DicomAttribute tag="00283006" vr="OW" keyword="LUTData">'
        "<InlineBinary>AAEAAQ==</InlineBinary></DicomAttribute>",
    ),
    (  # a private element: gggg00ee and its creator; the creator element as it is
        {
            "00190010": {"vr": "LO", "Value": ["GEMS_ACQU_01"]},
            "00191002": {"vr": "SL", "Value": [-3]},
        },
        '<DicomAttribute tag="00190010" vr="LO"><Value number="1">GEMS_ACQU_01</Value>'
        '</DicomAttribute>\n<DicomAttribute tag="00190002" vr="SL" '
        'privateCreator="GEMS_ACQU_01"><Value number="1">-3</Value></DicomAttribute>',
    ),
    (  # no creator for its block: the full tag, no privateCreator
        {"00191102": {"vr": "LO", "Value": ["x"]}},
        '<DicomAttribute tag="00191102" vr="LO"><Value number="1">x</Value></DicomAttribute>',
    ),
    (  # group lengths are left out; a VR the schema does not know is UN
        {"00080000": {"vr": "UL", "Value": [4]}, "00091001": {"vr": "US or SS"}},
        '<DicomAttribute tag="00091001" vr="UN"></DicomAttribute>',
    ),
    (  # a tag no dictionary knows has no keyword; lower-case keys are read too
        {"0008ffff": {"vr": "LO", "Value": ["?"]}},
        '<DicomAttribute tag="0008FFFF" vr="LO"><Value number="1">?</Value></DicomAttribute>',
    ),
]


@pytest.mark.parametrize(("dataset", "expected"), ATTRIBUTES)
def test_attributes(dataset: dict[str, Any], expected: str) -> None:
    document = native_xml(dataset)
    assert document.decode() == HEAD + expected + "\n</NativeDicomModel>\n"
    assert schema_errors(document) == []


@pytest.mark.parametrize(
    ("text", "as_text", "as_attribute"),
    [
        ("plain", "plain", "plain"),
        ("a&b<c>d", "a&amp;b&lt;c&gt;d", "a&amp;b&lt;c&gt;d"),
        ("say \"hi\" 'x'", "say \"hi\" 'x'", "say &quot;hi&quot; 'x'"),
        ("a\r\nb\tc", "a&#13;\nb\tc", "a&#13;&#10;b&#9;c"),
        ("]]>", "]]&gt;", "]]&gt;"),
        ("page\x0cbreak\x00\x1b", "page\ufffdbreak\ufffd\ufffd", "page\ufffdbreak\ufffd\ufffd"),
        ("\ud800 \ufffe \uffff", "\ufffd \ufffd \ufffd", "\ufffd \ufffd \ufffd"),
        ("Ünïcödé 山田 😀", "Ünïcödé 山田 😀", "Ünïcödé 山田 😀"),
    ],
)
def test_escaping(text: str, as_text: str, as_attribute: str) -> None:
    assert escape_text(text) == as_text
    assert escape_attribute(text) == as_attribute


@pytest.mark.parametrize(
    ("value", "vr", "expected"),
    [
        (1, "IS", "1"),
        (2.0, "DS", "2"),
        (-0.5, "DS", "-0.5"),
        (1e-20, "FD", "1e-20"),
        (862399761.111079, "FD", "862399761.111079"),
        (-11.199999809265137, "FL", "-11.2"),
        (3.4028234663852886e38, "FL", "3.4028235e+38"),
        (float("nan"), "FD", "nan"),
        (float("inf"), "FL", "inf"),
        ("1.2.3", "UI", "1.2.3"),
    ],
)
def test_value_text(value: Any, vr: str, expected: str) -> None:
    assert value_text(value, vr) == expected


def _as_xml_holds_it(text: str) -> str:
    """XML 1.0's Char production (section 2.2), anything else as U+FFFD."""
    return "".join(
        c
        if c in "\t\n\r"
        or "\x20" <= c <= "\ud7ff"
        or "\ue000" <= c <= "\ufffd"
        or c >= "\U00010000"
        else "\ufffd"
        for c in text
    )


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.one_of(st.none(), st.text()), min_size=1, max_size=4),
    creator=st.text(max_size=20),
    name=st.text(max_size=30),
)
def test_any_text_gives_a_valid_document_that_reads_back(
    texts: list[str | None], creator: str, name: str
) -> None:
    dataset = {
        "00081030": {"vr": "LO", "Value": texts},
        "00110010": {"vr": "LO", "Value": [creator]},
        "00111001": {"vr": "UT", "Value": ["x"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
    }
    document = native_xml(dataset)
    assert schema_errors(document) == []
    found = read_native(document)
    assert found[("00081030", None)].values == [_as_xml_holds_it(t or "") for t in texts]
    named = creator.strip(" ")
    key = ("00110001", _as_xml_holds_it(named)) if named else ("00111001", None)
    assert found[key].values == ["x"]


_NS = 'xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM"'


@pytest.mark.parametrize(
    "document",
    [
        f"<NativeDicomModel {_NS}/>",  # no xml:space="preserve"
        '<NativeDicomModel xml:space="preserve"/>',  # not in PS3.19's namespace
        f'<NativeDicomModel {_NS} xml:space="preserve"><DicomAttribute tag="0008103e" '
        'vr="LO"/></NativeDicomModel>',  # lower-case hex
        f'<NativeDicomModel {_NS} xml:space="preserve"><DicomAttribute tag="00081030" '
        'vr="XX"/></NativeDicomModel>',
        f'<NativeDicomModel {_NS} xml:space="preserve"><DicomAttribute tag="00081030" '
        'vr="LO"><Value>x</Value></DicomAttribute></NativeDicomModel>',  # no number
        f'<NativeDicomModel {_NS} xml:space="preserve"><DicomAttribute tag="00081030" '
        'vr="LO"><Value number="1">x</Value><Item number="1"/></DicomAttribute>'
        "</NativeDicomModel>",
        f'<NativeDicomModel {_NS} xml:space="preserve"><DicomAttribute tag="00100010" '
        'vr="PN"><PersonName number="1"><Alphabetic><GivenName>a</GivenName>'
        "<FamilyName>b</FamilyName></Alphabetic></PersonName></DicomAttribute>"
        "</NativeDicomModel>",  # components out of order
    ],
)
def test_the_schema_check_refuses(document: str) -> None:
    """The schema check the tests rely on does refuse what PS3.19 does not allow."""
    assert schema_errors(document.encode()) != []
