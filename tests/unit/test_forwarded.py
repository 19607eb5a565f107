"""A trusted reverse proxy's forwarding headers (RFC 7239 ``Forwarded``, the
``X-Forwarded-*`` family) into the public origin and the client, as tables; and what
no header may do: put characters of its own into a URL."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacsfhir.api.forwarded import (
    Forwarding,
    ForwardingError,
    check_host,
    check_prefix,
    forwarded_elements,
    named_clients,
    resolve,
)

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize(
    ("value", "elements"),
    [
        (
            "for=192.0.2.60;proto=http;by=203.0.113.43",
            [{"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}],
        ),
        ('For="[2001:db8:cafe::17]:4711"', [{"for": "[2001:db8:cafe::17]:4711"}]),
        ("for=192.0.2.43, for=198.51.100.17", [{"for": "192.0.2.43"}, {"for": "198.51.100.17"}]),
        ('host="a.example:8443" ; proto=https', [{"host": "a.example:8443", "proto": "https"}]),
        ('for="_gazonk"', [{"for": "_gazonk"}]),
        ('host="x\\"y"', [{"host": 'x"y'}]),
    ],
)
def test_forwarded_elements(value: str, elements: list[dict[str, str]]) -> None:
    assert forwarded_elements(value) == elements


@pytest.mark.parametrize(
    "value",
    ["", "for", "for=", "for=a b", 'for="open', "for=1;for=2", "for=1,,for=2", "=x", "for=1;"],
)
def test_malformed_forwarded(value: str) -> None:
    with pytest.raises(ForwardingError):
        forwarded_elements(value)


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("Example.ORG", "example.org"),
        ("example.org:8443", "example.org:8443"),
        ("192.0.2.1:80", "192.0.2.1:80"),
        ("[2001:DB8::1]:443", "[2001:db8::1]:443"),
        ("[::1]", "[::1]"),
        ("pacs_internal", "pacs_internal"),
    ],
)
def test_good_hosts(value: str, host: str) -> None:
    assert check_host(value) == host


@pytest.mark.parametrize(
    "value",
    [
        "",
        "evil.example/path",
        "evil.example?x=1",
        "evil.example#frag",
        "user@evil.example",
        "a.example:0",
        "a.example:65536",
        "a.example:8o",
        "a.example:",
        "[not-ipv6]",
        "[::1]x",
        "a b",
        "a.example\r\nX: y",
        '"quoted"',
        "a" * 300,
        "-leading.example",
        "ex%41mple.org",
    ],
)
def test_bad_hosts(value: str) -> None:
    with pytest.raises(ForwardingError):
        check_host(value)


@pytest.mark.parametrize(
    ("value", "prefix"),
    [("", ""), ("/", ""), ("/pacs", "/pacs"), ("pacs/", "/pacs"), ("/a/b-c_d.e~/", "/a/b-c_d.e~")],
)
def test_good_prefixes(value: str, prefix: str) -> None:
    assert check_prefix(value) == prefix


@pytest.mark.parametrize(
    "value", ["/../admin", "/a/./b", "/a b", "/a?x", "/a#x", "/%2e%2e", "/a;b", '/"', "/é"]
)
def test_bad_prefixes(value: str) -> None:
    with pytest.raises(ForwardingError):
        check_prefix(value)


@pytest.mark.parametrize(
    ("headers", "peer", "expected"),
    [
        # untrusted peers: nothing they say counts
        ({"x-forwarded-host": "evil.example"}, "192.0.2.9", None),
        ({"forwarded": "host=evil.example"}, None, None),
        ({"forwarded": "host=evil.example"}, "testclient", None),
        # a trusted peer that forwards nothing: the address it names, or nothing
        ({"host": "internal:8080"}, "10.0.0.2", Forwarding(None, None)),
        ({"x-forwarded-for": "192.0.2.7"}, "10.0.0.2", Forwarding(None, "192.0.2.7")),
        # X-Forwarded-*
        (
            {"x-forwarded-host": "pacs.example", "x-forwarded-proto": "https"},
            "10.0.0.2",
            Forwarding("https://pacs.example", None),
        ),
        (
            {
                "x-forwarded-host": "spoofed.example, pacs.example:8443",
                "x-forwarded-proto": "https",
                "x-forwarded-prefix": "/imaging/",
                "x-forwarded-for": "127.0.0.1, 192.0.2.7, 10.0.0.3",
            },
            "10.0.0.2",
            Forwarding("https://pacs.example:8443/imaging", "192.0.2.7"),
        ),
        (  # proto alone: the Host the proxy passed on
            {"x-forwarded-proto": "https", "host": "pacs.example"},
            "::1",
            Forwarding("https://pacs.example", None),
        ),
        (  # prefix alone
            {"x-forwarded-prefix": "/pacs", "host": "pacs.example"},
            "::ffff:10.1.1.1",
            Forwarding("http://pacs.example/pacs", None),
        ),
        # Forwarded: the element of the first trusted proxy, not what the client wrote
        (
            {"forwarded": 'for=192.0.2.60;proto=https;host="pacs.example"'},
            "10.0.0.2",
            Forwarding("https://pacs.example", "192.0.2.60"),
        ),
        (
            {
                "forwarded": "for=6.6.6.6;host=evil.example;proto=http, "
                "for=192.0.2.60;host=pacs.example;proto=https, "
                "for=10.0.0.9;host=internal;proto=http"
            },
            "10.0.0.2",
            Forwarding("https://pacs.example", "192.0.2.60"),
        ),
        (
            {"forwarded": 'for="[2001:db8::7]:5000";proto=https', "host": "pacs.example"},
            "10.0.0.2",
            Forwarding("https://pacs.example", "2001:db8::7"),
        ),
        (  # Forwarded wins over X-Forwarded-Host
            {"forwarded": "host=pacs.example", "x-forwarded-host": "other.example"},
            "10.0.0.2",
            Forwarding("http://pacs.example", None),
        ),
        (
            {"forwarded": "for=unknown;host=pacs.example"},
            "10.0.0.2",
            Forwarding("http://pacs.example", None),
        ),
    ],
)
def test_resolve(headers: dict[str, str], peer: str | None, expected: Forwarding | None) -> None:
    assert resolve(headers, peer, PROXIES) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {"x-forwarded-host": "evil.example/x?y"},
        {"x-forwarded-host": "pacs.example", "x-forwarded-proto": "javascript"},
        {"x-forwarded-host": "pacs.example", "x-forwarded-prefix": "/../x"},
        {"forwarded": "host=pacs.example;proto=ftp"},
        {"forwarded": 'host="pacs.example/evil"'},
        {"forwarded": "host=pacs.example,"},
        {"x-forwarded-proto": "https"},  # no host anywhere
    ],
)
def test_a_trusted_proxys_malformed_header_is_an_error(headers: dict[str, str]) -> None:
    with pytest.raises(ForwardingError):
        resolve(headers, "10.0.0.2", PROXIES)
    assert resolve(headers, "192.0.2.1", PROXIES) is None  # and ignored from anyone else


def test_nothing_is_trusted_without_proxies() -> None:
    assert resolve({"x-forwarded-host": "pacs.example"}, "127.0.0.1", ()) is None


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({}, []),
        ({"x-forwarded-for": "127.0.0.1, 192.0.2.1"}, ["127.0.0.1", "192.0.2.1"]),
        ({"x-real-ip": "::1"}, ["::1"]),
        ({"forwarded": 'for="[::1]:80", for=unknown'}, ["::1", None]),
        ({"forwarded": "for=127.0.0.1;by=x"}, ["127.0.0.1"]),
        ({"forwarded": "garbage"}, [None]),
        ({"x-forwarded-for": "::ffff:127.0.0.1"}, ["127.0.0.1"]),
    ],
)
def test_named_clients(headers: dict[str, str], named: list[str | None]) -> None:
    assert named_clients(headers) == named


ORIGIN = re.compile(
    r"https?://(?:[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?"
    r"(?:/[A-Za-z0-9._~-]+)*"
)
PIECES = st.sampled_from(
    [
        "for=",
        "host=",
        "proto=",
        ";",
        ",",
        '"',
        "\\",
        "[",
        "]",
        ":",
        "/",
        "?",
        "#",
        "@",
        " ",
        "\r\n",
        "%2F",
        "..",
        "https",
        "pacs.example",
        "::1",
        "10.0.0.3",
        "é",
        "<",
        "\x00",
    ]
)
TEXT = st.one_of(st.text(max_size=40), st.lists(PIECES, max_size=12).map("".join))


@given(
    forwarded=st.one_of(st.none(), TEXT),
    host=st.one_of(st.none(), TEXT),
    proto=st.one_of(st.none(), TEXT),
    prefix=st.one_of(st.none(), TEXT),
    plain_host=st.one_of(st.none(), TEXT),
)
def test_no_header_puts_its_own_characters_into_a_url(
    forwarded: str | None,
    host: str | None,
    proto: str | None,
    prefix: str | None,
    plain_host: str | None,
) -> None:
    headers = {
        name: value
        for name, value in (
            ("forwarded", forwarded),
            ("x-forwarded-host", host),
            ("x-forwarded-proto", proto),
            ("x-forwarded-prefix", prefix),
            ("host", plain_host),
        )
        if value is not None
    }
    try:
        found = resolve(headers, "10.0.0.2", PROXIES)
    except ForwardingError:
        return
    if found is not None and found.origin is not None:
        assert ORIGIN.fullmatch(found.origin), found.origin
