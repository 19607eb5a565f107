"""Frames and bulk data of a stored instance, read from its file without loading it.

``PixelDataFile`` reads the header (everything before Pixel Data), notes where the
Pixel Data value starts, and then reads only what is asked for: a native frame is a
fixed-size slice of the value; an encapsulated frame is a list of fragment spans found
from the Extended or Basic Offset Table, else by walking the fragment item headers
(seeking over their data), else by looking for each fragment's JPEG end-of-image
marker. Big-endian native values are byte-swapped to little endian on the way out.
Deflated files (rare, small) are the exception: they are inflated in memory.
"""

from __future__ import annotations

import contextlib
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.tag import Tag

CHUNK = 1 << 18  # a multiple of every word size
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, DEFLATED}
)
OCTET_STREAM = "application/octet-stream"
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_WORD = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}

# PS3.18 Table 8.7.3-5: the media type of each encapsulated transfer syntax's frames.
_COMPRESSED_MEDIA: dict[str, str] = {
    "1.2.840.10008.1.2.1.98": OCTET_STREAM,  # encapsulated uncompressed
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/mp4",
    "1.2.840.10008.1.2.4.108": "video/mp4",
}


# Attributes read to find and size frames, converted (with their warnings) on opening.
_FRAME_KEYWORDS = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "NumberOfFrames",
    "PhotometricInterpretation",
)


class Missing(Exception):
    """The instance has no (or no readable) Pixel Data, or not that frame or element."""


# -- frame lists -------------------------------------------------------------------------

MAX_FRAME_NUMBER = 2**31 - 1  # Number of Frames is an IS: no instance has more frames
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: not "²" (isdigit) nor "٣" (int)


def parse_frame_list(text: str) -> tuple[int, ...]:
    """The frame numbers of a PS3.18 frame list (``{frames}`` in ``.../frames/{frames}``):
    "a comma separated list of one or more non duplicate frame numbers", in any order;
    spaces around a number are allowed. Raises ValueError, with a reason, for an empty
    item, anything but ASCII digits, 0, a number past ``MAX_FRAME_NUMBER``, or a number
    listed twice (serving a frame twice in one response serves no purpose)."""
    numbers: dict[int, None] = {}  # ordered, and a set
    for item in text.split(","):
        item = item.strip(" ")
        if not _DIGITS.fullmatch(item):
            shown = ascii(item[:24]) if item else "an empty item"
            raise ValueError(f"a frame list is comma-separated frame numbers, not {shown}")
        number = int(item) if len(item) <= 12 else MAX_FRAME_NUMBER + 1
        if not 1 <= number <= MAX_FRAME_NUMBER:
            raise ValueError(f"frame numbers are 1 to {MAX_FRAME_NUMBER}, not {item[:24]}")
        if number in numbers:
            raise ValueError(f"frame {number} is listed twice; list each frame once")
        numbers[number] = None
    return tuple(numbers)


def is_native(transfer_syntax: str) -> bool:
    return transfer_syntax in NATIVE_SYNTAXES


def media_type_of(transfer_syntax: str) -> str:
    """The media type frames of this transfer syntax are served as."""
    return _COMPRESSED_MEDIA.get(transfer_syntax, OCTET_STREAM)


def is_video(transfer_syntax: str) -> bool:
    return media_type_of(transfer_syntax).startswith("video/")


@dataclass(frozen=True)
class Span:
    offset: int
    length: int


def _swapped(data: bytes, word: int) -> bytes:
    if word <= 1 or not data:
        return data
    return np.frombuffer(data, dtype=f">u{word}").astype(f"<u{word}").tobytes()


