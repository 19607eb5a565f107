"""The Image Pixel attributes a stored file should have had (PS3.3 C.7.6.3, all Type 1),
filled in where a writer left them out, so such a file renders instead of failing in
the decoder. The values are the ones the standard makes the only or the usual choice:

- Samples per Pixel: 3 for an RGB or YBR Photometric Interpretation, else what the frame
  holds (a codestream's component count, or native bytes per pixel), else 1;
- Photometric Interpretation: MONOCHROME2 for one sample (PS3.3 C.7.6.3.1.2: minimum is
  black, the common case), for three RGB, or YBR_FULL_422 in lossy JPEG (PS3.5 8.2.1);
- Bits Allocated: the codestream's precision rounded up to 8, 16 or 32 bits, else what the
  native value's length gives per sample, else 8 (16 past 8 Bits Stored);
- Bits Stored: Bits Allocated; High Bit: Bits Stored - 1 (PS3.5 8.1.1);
- Pixel Representation: a JPEG 2000 codestream's own signedness (PS3.5 A.4.4 has them
  agree), else 0, unsigned;
- Planar Configuration (three samples): 0, colour-by-pixel.

``completed`` is pure: a header and what the frame says of itself in, a copy out.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
LOSSY_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
PIXEL_KEYWORDS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
)


@dataclass(frozen=True)
class FrameFacts:
    """What a stored frame says of itself, whatever the header says."""

    transfer_syntax: str
    components: int | None = None  # a codestream's own count
    precision: int | None = None  # a codestream's bits per sample
    signed: bool | None = None  # a JPEG 2000 codestream's own signedness
    native_bytes: int | None = None  # a native Pixel Data value's length, all frames


def missing(header: Dataset) -> list[str]:
    """The Image Pixel keywords ``header`` lacks or holds empty (Planar Configuration
    only where there may be more than one sample)."""
    keys = [k for k in PIXEL_KEYWORDS[:-1] if header.get(k) in (None, "")]
    planar = header.get("PlanarConfiguration") in (None, "")
    if planar and _number(header, "SamplesPerPixel") != 1:
        keys.append("PlanarConfiguration")
    return keys


def _number(header: Dataset, keyword: str) -> int | None:
    value = header.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _samples(header: Dataset, facts: FrameFacts, bits: int | None) -> int:
    interpretation = str(header.get("PhotometricInterpretation") or "").strip()
    if interpretation:
        return 3 if interpretation in COLOUR else 1
    if facts.components:
        return facts.components
    rows, columns = _number(header, "Rows") or 0, _number(header, "Columns") or 0
    frames = _number(header, "NumberOfFrames") or 1
    if facts.native_bytes and rows and columns:
        per_sample = (bits or 8) // 8 or 1
        if facts.native_bytes >= rows * columns * frames * 3 * per_sample:
            return 3
    return 1


def _bits_allocated(header: Dataset, facts: FrameFacts) -> int:
    if facts.precision:
        return 8 if facts.precision <= 8 else 16 if facts.precision <= 16 else 32
    stored = _number(header, "BitsStored")
    if stored:
        return 8 if stored <= 8 else 16
    rows, columns = _number(header, "Rows") or 0, _number(header, "Columns") or 0
    frames = _number(header, "NumberOfFrames") or 1
    samples = _number(header, "SamplesPerPixel") or 1
    if facts.native_bytes and rows and columns:
        per_sample = facts.native_bytes // (rows * columns * frames * samples)
        if per_sample in (1, 2, 4):
            return per_sample * 8
    return 8


def completed(header: Dataset, facts: FrameFacts) -> Dataset:
    """``header`` when it lacks nothing, else a copy with what it lacks filled in."""
    if not missing(header):
        return header
    filled = Dataset()  # its own elements: Dataset(header) and copy.copy share them
    filled.update(header)
    filled.file_meta = header.file_meta
    filled.set_original_encoding(*header.original_encoding)
    if _number(filled, "BitsAllocated") is None:
        filled.BitsAllocated = _bits_allocated(filled, facts)
    bits = int(filled.BitsAllocated)
    if _number(filled, "SamplesPerPixel") is None:
        filled.SamplesPerPixel = _samples(filled, facts, bits)
    samples = int(filled.SamplesPerPixel)
    if not str(filled.get("PhotometricInterpretation") or "").strip():
        if samples == 1:
            filled.PhotometricInterpretation = "MONOCHROME2"
        else:
            lossy = facts.transfer_syntax in LOSSY_JPEG
            filled.PhotometricInterpretation = "YBR_FULL_422" if lossy else "RGB"
    if _number(filled, "BitsStored") is None:
        filled.BitsStored = min(bits, facts.precision or bits)
    if _number(filled, "HighBit") is None:
        filled.HighBit = int(filled.BitsStored) - 1
    if _number(filled, "PixelRepresentation") is None:
        filled.PixelRepresentation = 1 if facts.signed else 0
    if samples > 1 and _number(filled, "PlanarConfiguration") is None:
        filled.PlanarConfiguration = 0
    return filled
