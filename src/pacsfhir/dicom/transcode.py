"""Pixel data in another transfer syntax than the stored one (PS3.18 8.7.3): which
syntax a WADO-RS request gets (``instance_syntax``, ``pixel_syntax``: pure, from the
media type and ``transfer-syntax`` asked and the stored syntax), and the bytes in it,
streamed frame by frame from a ``dicom.frames.PixelDataFile`` (``frame_chunks``,
``instance_chunks``).

Decoding is pydicom's (``pydicom.pixels`` with the pylibjpeg plugins), as pydicom's own
``pixel_array`` does it: YBR colour comes out RGB, so the Photometric Interpretation of
a decoded instance is what the decoder says. Encoding is pydicom's encoders: RLE
Lossless, JPEG-LS Lossless (pyjpegls) and JPEG 2000 Lossless (pylibjpeg-openjpeg), one
fragment a frame, an empty Basic Offset Table. Only one frame of one instance is decoded
at a time, so memory is bounded by a frame (a native source: by a read chunk), never by
an instance or a study.

What is lost in a transcoded instance: elements after Pixel Data (Data Set Trailing
Padding, Digital Signatures, which a new encoding would void anyway) and the Extended
Offset Table of the source.
"""

from __future__ import annotations

import contextlib
import struct
import warnings
from collections.abc import Iterator
from functools import cache
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

from pacsfhir.dicom.frames import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM,
    PixelDataFile,
    is_native,
    media_type_of,
)
from pacsfhir.dicom.multipart import media_matches

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
ENCODED_TARGETS = (RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS)

# PS3.18 Table 8.7.3-5: the default transfer syntax of each single-frame media type.
MEDIA_DEFAULTS = {
    "image/jpeg": JPEG_LOSSLESS_SV1,
    "image/jls": JPEG_LS_LOSSLESS,
    "image/jp2": JPEG_2000_LOSSLESS,
    "image/dicom-rle": RLE_LOSSLESS,
}

# Syntaxes whose pixels may differ from the original ones (PS3.5 Annex A; for JPEG
# 2000, HTJ2K and JPEG XL "may be lossy": taken as lossy, so never decoded by default).
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.4.111",
        "1.2.840.10008.1.2.4.112",
    }
)

