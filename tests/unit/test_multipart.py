"""multipart/related bodies and Accept parsing (dicom.multipart), checked with the
standard library's MIME parser and with dicomweb-client's own multipart decoder; the
boundary of a received body (RFC 2046) and the declared length against the body limit."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator

import pytest
import requests
from dicomweb_client import DICOMwebClient

from pacsfhir.dicom.multipart import (
    MediaRange,
    Part,
    content_type,
    length,
    media_matches,
    parse_accept,
    stream,
)
from pacsfhir.dicom.upload import MIB, UploadLimits, related_boundary
from pacsfhir.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

BODIES = [b"", b"\r\n--not-a-boundary\r\n", bytes(range(256)) * 40, b"x" * 3]


def chunked(data: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def parts(with_length: bool = True) -> list[Part]:
    return [
        Part(
            f"application/dicom; transfer-syntax=1.2.840.10008.1.2.{n}",
            chunked(body),
            len(body) if with_length else None,
            f"http://x/studies/1/series/2/instances/{n}",
        )
        for n, body in enumerate(BODIES)
    ]


def test_multipart_body_parses_with_the_stdlib_mime_parser() -> None:
    boundary = "b0undary"
    body = b"".join(stream(parts(), boundary))
    head = f"Content-Type: {content_type('application/dicom', boundary)}\r\n\r\n".encode()
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    assert message.is_multipart()
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    got = list(message.iter_parts())
    assert len(got) == len(BODIES)
    for n, (part, expected) in enumerate(zip(got, BODIES, strict=True)):
        assert part.get_content_type() == "application/dicom"
        assert part.get_param("transfer-syntax") == f"1.2.840.10008.1.2.{n}"
        assert part["Content-Location"].endswith(f"/instances/{n}")
        assert part.get_payload(decode=True) == expected


def test_length_is_the_streamed_size_and_unknown_without_part_sizes() -> None:
    boundary = "abc"
    assert length(parts(), boundary) == len(b"".join(stream(parts(), boundary)))
    assert length(parts(with_length=False), boundary) is None
    assert length([], boundary) == len(b"".join(stream([], boundary)))


def test_multipart_body_parses_with_dicomweb_clients_decoder() -> None:
    boundary = "0123456789abcdef"
    body = b"".join(stream(parts(), boundary))
    response = requests.Response()
    response.status_code = 200
    response.headers["content-type"] = content_type("application/dicom", boundary)
    response._content = body
    client = DICOMwebClient("http://127.0.0.1:9/dicom-web")
    decoded = list(client._decode_multipart_message(response, stream=False))
    assert [bytes(d) for d in decoded] == BODIES


def test_stream_is_lazy_one_part_at_a_time() -> None:
    produced: list[int] = []

    def lazy() -> Iterator[Part]:
        for n in range(3):
            produced.append(n)
            yield Part("application/octet-stream", [b"abc"], 3)

    chunks = stream(lazy(), "b", batch=1)
    next(chunks)
    assert produced == [0]


def test_small_pieces_are_gathered_large_ones_pass_through() -> None:
    small = [Part("application/octet-stream", [b"x" * 10], 10) for _ in range(100)]
    big = Part("application/octet-stream", [b"y" * 5000], 5000)
    one_by_one = b"".join(stream([*small, big, *small], "b", batch=1))
    chunks = list(stream([*small, big, *small], "b", batch=1000))
    assert b"".join(chunks) == one_by_one
    assert b"y" * 5000 in chunks
    assert len(chunks) < 20


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", [MediaRange("*/*")]),
        ("*", [MediaRange("*/*")]),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            [
                MediaRange(
                    "multipart/related", {"type": "application/dicom", "transfer-syntax": "*"}
                )
            ],
        ),
        (
            'multipart/related; type="application/octet-stream"; q=0.5, '
            "multipart/related; type=image/jpeg",
            [
                MediaRange("multipart/related", {"type": "image/jpeg"}),
                MediaRange("multipart/related", {"type": "application/octet-stream"}, 0.5),
            ],
        ),
        (
            'Multipart/Related; TYPE="a,b;c"; q=0, image/png',
            [MediaRange("image/png")],
        ),
        ("image/jpeg;q=bad", [MediaRange("image/jpeg")]),
    ],
)
def test_parse_accept(header: str, expected: list[MediaRange]) -> None:
    assert parse_accept(header) == expected


def test_media_range_properties() -> None:
    (r,) = parse_accept('multipart/related; type="Image/JPEG"; transfer-syntax=1.2.3')
    assert r.is_multipart
    assert r.part_type == "image/jpeg"
    assert r.transfer_syntax == "1.2.3"


@pytest.mark.parametrize(
    ("pattern", "media", "matches"),
    [
        ("*/*", "image/jpeg", True),
        ("image/*", "image/jpeg", True),
        ("image/*", "application/dicom", False),
        ("image/jpeg", "image/jpeg", True),
        ("image/png", "image/jpeg", False),
    ],
)
def test_media_matches(pattern: str, media: str, matches: bool) -> None:
    assert media_matches(pattern, media) is matches


RELATED = 'multipart/related; type="application/dicom"; boundary='


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (RELATED + "abc", b"abc"),
        (RELATED + '"with space:and=more?"', b"with space:and=more?"),
        (RELATED + "b" * 70, b"b" * 70),
        ("multipart/related; boundary=x", b"x"),  # type defaults to the wanted one
        (RELATED + "b" * 71, BadRequest),
        (RELATED + '"trailing "', BadRequest),
        (RELATED + '"a@b"', BadRequest),
        (RELATED + '""', BadRequest),
        ('multipart/related; type="application/dicom"', BadRequest),
        ("application/dicom", UnsupportedMediaType),
        ("", UnsupportedMediaType),
        ('multipart/related; type="image/jpeg"; boundary=x', UnsupportedMediaType),
        ('multipart/related; type="\xff"; boundary=x', UnsupportedMediaType),
    ],
)
def test_related_boundary(content_type: str, expected: bytes | type[Exception]) -> None:
    if isinstance(expected, bytes):
        assert related_boundary(content_type, "application/dicom") == expected
    else:
        with pytest.raises(expected):
            related_boundary(content_type, "application/dicom")


@pytest.mark.parametrize(
    ("content_length", "refused"),
    [
        (None, False),
        ("", False),
        (str(MIB), False),
        (str(MIB + 1), True),
        (" 99999999999999999999 ", True),
        ("²", False),  # not a length: the HTTP server refuses it, not this check
        ("-5", False),
    ],
)
def test_declared_length_against_the_body_limit(content_length: str | None, refused: bool) -> None:
    limits = UploadLimits(body=MIB, part=MIB)
    if refused:
        with pytest.raises(PayloadTooLarge, match="max_upload_mb"):
            limits.check_declared(content_length)
    else:
        limits.check_declared(content_length)
