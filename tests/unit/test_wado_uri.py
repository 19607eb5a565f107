"""WADO-URI's query (PS3.18 9.1.2, 9.4.1.2, 9.5.1.2) and media type selection (8.7.8.1),
as tables of input -> expected."""

from __future__ import annotations

import pytest

from pacsfhir.api.wado_uri import (
    UriRequest,
    choose_media_type,
    parse_query,
    parse_region,
    pixel_region,
    viewport_of,
)
from pacsfhir.dicom.multipart import parse_accept
from pacsfhir.dicom.render import MAX_VIEWPORT, Viewport, Window
from pacsfhir.errors import NotAcceptable

BASE = [("requestType", "WADO"), ("studyUID", "1.2"), ("seriesUID", "1.2.3"), ("objectUID", "1.4")]


def test_the_mandatory_parameters_name_the_instance() -> None:
    query = parse_query(BASE)
    assert (query.study, query.series, query.instance) == ("1.2", "1.2.3", "1.4")
    assert query == UriRequest("1.2", "1.2.3", "1.4")


@pytest.mark.parametrize(
    ("extra", "field", "expected"),
    [
        ([("frameNumber", "3")], "frame", 3),
        ([("rows", "64"), ("columns", "32")], "rows", 64),
        ([("columns", "32")], "columns", 32),
        ([("imageQuality", "40")], "quality", 40),
        ([("windowCenter", "40"), ("windowWidth", "400")], "window", Window(40.0, 400.0)),
        ([("windowCenter", "-1.5e2"), ("windowWidth", "1")], "window", Window(-150.0, 1.0)),
        ([("region", "0,0.25,0.5,1")], "region", (0.0, 0.25, 0.5, 1.0)),
        ([("transferSyntax", "1.2.840.10008.1.2.1")], "transfer_syntax", "1.2.840.10008.1.2.1"),
        ([("annotation", "patient"), ("annotation", "technique")], "ignored", ("annotation",)),
        ([("presentationUID", "1.9")], "ignored", ("presentationUID",)),
        ([("charset", "utf-8"), ("unknown", "x")], "ignored", ()),
    ],
)
def test_optional_parameters(extra: list[tuple[str, str]], field: str, expected: object) -> None:
    assert getattr(parse_query(BASE + extra), field) == expected


def test_content_type_is_a_list_best_first() -> None:
    query = parse_query([*BASE, ("contentType", "image/png;q=0.5, image/gif")])
    assert [r.media_type for r in query.content_types] == ["image/gif", "image/png"]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (BASE[1:], "requestType=WADO is required"),
        ([("requestType", "wado"), *BASE[1:]], "requestType=WADO is required"),
        ([("requestType", "RS"), *BASE[1:]], "requestType=WADO is required"),
        (BASE[:3], "objectUID is required"),
        ([*BASE[:2], ("seriesUID", ""), BASE[3]], "seriesUID is required"),
        ([*BASE[:3], ("objectUID", "1.2.x")], "objectUID is not a valid UID"),
        ([*BASE[:3], ("objectUID", "1." * 40 + "1")], "objectUID is not a valid UID"),
        ([*BASE, ("studyUID", "1.3")], "studyUID is given more than once"),
        ([*BASE, ("frameNumber", "0")], "frameNumber must be between"),
        ([*BASE, ("frameNumber", "1.5")], "frameNumber must be a whole number"),
        ([*BASE, ("rows", "99999")], "rows must be between"),
        ([*BASE, ("columns", "-3")], "columns must be between"),
        ([*BASE, ("windowCenter", "40")], "go together"),
        ([*BASE, ("windowWidth", "40")], "go together"),
        ([*BASE, ("windowCenter", "nan"), ("windowWidth", "4")], "finite decimal"),
        ([*BASE, ("windowCenter", "1"), ("windowWidth", "0.5")], "at least 1"),
        ([*BASE, ("region", "0,0,1")], "region is xmin,ymin,xmax,ymax"),
        ([*BASE, ("region", "0.5,0,0.5,1")], "region must satisfy"),
        ([*BASE, ("region", "0,0,1.5,1")], "region must satisfy"),
        ([*BASE, ("region", "-0.1,0,1,1")], "region must satisfy"),
        ([*BASE, ("imageQuality", "101")], "quality must be between"),
        ([*BASE, ("transferSyntax", "JPEG")], "transferSyntax is not a UID"),
        ([*BASE, ("anonymize", "yes")], "anonymize is not supported"),
        ([*BASE, ("contentType", "application/dicom, image/jpeg")], "mixes application/dicom"),
    ],
)
def test_what_is_a_bad_request(pairs: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_query(pairs)


@pytest.mark.parametrize(
    ("content_type", "accept", "expected"),
    [
        (None, "*/*", "image/jpeg"),  # PS3.18 9.3: the default
        (None, "", "image/jpeg"),
        (None, "image/*", "image/jpeg"),
        (None, "text/html,application/xhtml+xml,*/*;q=0.8", "image/jpeg"),  # a browser
        (None, "image/png", "image/png"),
        (None, "application/dicom", "application/dicom"),
        ("application/dicom", "*/*", "application/dicom"),
        ("image/png", "*/*", "image/png"),
        ("image/gif", "image/*", "image/gif"),
        ("image/jp2, image/png", "*/*", "image/png"),
        ("image/jp2", "*/*", "image/jpeg"),  # none supported: the default (8.3.3.1)
        ("image/jp2", "image/gif", "image/gif"),
    ],
)
def test_media_type_selection(content_type: str | None, accept: str, expected: str) -> None:
    content = parse_query(BASE + ([("contentType", content_type)] if content_type else []))
    assert choose_media_type(content.content_types, parse_accept(accept)) == expected


@pytest.mark.parametrize("accept", ["text/html", "application/json", "video/*"])
def test_nothing_servable_is_406(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        choose_media_type((), parse_accept(accept))


@pytest.mark.parametrize(
    ("region", "columns", "rows", "expected"),
    [
        ((0, 0, 1, 1), 64, 32, (0, 0, 64, 32)),
        ((0.5, 0.5, 1, 1), 64, 32, (32, 16, 32, 16)),
        ((0.25, 0, 0.75, 0.5), 10, 10, (2, 0, 6, 5)),  # touched pixels: 2.5 -> 2, 7.5 -> 8
        ((0.999, 0.999, 1, 1), 10, 10, (9, 9, 1, 1)),
        ((0, 0, 0.001, 0.001), 10, 10, (0, 0, 1, 1)),  # never empty
    ],
)
def test_pixel_region(
    region: tuple[float, float, float, float],
    columns: int,
    rows: int,
    expected: tuple[int, int, int, int],
) -> None:
    assert pixel_region(region, columns, rows) == expected


def test_parse_region_keeps_its_order() -> None:
    assert parse_region(" 0.1, 0.2 ,0.3,0.4") == (0.1, 0.2, 0.3, 0.4)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], None),
        ([("rows", "50"), ("columns", "60")], Viewport(60, 50)),
        ([("columns", "60")], Viewport(60, MAX_VIEWPORT)),
        ([("rows", "50")], Viewport(MAX_VIEWPORT, 50)),
        ([("region", "0.5,0.5,1,1")], Viewport(50, 100, (50, 100, 50, 100))),
        ([("region", "0,0,0.5,0.5"), ("rows", "10")], Viewport(MAX_VIEWPORT, 10, (0, 0, 50, 100))),
    ],
)
def test_viewport_of(extra: list[tuple[str, str]], expected: Viewport | None) -> None:
    assert viewport_of(parse_query(BASE + extra), columns=100, rows=200) == expected