_PIXEL = 0x7FE00010
_PIXEL_KEYWORDS = {0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_NO_LONGER_TRUE = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (Lengths)
_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
MAX_NATIVE_LENGTH = 0xFFFFFFFE  # PS3.5 7.1.1: the largest even defined length


class TranscodeError(Exception):
    """The pixel data cannot be decoded or encoded as asked."""


# -- what can be done --------------------------------------------------------------------


def is_lossy(transfer_syntax: str) -> bool:
    return transfer_syntax in LOSSY_SYNTAXES or media_type_of(transfer_syntax).startswith("video/")


@cache
def can_decode(transfer_syntax: str) -> bool:
    """Whether frames stored in this syntax can be had uncompressed."""
    if is_native(transfer_syntax):
        return True
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except NotImplementedError:
        return False


@cache
def can_encode(transfer_syntax: str) -> bool:
    if transfer_syntax not in ENCODED_TARGETS:
        return False
    return bool(get_encoder(UID(transfer_syntax)).is_available)


def _effective(stored: str) -> str:
    """The syntax a stored frame is read in: native ones come out little endian."""
    return EXPLICIT_VR_LITTLE_ENDIAN if is_native(stored) else stored


def _convertible(stored: str, target: str) -> bool:
    if target == _effective(stored):
        return True
    if target == EXPLICIT_VR_LITTLE_ENDIAN:
        return can_decode(stored)
    return can_encode(target) and can_decode(stored)


# -- negotiation (pure) ------------------------------------------------------------------


def instance_syntax(asked: str | None, stored: str) -> str | None:
    """The syntax of an instance served as ``application/dicom`` with this
    ``transfer-syntax`` parameter (None: absent), or None when it cannot be had.
    ``*`` is the stored bytes. Absent is Explicit VR Little Endian (PS3.18 8.7.3.4)
    unless the source is lossy (then it stays as stored, as 8.7.3.4 allows) or cannot be
    decoded."""
    if asked == "*" or asked == stored:
        return stored
    if asked is None:
        if is_lossy(stored) or not can_decode(stored):
            return stored
        return EXPLICIT_VR_LITTLE_ENDIAN
    return asked if _convertible(stored, asked) else None


def pixel_syntax(wanted: str, asked: str | None, stored: str) -> tuple[str, str] | None:
    """(syntax, media type) of frames or pixel data stored in ``stored`` served as a
    part of media type ``wanted`` (may be a range) with this ``transfer-syntax``
    parameter, or None when they cannot be. Frames and pixel data with no syntax asked
    come uncompressed (application/octet-stream, Explicit VR Little Endian: PS3.18
    Table 8.7.3-4) when they can be decoded, else as stored for ``*/*``; a
    compressed media type asked without a syntax is the stored bytes when they are of
    that type, else that type's default syntax (Table 8.7.3-5) when it can be encoded."""
    source = _effective(stored)
    own = OCTET_STREAM if source == EXPLICIT_VR_LITTLE_ENDIAN else media_type_of(source)
    if asked == "*":
        if media_matches(wanted, own):
            return source, own
        return (source, OCTET_STREAM) if wanted == OCTET_STREAM else None
    if asked is None:
        if wanted in ("*/*", OCTET_STREAM):
            if can_decode(stored):
                return EXPLICIT_VR_LITTLE_ENDIAN, OCTET_STREAM
            return (source, own) if wanted == "*/*" else None
        if media_matches(wanted, own):
            return source, own
        default = MEDIA_DEFAULTS.get(wanted)
        if default is not None and _convertible(stored, default):
            return default, wanted
        return None
    if not _convertible(stored, asked):
        return None
    media = OCTET_STREAM if asked == EXPLICIT_VR_LITTLE_ENDIAN else media_type_of(asked)
    if media_matches(wanted, media):
        return asked, media
    return (asked, OCTET_STREAM) if wanted == OCTET_STREAM else None


# -- frames ------------------------------------------------------------------------------


def pixel_options(source: PixelDataFile) -> dict[str, Any]:
    """pydicom's decoding options for one frame of the source."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options: dict[str, Any] = as_pixel_options(source.header)
    options["number_of_frames"] = 1
    options["pixel_keyword"] = _PIXEL_KEYWORDS.get(source.pixel_tag or _PIXEL, "PixelData")
    options.pop("extended_offsets", None)
    return options


def decode(
    source: PixelDataFile, index: int, options: dict[str, Any] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Frame ``index`` (0-based) as pydicom decodes it (YBR as RGB), and the image
    pixel description of the result (pydicom's). ``options``: ``pixel_options`` of the
    source's header as stored (a transcoded instance's header is rewritten)."""
    options = dict(options or pixel_options(source))
    if source.encapsulated:
        src: bytes | bytearray = encapsulate([bytes(source.frame(index))], has_bot=False)
        syntax = source.transfer_syntax
    else:  # frames.py hands native frames over little endian and byte-aligned
        src = source.frame(index)
        syntax = EXPLICIT_VR_LITTLE_ENDIAN
        options["pixel_vr"] = "OB" if int(options.get("bits_allocated", 8)) <= 8 else "OW"
    options["transfer_syntax_uid"] = UID(syntax)
    options["as_rgb"] = True
    try:
        with warnings.catch_warnings():  # files are served as stored, oddities and all
            warnings.simplefilter("ignore")
            array, meta = get_decoder(UID(syntax)).as_array(src, **options)
    except NotImplementedError as exc:
        raise TranscodeError(f"no decoder for transfer syntax {syntax}") from exc
    except (RuntimeError, ValueError, AttributeError, KeyError, TypeError) as exc:
        raise TranscodeError(f"frame {index + 1} cannot be decoded: {exc}") from exc
    return array, dict(meta)


def _encode(array: np.ndarray, meta: dict[str, Any], target: str) -> bytes:
    options = {
        "rows": meta["rows"],
        "columns": meta["columns"],
        "samples_per_pixel": meta["samples_per_pixel"],
        "bits_allocated": meta["bits_allocated"],
        "bits_stored": meta["bits_stored"],
        "pixel_representation": meta["pixel_representation"],
        "photometric_interpretation": meta["photometric_interpretation"],
        "number_of_frames": 1,
    }
    if int(meta["samples_per_pixel"]) > 1:
        options["planar_configuration"] = 0
    if target == JPEG_2000_LOSSLESS:
        options["use_mct"] = False  # the pixels stay RGB, as the header says
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = get_encoder(UID(target)).encode(array, **options)
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise TranscodeError(f"cannot encode in {target}: {exc}") from exc
    return bytes(data)  # pyjpegls answers a bytearray, which a response cannot send


def frame_chunks(source: PixelDataFile, index: int, target: str) -> Iterator[bytes]:
    """Frame ``index`` in ``target`` (a syntax ``pixel_syntax`` chose): the stored
    bytes when it is the stored syntax, else decoded (and encoded again)."""
    if target == _effective(source.transfer_syntax):
        yield from source.frame_chunks(index)
        return
    array, meta = decode(source, index)
    if target == EXPLICIT_VR_LITTLE_ENDIAN:
        yield array.tobytes()
    else:
        yield _encode(array, meta, target)


# -- instances ---------------------------------------------------------------------------


def _header_bytes(source: PixelDataFile, target: str, meta: dict[str, Any] | None) -> bytes:
    """The stored header (everything before Pixel Data) written in Explicit VR Little
    Endian for ``target``, with the image pixel description of decoded pixels."""
    with warnings.catch_warnings():  # values are written as stored, oddities and all
        warnings.simplefilter("ignore")
        return _rewritten(source, target, meta)


def _rewritten(source: PixelDataFile, target: str, meta: dict[str, Any] | None) -> bytes:
    header = source.header
    for element in list(header):  # deferred values are read now, from the open file
        with contextlib.suppress(Exception):
            header[element.tag].value  # noqa: B018
    for tag in _NO_LONGER_TRUE:
        if tag in header:
            del header[tag]
    if meta is not None:
        header.PhotometricInterpretation = meta["photometric_interpretation"]
        if int(meta["samples_per_pixel"]) > 1:
            header.PlanarConfiguration = 0
    header.file_meta.TransferSyntaxUID = UID(target)
    out = BytesIO()
    try:
        pydicom.dcmwrite(
            out, header, implicit_vr=False, little_endian=True, enforce_file_format=True
        )
    except (TypeError, ValueError, OverflowError, struct.error) as exc:
        raise TranscodeError(f"the header cannot be written in {target}: {exc}") from exc
    return out.getvalue()


def _element_head(tag: int, vr: str, length: int) -> bytes:
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), 0, length)