def read_span(
    fp: BinaryIO, start: int, size: int, word: int = 1, base: int | None = None
) -> Iterator[bytes]:
    """``size`` bytes from ``start``, in chunks; with ``word`` > 1 the value starting at
    ``base`` is big endian in words of that size and comes out little endian (reads
    stay aligned on its words)."""
    aligned = start - (start - (start if base is None else base)) % word
    skip = start - aligned
    end = start + size
    position = aligned
    fp.seek(position)
    while position < end:
        want = min(CHUNK, end - position)
        if word > 1 and want % word:
            want += word - want % word
        data = fp.read(want)
        if not data:
            raise Missing("the file ends inside the requested data")
        position += len(data)
        if word > 1:
            data = _swapped(data[: len(data) - len(data) % word], word)
        if skip:
            data, skip = data[skip:], 0
        if position > end:
            data = data[: len(data) - (position - end)]
        yield data


class PixelDataFile:
    """An open stored instance, positioned by its header; use as a context manager."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fp: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        try:
            with warnings.catch_warnings():  # files are served as stored, oddities and all
                warnings.simplefilter("ignore")
                self.header = pydicom.dcmread(
                    self._fp, stop_before_pixels=True, force=True, defer_size="1 MB"
                )
                for keyword in _FRAME_KEYWORDS:  # converted once, quietly, odd or not
                    with contextlib.suppress(ValueError, TypeError):
                        self.header.get(keyword)
            self.transfer_syntax = str(
                self.header.file_meta.get("TransferSyntaxUID", IMPLICIT_VR_LITTLE_ENDIAN)
            )
            self._locate()
        except Exception:
            self._fp.close()
            raise
        self._frames: list[list[Span]] | None = None

    def __enter__(self) -> PixelDataFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._fp.close()

    # -- where things are --------------------------------------------------------------

    def _locate(self) -> None:
        """Find the pixel data element after the header: its tag, VR, value offset and
        length (None when undefined, i.e. encapsulated)."""
        self.pixel_tag: int | None = None
        self.vr = ""
        self.offset = 0
        self.length: int | None = 0
        implicit, little = self.header.original_encoding
        self._little = bool(little)
        if self.transfer_syntax == DEFLATED:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                full = pydicom.dcmread(self.path, force=True)
            for tag in sorted(PIXEL_DATA_TAGS):
                if tag in full:
                    element = full[tag]
                    self._fp.close()
                    self._fp = BytesIO(bytes(element.value))
                    self.pixel_tag, self.vr, self.length = tag, element.VR, len(element.value)
                    return
            return
        start = self._fp.tell()
        head = self._fp.read(12)
        if len(head) < 8:
            return
        endian = "<" if little else ">"
        group, element = struct.unpack(endian + "HH", head[:4])
        tag = group << 16 | element
        if tag not in PIXEL_DATA_TAGS:
            return
        if implicit or not head[4:6].isalpha() or not head[4:6].isupper():
            # some writers put an implicit-VR Pixel Data element in an explicit dataset
            (length,) = struct.unpack(endian + "I", head[4:8])
            self.vr = "OB" if length == 0xFFFFFFFF else str(dictionary_VR(tag)).split(" ")[0]
            self.offset = start + 8
        else:
            (length,) = struct.unpack(endian + "I", head[8:12])
            self.vr = head[4:6].decode("ascii", "replace")
            self.offset = start + 12
        self.pixel_tag = tag
        self.length = None if length == 0xFFFFFFFF else length

    @property
    def has_pixel_data(self) -> bool:
        return self.pixel_tag is not None

    @property
    def encapsulated(self) -> bool:
        return self.has_pixel_data and self.length is None

    @property
    def number_of_frames(self) -> int:
        try:
            return max(1, int(self.header.get("NumberOfFrames") or 1))
        except (TypeError, ValueError):
            return 1

    @property
    def word(self) -> int:
        """Byte-swap unit for a big-endian native value (1: none)."""
        if self._little or self.encapsulated:
            return 1
        if self.vr == "OW" and self._number("BitsAllocated", 16) > 16:
            return self._number("BitsAllocated", 16) // 8
        return _WORD.get(self.vr, 1)

    # -- native ------------------------------------------------------------------------

    def _number(self, keyword: str, default: int) -> int:
        try:
            return int(self.header.get(keyword, default))
        except (TypeError, ValueError) as exc:
            raise Missing(f"{keyword} is not a number") from exc

    def frame_shape(self) -> tuple[int, int, int]:
        """(rows, columns, samples per pixel) of a frame, as the header says."""
        return (
            self._number("Rows", 0),
            self._number("Columns", 0),
            self._number("SamplesPerPixel", 1),
        )

    def _frame_bits(self) -> int:
        h = self.header
        rows, columns, samples = self.frame_shape()
        bits = self._number("BitsAllocated", 8)
        if self.pixel_tag == 0x7FE00008:
            bits = 32
        elif self.pixel_tag == 0x7FE00009:
            bits = 64
        if str(h.get("PhotometricInterpretation", "")) == "YBR_FULL_422" and samples == 3:
            return rows * columns * 2 * bits
        return rows * columns * samples * bits

    def _native_frame(self, index: int) -> Iterator[bytes]:
        bits = self._frame_bits()
        assert self.length is not None
        if bits <= 0 or (index + 1) * bits > self.length * 8:
            raise Missing(f"no frame {index + 1} in the native Pixel Data")
        if bits % 8 == 0:
            yield from read_span(
                self._fp, self.offset + index * bits // 8, bits // 8, self.word, self.offset
            )
            return
        # bit-packed (Bits Allocated 1) frames need not start on a byte: re-align
        first, last = index * bits, (index + 1) * bits
        raw = b"".join(read_span(self._fp, self.offset + first // 8, (last + 7) // 8 - first // 8))
        unpacked = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
        shift = first % 8
        yield np.packbits(unpacked[shift : shift + bits], bitorder="little").tobytes()

    def value_chunks(self) -> Iterator[bytes]:
        """The whole native pixel data value, little endian, in chunks."""
        assert self.length is not None
        yield from read_span(self._fp, self.offset, self.length, self.word)

    # -- encapsulated ------------------------------------------------------------------

    def fragments(self) -> list[Span]:
        """Every fragment of the encapsulated value, in order (the offset table aside)."""
        self._fp.seek(self.offset)
        parse_basic_offsets(self._fp)
        count, offsets = parse_fragments(self._fp)
        spans = []
        for i, item in enumerate(offsets):
            if i + 1 < count:
                spans.append(Span(item + 8, offsets[i + 1] - item - 8))
            else:
                self._fp.seek(item + 4)
                (size,) = struct.unpack("<I", self._fp.read(4))
                spans.append(Span(item + 8, size))
        return spans

    def _tail(self, span: Span) -> bytes:
        self._fp.seek(span.offset + max(0, span.length - 10))
        return self._fp.read(min(10, span.length))

    def _frame_spans(self) -> list[list[Span]]:
        if self._frames is None:
            try:
                self._frames = self._find_frames()
            except (ValueError, struct.error, OverflowError) as exc:  # pydicom's parsers
                raise Missing(f"the encapsulated Pixel Data cannot be read: {exc}") from exc
        return self._frames

    def _find_frames(self) -> list[list[Span]]:
        self._fp.seek(self.offset)
        basic = parse_basic_offsets(self._fp)
        fragments = self.fragments()
        first = fragments[0].offset - 8 if fragments else 0
        frames: list[list[Span]] = []
        offsets = self.header.get("ExtendedOffsetTable")
        lengths = self.header.get("ExtendedOffsetTableLengths")
        count = self.number_of_frames
        if offsets and lengths:
            starts = struct.unpack(f"<{len(offsets) // 8}Q", bytes(offsets))
            sizes = struct.unpack(f"<{len(lengths) // 8}Q", bytes(lengths))
            frames = [[Span(first + s + 8, n)] for s, n in zip(starts, sizes, strict=False)]
        elif basic:
            bounds = [*basic, 2**63]
            frames = [
                [f for f in fragments if bounds[i] <= f.offset - 8 - first < bounds[i + 1]]
                for i in range(len(basic))
            ]
        elif count == 1:
            frames = [fragments]
        elif len(fragments) == count:
            frames = [[f] for f in fragments]
        else:  # several fragments a frame and no table: a frame ends with FFD9 (EOI/EOC)
            current: list[Span] = []
            for fragment in fragments:
                current.append(fragment)
                if b"\xff\xd9" in self._tail(fragment):
                    frames.append(current)
                    current = []
            if current:
                frames.append(current)
        return frames

    def frame_count(self) -> int:
        """Frames actually present (encapsulated: as found in the data)."""
        if not self.has_pixel_data:
            return 0
        if self.encapsulated:
            return len(self._frame_spans())
        bits = self._frame_bits()
        assert self.length is not None
        return min(self.number_of_frames, self.length * 8 // bits) if bits else 0

    # -- frames ------------------------------------------------------------------------

    def frame_chunks(self, index: int) -> Iterator[bytes]:
        """Frame ``index`` (0-based) as stored (encapsulated: the joined fragments),
        native values little endian, in chunks."""
        if not self.has_pixel_data:
            raise Missing("the instance has no Pixel Data")
        if not self.encapsulated:
            return self._native_frame(index)
        frames = self._frame_spans()
        if not 0 <= index < len(frames):
            raise Missing(f"no frame {index + 1} in the encapsulated Pixel Data")
        return (chunk for span in frames[index] for chunk in read_span(self._fp, *_pair(span)))

    def frame(self, index: int) -> bytearray:
        """Frame ``index`` whole, read into one buffer of its length (joining the chunks
        would hold the frame twice)."""
        chunks = self.frame_chunks(index)
        data = bytearray(self.frame_length(index))
        view = memoryview(data)
        position = 0
        for chunk in chunks:
            if position + len(chunk) > len(data):
                raise Missing(f"frame {index + 1} is longer than its offsets say")
            view[position : position + len(chunk)] = chunk
            position += len(chunk)
        view.release()
        if position != len(data):
            raise Missing(f"frame {index + 1} is shorter than its offsets say")
        return data

    def frame_length(self, index: int) -> int:
        if not self.encapsulated:
            return (self._frame_bits() + 7) // 8
        return sum(span.length for span in self._frame_spans()[index])

    def all_fragments(self) -> Iterator[bytes]:
        """The encapsulated value's fragments joined (a video's stream)."""
        for span in self.fragments():
            yield from read_span(self._fp, *_pair(span))

    # -- other bulk data ---------------------------------------------------------------

    def bulk_element(self, tag: int) -> tuple[str, Iterator[bytes], int]:
        """A top-level bulk data element other than pixel data: (VR, chunks, length)."""
        element = self.header.get_item(Tag(tag))
        if element is None:
            raise Missing(f"no element {tag:08X}")
        vr = element.VR or str(
            dictionary_VR(tag) if pydicom.datadict.dictionary_has_tag(tag) else "UN"
        )
        vr = vr.split(" ")[0]
        if vr not in BULK_VRS:
            raise Missing(f"{tag:08X} is not a bulk data element ({vr})")
        word = 1 if self._little else _WORD.get(vr, 1)
        if isinstance(element, RawDataElement) and element.value is None:  # deferred
            size = int(element.length)
            return vr, read_span(self._fp, int(element.value_tell), size, word, None), size
        data = _swapped(bytes(element.value or b""), word)
        return vr, iter([data]), len(data)


def _pair(span: Span) -> tuple[int, int]:
    return span.offset, span.length


def decoding_options(header: Dataset, transfer_syntax: str) -> dict[str, object]:
    """pydicom decoder options for one frame of this header."""
    from pydicom.pixels.utils import as_pixel_options

    options: dict[str, object] = as_pixel_options(header)
    options["transfer_syntax_uid"] = pydicom.uid.UID(transfer_syntax)
    return options
