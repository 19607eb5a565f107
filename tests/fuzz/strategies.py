"""Hypothesis strategies for hostile requests: path parameters (real ids and hostile
segments), query strings (known names, hostile values, raw and invalid percent-encoding),
headers and bodies. Everything that goes into a URL is produced already percent-encoded,
so invalid UTF-8 and lone ``%`` reach the server as such."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import quote

from hypothesis import strategies as st

from pacsfhir.api.wado_uri import PARAMETERS as WADO_URI_PARAMETERS
from pacsfhir.search.parse import CONTROL_PARAMS, IMAGING_STUDY_PARAMS, PATIENT_PARAMS
from tests.fuzz.routes import Route

T = TypeVar("T")


@dataclass(frozen=True)
class Chain:
    """Real ids of one stored instance, for the path parameters."""

    patient: str  # FHIR Patient id
    study: str
    series: str
    sop: str
    frames: int


@dataclass(frozen=True)
class FuzzRequest:
    method: str
    path: str  # percent-encoded
    query: str  # percent-encoded, without "?"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes | None = None

    @property
    def url(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    def describe(self, limit: int = 300) -> str:
        body = "" if self.body is None else f" body[{len(self.body)}]={self.body[:80]!r}"
        heads = "".join(f" {k.decode()}: {v[:60]!r}" for k, v in self.headers)
        text = f"{self.method} {self.url}{heads}{body}"
        return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


@dataclass
class Ids:
    chains: list[Chain] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    """What requests are drawn from: real ids, a small real DICOM file for STOW bodies,
    and whether a real HTTP/1.1 client sends them (it cannot send some header bytes)."""

    ids: Ids
    sample: bytes
    h11: bool

    def __repr__(self) -> str:  # Hypothesis shows strategies' arguments
        return f"Context({len(self.ids.chains)} chains, h11={self.h11})"


def enc(text: str) -> str:
    return quote(text, safe="")


# -- path segments ------------------------------------------------------------------

HOSTILE_SEGMENTS = [
    "%E6%97%A5",  # 日
    "%FF",
    "%C3%28",
    "%E6%97",
    "..",
    "%2E%2E",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2F",
    "%00",
    "%0A",
    "%01",
    "%20",
    "%C2%B2",
    "1.2.3",
    "0" * 65,
    "1." * 40 + "1",
    "9" * 64,
    "A" * 2000,
    "1.2.840.10008.1.2",
    "-1",
    "0",
    "99999999999999999999",
    ",",
    "1,",
    ",1",
    "1,,2",
    "%201",
    "*",
    "%3F",
    "%23",
    "%25",
    "'",
    "%22",
    "%3Cscript%3E",
    "Patient",
    "_search",
    "metadata",
    "$wado-rs",
    "%24wado-rs",
]
FRAME_LISTS = [
    "1",
    "2",
    "1,2",
    "2,1",
    ",".join(["1"] * 10),
    ",".join(str(i) for i in range(1, 31)),
    "0",
    "65536",
    "4294967297",
    "1e3",
    "%C2%B2",
    "%D9%A1",  # Arabic-Indic one
]
TAGS = ["7FE00010", "00282000", "7fe00010", "FFFFFFFF", "0010", "GGGGGGGG", "7FE0,0010"]


def segment() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(HOSTILE_SEGMENTS),
        st.text(min_size=1, max_size=20).map(enc),
    )


def path_value(name: str, chain: Chain) -> st.SearchStrategy[str]:
    real: dict[str, list[str]] = {
        "study": [chain.study],
        "study_uid": [chain.study],
        "study_id": [chain.study],
        "series": [chain.series],
        "series_uid": [chain.series],
        "instance": [chain.sop],
        "sop_uid": [chain.sop],
        "patient_id": [chain.patient],
        "endpoint_id": ["dicomweb", "wado-" + chain.patient],
        "frames": [str(chain.frames), "1", ",".join(str(i) for i in range(1, chain.frames + 1))],
        "tag": TAGS,
    }
    hostile = (
        st.one_of(st.sampled_from(FRAME_LISTS), lazy(lambda: ",".join(map(str, range(1, 2001)))))
        if name == "frames"
        else segment()
    )
    if name in real:
        return st.one_of(st.sampled_from(real[name]), st.sampled_from(real[name]), hostile)
    return hostile


# -- query strings ------------------------------------------------------------------

DICOMWEB_NAMES = [
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "ReferringPhysicianName",
    "00100010",
    "0020000D",
    "includefield",
    "fuzzymatching",
    "limit",
    "offset",
    "accept",
    "charset",
    "viewport",
    "window",
    "quality",
    "annotation",
    *WADO_URI_PARAMETERS,  # PS3.18 9.1.2, 9.4.1.2, 9.5.1.2
]
FHIR_MODIFIERS = ["", ":exact", ":contains", ":missing", ":not", ":below", ":Patient", ":xyz"]
HOSTILE_NAMES = ["", "%E6%97%A5", "%FF", "a" * 3000, "(0010,0010)", "_", "%00", "name%5B%5D"]


def fhir_names() -> list[str]:
    names = [*IMAGING_STUDY_PARAMS, *CONTROL_PARAMS]
    names += [f"patient.{p}" for p in PATIENT_PARAMS] + [
        f"subject:Patient.{p}" for p in PATIENT_PARAMS
    ]
    return [*names, "_revinclude", "_has:x", "_total", "_lastUpdated"]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


DATE_EDGES = [
    "9999-12-31T23:00:00-14:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-12:00",
    "0000-00-00",
    "0001",
    "9999",
    "99999999",
    "00000000",
    "2020-02-30",
    "2020-13-01",
    "20200101-",
    "-20200101",
    "20200101-19990101",
    "2020-01-01T25:61:61Z",
    "2020-01-01T00:00:00.9999999999+99:99",
    "1970-01-01T00:00:00Z",
]
HOSTILE_VALUES = [
    "",
    " ",
    "²",
    "١٢٣",
    "99999999999999999999",
    "-99999999999999999999",
    "1e309",
    "NaN",
    "-1",
    "0",
    "*",
    "?",
    "**",
    "a*b?c",
    "\\*",
    "a,b,c",
    ",,,,,,",
    ",".join(["1"] * 500),
    "|",
    "||",
    "urn:dicom:uid|",
    "a|b|c",
    "Patient/",
    "Patient/../x",
    "true",
    "count",
    "json",
    "8192,8192",
    "65535,65535",
    "0,0",
    "-1,-1",
    "1,1,1",
    "100,200",
    "0,-1",
    "^" * 500,
    "=" * 50,
    "\x00",
    "\x01\x02\x7f",
    "日本語",
    "\u202e",
    "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"),
    '"quoted"',
    "';--",
    _b64(json.dumps([10**20, "x"])),
    _b64(json.dumps({"pk": 10**20})),
    _b64("{}"),
    "!!!not-base64",
    *DATE_EDGES,
    *[p + d for p in ("ge", "lt", "ap", "sa", "xx") for d in DATE_EDGES[:3]],
]
RAW_FRAGMENTS = ["%FF", "%C3%28", "%", "%G1", "%E6%97", "%00", "%0A", "a%01b", "%2C" * 10, "%C2%B2"]


def lazy(*makers: Callable[[], T]) -> st.SearchStrategy[T]:
    """One of the values the makers build, built only when drawn (big values, short reprs)."""
    return st.sampled_from(makers).map(lambda make: make())


def long_value() -> st.SearchStrategy[str]:
    return lazy(
        lambda: "a" * 10_000,
        lambda: " ".join(["word"] * 2000),
        lambda: _b64("[" * 1500),
        lambda: ",".join(str(i) for i in range(5000)),
    ).map(enc)


def value() -> st.SearchStrategy[str]:
    return st.one_of(
        long_value(),
        st.sampled_from(HOSTILE_VALUES).map(enc),
        st.sampled_from(RAW_FRAGMENTS),
        st.text(max_size=30).map(enc),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
    )


def names_for(route: Route) -> list[str]:
    names = list(route.query_names)
    names += DICOMWEB_NAMES if route.dicomweb else fhir_names()
    return names


def query(route: Route) -> st.SearchStrategy[str]:
    known = names_for(route)
    name = st.one_of(
        st.tuples(st.sampled_from(known), st.sampled_from(FHIR_MODIFIERS)).map(
            lambda t: enc(t[0]) + (enc(t[1]) if not route.dicomweb else "")
        ),
        st.sampled_from(HOSTILE_NAMES),
    )
    pair = st.tuples(name, value()).map(lambda t: f"{t[0]}={t[1]}")
    repeated = st.tuples(pair, st.sampled_from([50, 500])).map(lambda t: "&".join([t[0]] * t[1]))
    return st.one_of(
        st.lists(pair, max_size=5).map("&".join),
        repeated,
        st.sampled_from(["", "&&&", "=", "==&==", "a", "%", "?", "a=1&a=2&a=3"]),
    )


# -- headers ------------------------------------------------------------------------

ACCEPTS = [
    "",
    "*/*",
    "garbage",
    "application/fhir+json",
    "application/fhir+xml",
    "application/dicom+json",
    "multipart/related",
    'multipart/related; type="application/dicom"; transfer-syntax=*',
    'multipart/related; type="application/dicom"; transfer-syntax=1.2.3',
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="application/dicom+xml"',
    "application/dicom+xml",
    'multipart/related; type="image/jpeg"',
    "image/png",
    "image/jpeg;q=0",
    "*/*;q=0",
    "application/json;q=abc",
    ";;;,,,",
    'multipart/related; type="',
    "text/html; charset=\x01",
    "a" * 1000,
    "image/*, " * 100,
]
HEADER_NAMES = [
    "Accept",
    "Content-Type",
    "Prefer",
    "If-None-Match",
    "If-Modified-Since",
    "Accept-Charset",
    "Range",
    "Origin",
    "Authorization",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Prefix",
    "X-Forwarded-For",
    "Forwarded",
    "X-Pacsfhir-Offload",  # api.offload: only the proxy's key hands a relay over
    "Cache-Control",
]
HEADER_VALUES = [
    "",
    "handling=strict",
    "handling=lenient",
    "return=minimal",
    'W/"1"',
    "*",
    '"' * 1000,
    "Mon, 32 Foo 99999 99:99:99 GMT",
    "bytes=0-",
    "bytes=-1",
    "bytes=999999999999999-",
    "Bearer " + "x" * 4000,
    "\x01\x02",
    "caf\xe9",
    "日本",
    "x" * 1000,
    "for=127.0.0.1;host=evil.example;proto=https",
    'for="[::1]:80";host="a/b"',
    "127.0.0.1, 203.0.113.9",
    "/../admin",
]


def header_value(*, h11: bool) -> st.SearchStrategy[bytes]:
    texts = st.one_of(st.sampled_from(ACCEPTS + HEADER_VALUES), st.text(max_size=40))
    raw = st.one_of(
        texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
        texts.map(lambda t: t.encode("latin-1", "replace")),
    )
    if h11:  # a real HTTP/1.1 client cannot send these bytes in a header
        return raw.map(lambda b: b.translate(None, b"\x00\r\n").strip(b" \t"))
    return raw.map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def headers(*, h11: bool) -> st.SearchStrategy[tuple[tuple[bytes, bytes], ...]]:
    accept = st.sampled_from(ACCEPTS).map(lambda a: (b"accept", a.encode("latin-1")))
    other = st.tuples(
        st.sampled_from(HEADER_NAMES).map(lambda n: n.lower().encode()), header_value(h11=h11)
    )
    return st.lists(st.one_of(accept, other), max_size=3, unique_by=lambda h: h[0]).map(tuple)


# -- bodies -------------------------------------------------------------------------

FORM = "application/x-www-form-urlencoded"
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary={}'


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes) -> bytes:
    body = b""
    for head, data in parts:
        body += b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


def form_body(route: Route) -> st.SearchStrategy[tuple[str, bytes]]:
    content_type = st.sampled_from(
        [
            FORM,
            FORM + "; charset=latin-1",
            FORM + "; charset=\x01",
            "multipart/form-data; boundary=x",
            "application/json",
            "",
            "text/plain",
            "garbage/\xff",
        ]
    )
    body = st.one_of(
        query(route).map(lambda q: q.encode("latin-1", "replace")),
        st.sampled_from(
            [b"", b"\xff\xfe\xfd", b"_count=\xff", b"patient=%E6%97%A5", b"\x00" * 100]
        ),
        lazy(lambda: b"&" * 100_000, lambda: b"_count=" + b"9" * 10_000, lambda: b"a=b&" * 300_000),
        st.binary(max_size=200),
    )
    return st.tuples(content_type, body)


def stow_body(sample: bytes) -> st.SearchStrategy[tuple[str, bytes]]:
    """(Content-Type, body) for STOW-RS: broken boundaries, garbage parts, empty bodies."""
    b = b"fuzzboundary"
    good = STOW_TYPE.format("fuzzboundary")
    dicom_head = b"Content-Type: application/dicom"
    garbage_part = st.binary(max_size=300).map(lambda d: (dicom_head, d))
    part_heads = st.sampled_from(
        [
            dicom_head,
            b"Content-Type: application/dicom+json",
            b"Content-Type: application/octet-stream",
            b"Content-Type: \xff\x01",
            b"",
            b"Content-Length: 99999999\r\n" + dicom_head,
            b"X" * 10_000,
        ]
    )
    fixed: list[Callable[[], tuple[str, bytes]]] = [
        lambda: (good, b""),
        lambda: (good, b"--fuzzboundary--\r\n"),
        lambda: (good, multipart([(dicom_head, sample)], b)),
        lambda: (good, multipart([(dicom_head, sample)] * 3, b)),
        lambda: (good, multipart([(dicom_head, sample)], b)[:-20]),  # cut before the end
        lambda: (good, multipart([(dicom_head, sample)], b).replace(b"\r\n", b"\n")),
        lambda: (good, multipart([(dicom_head, bytes(1 << 20))], b)),
        lambda: (good, multipart([(dicom_head, b"x")] * 2000, b)),
        lambda: (good, multipart([(dicom_head, sample)], b"other")),
        lambda: (STOW_TYPE.format("b" * 300), multipart([(dicom_head, sample)], b"b" * 300)),
        lambda: (STOW_TYPE.format(""), multipart([(dicom_head, sample)], b"")),
        lambda: (
            'multipart/related; type="application/dicom"',
            multipart([(dicom_head, sample)], b),
        ),
        lambda: ("multipart/related; boundary=fuzzboundary", multipart([(dicom_head, sample)], b)),
        lambda: (
            'multipart/related; type="application/dicom+json"; boundary=fuzzboundary',
            multipart([(dicom_head, b"{}")], b),
        ),
        lambda: ("application/dicom", sample),
        lambda: ("", sample),
        lambda: ("\x01", b"x"),
        lambda: (STOW_TYPE.format('"unterminated'), b"x"),
        lambda: (
            STOW_TYPE.format("fuzzboundary") + "; " + "x=y; " * 2000,
            multipart([(dicom_head, sample)], b),
        ),
        lambda: (
            good,
            b"--fuzzboundary\r\n" + b"H: v\r\n" * 5000 + b"\r\n\r\nx\r\n--fuzzboundary--\r\n",
        ),
    ]
    generated = st.tuples(
        st.just(good),
        st.lists(
            st.one_of(garbage_part, st.tuples(part_heads, st.sampled_from([sample, b"", b"DICM"]))),
            max_size=4,
        ).map(lambda parts: multipart(parts, b)),
    )
    return st.one_of(
        st.sampled_from(fixed).map(lambda make: make()),
        generated,
        st.tuples(st.just(good), st.binary(max_size=300)),
    )


def resource_body(route: Route) -> st.SearchStrategy[tuple[str, bytes]]:
    """(Content-Type, body) for a FHIR write (``PUT /fhir/Patient/{id}``): hostile JSON,
    Patients with odd identifiers, deep nesting, sizes past the limit, other media."""
    json_value = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    )
    identifier = st.one_of(
        json_value,
        st.fixed_dictionaries(
            {},
            optional={
                "system": st.one_of(st.text(max_size=30), json_value),
                "value": st.one_of(st.text(max_size=30), json_value),
                "assigner": st.one_of(
                    st.fixed_dictionaries({"display": st.text(max_size=20)}), json_value
                ),
            },
        ),
    )
    patient = st.fixed_dictionaries(
        {"resourceType": st.sampled_from(["Patient", "Observation", "", "patient"])},
        optional={
            "id": st.one_of(st.text(max_size=70), json_value),
            "identifier": st.one_of(st.lists(identifier, max_size=5), json_value),
            "meta": json_value,
            "link": json_value,
        },
    ).map(lambda r: json.dumps(r).encode())
    fixed = st.sampled_from(
        [
            b"",
            b"{",
            b"\xff\xfe",
            b"[" * 100_000 + b"]" * 100_000,
            b"[" * 30_000 + b"]" * 30_000,  # within the size limit, past Python's recursion
            b'{"resourceType":"Patient","identifier":[' + b'{"value":"x"},' * 20_000 + b"{}]}",
            b'{"resourceType":"Patient","id":"\\u0000"}',
            b"null",
        ]
    )
    content_type = st.sampled_from(
        ["application/fhir+json", "application/json; charset=utf-8", "application/xml", "", "\x01"]
    )
    return st.tuples(content_type, st.one_of(patient, fixed, st.binary(max_size=200)))


# -- whole requests -----------------------------------------------------------------

WRONG_METHODS = ["PUT", "DELETE", "PATCH"]


@st.composite
def requests(draw: st.DrawFn, route: Route, context: Context) -> FuzzRequest:
    ids, sample, h11 = context.ids, context.sample, context.h11
    chain = draw(st.sampled_from(ids.chains))
    path = route.path
    for name in route.params:
        path = path.replace("{" + name + "}", draw(path_value(name, chain)), 1)
    method = route.method
    if draw(st.integers(0, 19)) == 0:
        method = draw(st.sampled_from([*WRONG_METHODS, "GET" if method == "POST" else "POST"]))
    heads = list(draw(headers(h11=h11)))
    body: bytes | None = None
    if method in ("POST", "PUT"):
        if method == "PUT":
            content_type, body = draw(resource_body(route))
        elif route.path.endswith("/_search"):
            content_type, body = draw(form_body(route))
        else:
            content_type, body = draw(stow_body(sample))
        if h11:
            content_type = content_type.replace("\x01", "")
        heads = [h for h in heads if h[0] != b"content-type"]
        heads.append((b"content-type", content_type.encode("latin-1", "replace")))
    text = draw(query(route))
    if route.path.endswith("/wado") and draw(st.booleans()):  # reach past the UID checks
        real = f"requestType=WADO&studyUID={chain.study}&seriesUID={chain.series}"
        text = "&".join(filter(None, [f"{real}&objectUID={chain.sop}", text]))
    return FuzzRequest(method, path, text, tuple(heads), body)