def _native_vr(source: PixelDataFile) -> str:
    if source.pixel_tag == 0x7FE00008:
        return "OF"
    if source.pixel_tag == 0x7FE00009:
        return "OD"
    bits = int(source.header.get("BitsAllocated", 8) or 8)
    return "OB" if bits <= 8 else "OW"


def _item(data: bytes) -> Iterator[bytes]:
    padded = len(data) + len(data) % 2
    yield _ITEM + struct.pack("<I", padded)
    yield data
    if len(data) % 2:
        yield b"\0"


def instance_chunks(source: PixelDataFile, target: str) -> Iterator[bytes]:
    """The whole instance as a Part 10 file in ``target`` (``instance_syntax``'s
    choice, not the stored one), a frame at a time; ``source`` is closed at the end."""
    with source:
        if not source.has_pixel_data:
            yield _header_bytes(source, target, None)
            return
        count = source.frame_count()
        options = pixel_options(source)
        if target == EXPLICIT_VR_LITTLE_ENDIAN and not source.encapsulated:
            assert source.length is not None
            yield _header_bytes(source, target, None)
            yield _element_head(source.pixel_tag or _PIXEL, _native_vr(source), source.length)
            yield from source.value_chunks()
            return
        first, meta = decode(source, 0, options)
        if target == EXPLICIT_VR_LITTLE_ENDIAN:
            length = first.nbytes * count
            if length > MAX_NATIVE_LENGTH:
                raise TranscodeError("the decoded pixel data is too long for a defined length")
            yield _header_bytes(source, target, meta)
            vr = "OB" if int(meta["bits_allocated"]) <= 8 else "OW"
            yield _element_head(_PIXEL, vr, length + length % 2)
            yield first.tobytes()
            del first
            for index in range(1, count):
                yield decode(source, index, options)[0].tobytes()
            if length % 2:
                yield b"\0"
            return
        encoded = _encode(first, meta, target)  # before any byte: a failure is a 406
        del first
        yield _header_bytes(source, target, meta)
        yield _element_head(_PIXEL, "OB", 0xFFFFFFFF) + _ITEM + struct.pack("<I", 0)
        yield from _item(encoded)
        del encoded
        for index in range(1, count):
            yield from _item(_encode(*decode(source, index, options), target))
        yield _SEQUENCE_END
