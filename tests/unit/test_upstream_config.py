"""Upstream PACS configuration: URLs and tables in, checked records out (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pacsfhir.errors import ConfigurationError
from pacsfhir.settings import load_settings
from pacsfhir.upstream.config import (
    Credentials,
    DicomwebUpstream,
    DimseUpstream,
    parse_upstream,
    parse_upstream_tables,
)


@pytest.mark.parametrize(
    ("url", "options", "expected"),
    [
        (
            "https://pacs.example.org/dicom-web/",
            {},
            DicomwebUpstream(
                "upstream", "https://pacs.example.org/dicom-web", Credentials(), 30.0, 300
            ),
        ),
        (
            "http://127.0.0.1:8042/dicom-web",
            {"token": "t0k", "timeout": 5, "cache_seconds": 0},
            DicomwebUpstream(
                "upstream",
                "http://127.0.0.1:8042/dicom-web",
                Credentials("bearer", token="t0k"),
                5.0,
                0,
            ),
        ),
        (
            "https://pacs/wado",
            {"username": "u", "password": "p"},
            DicomwebUpstream(
                "upstream", "https://pacs/wado", Credentials("basic", "u", "p"), 30.0, 300
            ),
        ),
        (
            "dimse://ORTHANC@127.0.0.1:4242",
            {},
            DimseUpstream("upstream", "ORTHANC", "127.0.0.1", 4242, "PACSFHIR", "c-get", 30.0, 300),
        ),
        (
            "dimse://QR%20SCP@pacs.local:104?calling=GATEWAY&retrieve=C-MOVE",
            {"name": "old"},
            DimseUpstream("old", "QR SCP", "pacs.local", 104, "GATEWAY", "c-move", 30.0, 300),
        ),
    ],
)
def test_upstream_urls(url: str, options: dict[str, Any], expected: object) -> None:
    assert parse_upstream(url, **options) == expected


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("", {}, "url is missing"),
        ("ftp://pacs/dicom-web", {}, "neither a DICOMweb base"),
        ("pacs.example.org/dicom-web", {}, "neither a DICOMweb base"),
        ("https:///dicom-web", {}, "names no host"),
        ("https://u:p@pacs/dicom-web", {}, "not in the URL"),
        ("https://pacs/dicom-web?x=1", {}, "no query"),
        ("https://pacs:port/dicom-web", {}, "port is not a number"),
        ("https://pacs/dicom-web", {"auth": "digest"}, "auth must be one of"),
        (
            "https://pacs/dicom-web",
            {"auth": "basic", "username": "u"},
            "needs username and password",
        ),
        ("https://pacs/dicom-web", {"auth": "bearer"}, "needs token"),
        (
            "https://pacs/dicom-web",
            {"auth": "none", "token": "t"},
            "credentials given with auth none",
        ),
        ("https://pacs/dicom-web", {"timeout": 0}, "timeout"),
        ("https://pacs/dicom-web", {"cache_seconds": -1}, "cache_seconds"),
        ("dimse://pacs:104", {}, "needs the called AE"),
        ("dimse://AE@pacs", {}, "need a port"),
        ("dimse://AE@pacs:0", {}, "need a port"),
        ("dimse://AE@pacs:99999", {}, "need a port"),
        ("dimse://AE:secret@pacs:104", {}, "no password"),
        ("dimse://AE@pacs:104/x", {}, "no path"),
        ("dimse://AE@pacs:104?retrieve=wado", {}, "c-get or c-move"),
        ("dimse://AE@pacs:104?colour=red", {}, "unknown option"),
        ("dimse://ABCDEFGHIJKLMNOPQ@pacs:104", {}, "not an AE title"),
        ("dimse://A%5CB@pacs:104", {}, "not an AE title"),  # a backslash
        ("dimse://%20%20@pacs:104", {}, "not an AE title"),  # only spaces
        ("dimse://AE@pacs:104?calling=%01", {}, "not an AE title"),
        ("dimse://AE@pacs:104", {"token": "t"}, "no credentials"),
    ],
)
def test_bad_upstreams_are_refused_naming_the_field(
    url: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_upstream(url, name="main", **options)


def test_tables_need_unique_names_and_known_keys() -> None:
    tables = [
        {"name": "a", "url": "https://a/dicom-web"},
        {"name": "b", "url": "dimse://B@b:104", "timeout": 3},
    ]
    parsed = parse_upstream_tables(tables, "US")
    assert [u.name for u in parsed] == ["a", "b"]
    assert isinstance(parsed[1], DimseUpstream)
    assert parsed[1].calling_ae == "US"
    with pytest.raises(ConfigurationError, match="unique: a"):
        parse_upstream_tables([tables[0], tables[0]], "US")
    with pytest.raises(ConfigurationError, match="unknown key"):
        parse_upstream_tables([{"name": "a", "url": "https://a", "colour": 1}], "US")
    with pytest.raises(ConfigurationError, match="must be a string"):
        parse_upstream_tables([{"name": "a", "url": "https://a", "token": 7}], "US")


def test_credentials_never_show_in_a_repr() -> None:
    upstream = parse_upstream("https://a/dicom-web", username="u", password="hunter2")
    assert "hunter2" not in repr(upstream)


def test_the_config_file_takes_an_array_of_tables(tmp_path: Path) -> None:
    config = tmp_path / "pacsfhir.toml"
    config.write_text(
        '[[upstream]]\nname = "main"\nurl = "https://pacs/dicom-web"\nauth = "bearer"\n'
        'token = "x"\n\n[[upstream]]\nname = "old"\nurl = "dimse://OLD@10.0.0.1:104"\n'
    )
    settings = load_settings({"config": str(config)}, {})
    assert [u.name for u in settings.upstreams] == ["main", "old"]
    single = load_settings({}, {"PACSFHIR_UPSTREAM": "https://pacs/dicom-web"})
    assert [u.name for u in single.upstreams] == ["upstream"]
    assert load_settings({}, {}).upstreams == ()


def test_a_wrong_upstream_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="upstream 'upstream'"):
        load_settings({}, {"PACSFHIR_UPSTREAM": "dimse://pacs:104"})
    config = tmp_path / "bad.toml"
    config.write_text('[[upstream]]\nname = "x"\nurl = "gopher://pacs"\n')
    with pytest.raises(ConfigurationError, match="upstream 'x'"):
        load_settings({"config": str(config)}, {})


@pytest.mark.parametrize(
    ("credentials", "header"),
    [
        (Credentials(), ""),
        # RFC 7617 section 2's example, and a UTF-8 password (section 2.1's charset)
        (Credentials("basic", "Aladdin", "open sesame"), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        (Credentials("basic", "test", "123\u00a3"), "Basic dGVzdDoxMjPCow=="),
        (Credentials("bearer", token="abc.def"), "Bearer abc.def"),
    ],
)
def test_authorization_header(credentials: Credentials, header: str) -> None:
    assert credentials.authorization == header
