"""The Image Pixel attributes a header lacks, filled in as PS3.3 C.7.6.3 and PS3.5 make
the only or the usual choice (``dicom.pixel_defaults``), as a table."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from pacsfhir.dicom.pixel_defaults import FrameFacts, completed, missing

EXPLICIT = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
J2K = "1.2.840.10008.1.2.4.90"
FULL = {
    "Rows": 4,
    "Columns": 5,
    "SamplesPerPixel": 1,
    "PhotometricInterpretation": "MONOCHROME1",
    "BitsAllocated": 16,
    "BitsStored": 10,
    "HighBit": 9,
    "PixelRepresentation": 1,
}
KEYS = ("SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored")
KEYS += ("HighBit", "PixelRepresentation", "PlanarConfiguration")


def header(**attributes: Any) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.set_original_encoding(False, True)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def filled(ds: Dataset) -> dict[str, Any]:
    return {k: ds.get(k) for k in KEYS if k in ds}


def test_a_complete_header_is_kept_as_is() -> None:
    ds = header(**FULL)
    assert missing(ds) == []
    assert completed(ds, FrameFacts(EXPLICIT)) is ds


@pytest.mark.parametrize(
    ("given", "facts", "expected"),
    [
        (  # nothing but the size, native 8-bit grey
            {"Rows": 4, "Columns": 5},
            FrameFacts(EXPLICIT, native_bytes=20),
            {
                "SamplesPerPixel": 1,
                "PhotometricInterpretation": "MONOCHROME2",
                "BitsAllocated": 8,
                "BitsStored": 8,
                "HighBit": 7,
                "PixelRepresentation": 0,
            },
        ),
        (  # native 16-bit grey, from the value's length
            {"Rows": 4, "Columns": 5},
            FrameFacts(EXPLICIT, native_bytes=40),
            {"BitsAllocated": 16, "SamplesPerPixel": 1, "BitsStored": 16, "HighBit": 15},
        ),
        (  # native 8-bit colour, from the value's length
            {"Rows": 4, "Columns": 5},
            FrameFacts(EXPLICIT, native_bytes=60),
            {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0},
        ),
        (  # two frames of 8-bit grey are not colour
            {"Rows": 4, "Columns": 5, "NumberOfFrames": 2},
            FrameFacts(EXPLICIT, native_bytes=40),
            {"SamplesPerPixel": 1, "BitsAllocated": 8},
        ),
        (  # the interpretation says the samples
            {"Rows": 4, "Columns": 5, "PhotometricInterpretation": "YBR_FULL"},
            FrameFacts(EXPLICIT),
            {"SamplesPerPixel": 3, "PlanarConfiguration": 0},
        ),
        (  # the codestream says components and precision
            {"Rows": 4, "Columns": 5},
            FrameFacts(JPEG_BASELINE, components=3, precision=8),
            {
                "SamplesPerPixel": 3,
                "PhotometricInterpretation": "YBR_FULL_422",
                "BitsAllocated": 8,
            },
        ),
        (  # 12-bit JPEG Extended
            {"Rows": 4, "Columns": 5},
            FrameFacts("1.2.840.10008.1.2.4.51", components=1, precision=12),
            {"BitsAllocated": 16, "BitsStored": 12, "HighBit": 11},
        ),
        (  # a signed JPEG 2000 codestream
            {"Rows": 4, "Columns": 5, "BitsAllocated": 16, "BitsStored": 16},
            FrameFacts(J2K, components=1, precision=16, signed=True),
            {"PixelRepresentation": 1, "HighBit": 15},
        ),
        (  # only Pixel Representation missing: the rest stays as it was
            {k: v for k, v in FULL.items() if k != "PixelRepresentation"},
            FrameFacts(EXPLICIT),
            {
                **{k: v for k, v in FULL.items() if k not in ("Rows", "Columns")},
                "PixelRepresentation": 0,
            },
        ),
        (  # Bits Stored without Bits Allocated
            {"Rows": 4, "Columns": 5, "BitsStored": 12},
            FrameFacts(EXPLICIT),
            {"BitsAllocated": 16, "BitsStored": 12, "HighBit": 11},
        ),
        (  # empty values count as missing
            {"Rows": 4, "Columns": 5, "PixelRepresentation": None, "BitsAllocated": 8},
            FrameFacts(EXPLICIT, native_bytes=20),
            {"PixelRepresentation": 0},
        ),
    ],
)
def test_completed(given: dict[str, Any], facts: FrameFacts, expected: dict[str, Any]) -> None:
    ds = header(**given)
    result = completed(ds, facts)
    assert missing(result) == []
    assert {k: v for k, v in filled(result).items() if k in expected} == expected
    assert missing(ds)  # the stored header is left as it was


def test_planar_configuration_is_not_missing_in_grey() -> None:
    assert missing(header(**FULL)) == []
    colour = header(**{**FULL, "SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"})
    assert missing(colour) == ["PlanarConfiguration"]
