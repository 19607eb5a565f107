"""The sequential scan header repair (``dicom.jpeg_scan``), on hand-made codestream
heads: only a sequential DCT frame's first scan header changes, only Ss, Se and Ah/Al."""

from __future__ import annotations

import pytest

from pacsfhir.dicom.jpeg_scan import repair_sequential_scan

SOI = b"\xff\xd8"
DQT = b"\xff\xdb\x00\x04\x00\x01"  # a (short) segment the repair steps over
ENTROPY = b"\x12\x34\xff\x00\x56\xff\xd9"


def frame(marker: int, components: int = 1) -> bytes:
    body = bytes([12, 0, 4, 0, 5, components]) + bytes([1, 0x11, 0]) * components
    return bytes([0xFF, marker]) + (2 + len(body)).to_bytes(2, "big") + body


def scan(ss: int, se: int, ahal: int, components: int = 1) -> bytes:
    body = bytes([components]) + bytes([1, 0]) * components + bytes([ss, se, ahal])
    return b"\xff\xda" + (2 + len(body)).to_bytes(2, "big") + body


@pytest.mark.parametrize("marker", [0xC0, 0xC1])
@pytest.mark.parametrize("components", [1, 3])
def test_a_sequential_scan_header_gets_0_63_0(marker: int, components: int) -> None:
    head = SOI + DQT + frame(marker, components) + b"\xff\xff"  # a fill byte too
    stream = head + scan(0, 0, 0, components) + ENTROPY
    assert repair_sequential_scan(stream) == head + scan(0, 63, 0, components) + ENTROPY


@pytest.mark.parametrize(
    "stream",
    [
        SOI + frame(0xC1) + scan(0, 63, 0) + ENTROPY,  # already right
        SOI + frame(0xC2) + scan(0, 0, 0) + ENTROPY,  # progressive: Ss/Se mean something
        SOI + frame(0xC3) + scan(1, 0, 0) + ENTROPY,  # lossless: Ss is the predictor
        b"\x00\x01" + frame(0xC1) + scan(0, 0, 0),  # not JPEG
        SOI + frame(0xC1) + scan(0, 0, 0)[:6],  # cut short
        SOI + b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00",  # a scan before any frame
        SOI + frame(0xC1) + b"\x00junk",  # no marker where one belongs
        b"",
    ],
)
def test_anything_else_is_unchanged(stream: bytes) -> None:
    assert repair_sequential_scan(stream) == stream
