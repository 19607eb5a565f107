"""Mutated DICOM files for the fuzz suite: bit flips, truncation at every element
boundary, wrong VRs, odd lengths, broken character sets, huge values, deep sequences
and broken preambles. Each mutation starts from a variant of a real file with new UIDs
(so stored mutants do not replace each other) and is deterministic for a given
``random.Random``.

Element positions come from pydicom's own element reader (``data_element_generator``)."""

from __future__ import annotations

import io
import random
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from tests.support.dicom_factory import CT_SMALL, write_variant

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SMALL = TEST_FILES / "SC_rgb_small_odd.dcm"  # 1.4 KB, 41 elements, explicit VR LE
MULTIFRAME = TEST_FILES / "SC_rgb_rle_2frame.dcm"  # 2 frames, RLE
PREAMBLE = 128
# Explicit VR elements with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
WRONG_VRS = [b"SQ", b"UN", b"OB", b"US", b"FD", b"AT", b"XX", b"\x00\x00", b"UT", b"DA", b"PN"]
CHARSETS = ["ISO_IR 999", "ISO 2022 IR 87", "\\ISO 2022 IR 149", "GB18030", "ISO_IR 192", ""]
UNDECODABLE = [
    b"\xff\xfe\xfd\x80",
    b"\x1b$B\xff\xff",
    b"\xc3\x28\xa0\xa1",
    b"\x00\x00\x00\x00",
    b"AB\x00CD\x00EF",  # NUL inside a value (PostgreSQL text refuses it)
]
PLACEHOLDER = "QQQQZZZZ"  # found once in the written file, replaced by raw bytes


@dataclass(frozen=True)
class Mutant:
    name: str
    data: bytes


@dataclass(frozen=True)
class Element:
    """One top-level element of an explicit VR little endian file, by byte offset."""

    start: int  # first byte of the tag
    value: int  # first byte of the value
    length: int  # the value length field (0xFFFFFFFF: undefined)
    vr: bytes  # as written (explicit VR)


_uids = random.Random(0)


def reset_uids(seed: int) -> None:
    _uids.seed(seed)


def new_uid() -> str:
    """A UID under 2.25 from a seeded generator: the same corpus on every run."""
    return f"2.25.{_uids.getrandbits(127)}"


def variant(template: Path, tmp: Path, **attributes: object) -> bytes:
    """The template written again with new UIDs (and the given attributes)."""
    target = tmp / "variant.dcm"
    uids = {"study_uid": new_uid(), "series_uid": new_uid(), "sop_uid": new_uid()}
    write_variant(pydicom.dcmread(template), target, **uids, **attributes)  # type: ignore[arg-type]
    return target.read_bytes()


def elements(data: bytes) -> list[Element]:
    """Top-level elements of a Part 10 file in explicit VR little endian (meta group and
    data set), as pydicom's element reader finds them."""
    found: list[Element] = []
    fp = io.BytesIO(data)
    fp.seek(PREAMBLE + 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for raw in data_element_generator(fp, False, True, defer_size=None):
            vr = str(raw.VR).encode()
            header = 12 if vr in LONG_VRS else 8
            value = raw.value_tell  # type: ignore[union-attr]
            found.append(Element(value - header, value, raw.length, vr))  # type: ignore[union-attr]
    return found


def truncations(data: bytes) -> Iterator[Mutant]:
    """Cut at every element boundary, after every element header and inside every value,
    and inside the preamble and magic."""
    for cut in (0, 1, 64, PREAMBLE, PREAMBLE + 2, PREAMBLE + 4):
        yield Mutant(f"truncated at byte {cut}", data[:cut])
    for i, element in enumerate(elements(data)):
        yield Mutant(f"truncated before element {i}", data[: element.start])
        yield Mutant(f"truncated after header of element {i}", data[: element.value])
        if 1 < element.length < 0xFFFFFFFF:
            yield Mutant(
                f"truncated inside element {i}", data[: element.value + element.length // 2]
            )


def bit_flips(data: bytes, rng: random.Random, flips: int, head_only: bool) -> bytes:
    out = bytearray(data)
    end = min(len(out), 2048) if head_only else len(out)
    for _ in range(flips):
        at = rng.randrange(PREAMBLE, end)
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def wrong_vr(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    candidates = [e for e in elements(data) if e.vr not in LONG_VRS]
    element = rng.choice(candidates)
    vr = rng.choice([v for v in WRONG_VRS if v != element.vr])
    out = bytearray(data)
    out[element.start + 4 : element.start + 6] = vr
    return f"VR {element.vr!r} -> {vr!r} at {element.start}", bytes(out)


def odd_length(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    element = rng.choice(elements(data))
    out = bytearray(data)
    if element.vr in LONG_VRS:
        length = rng.choice([element.length + 1, element.length - 1, 0xFFFFFFFE, 0x7FFFFFFF, 1])
        out[element.value - 4 : element.value] = struct.pack("<I", length & 0xFFFFFFFF)
    else:
        length = rng.choice([element.length + 1, element.length - 1, 0xFFFF, 1, 0])
        out[element.value - 2 : element.value] = struct.pack("<H", length & 0xFFFF)
    return f"length {element.length} -> {length} at {element.start}", bytes(out)


def with_raw_value(template: Path, tmp: Path, raw: bytes, **attributes: object) -> bytes:
    """A variant whose PatientName holds ``raw`` bytes exactly (undecodable on purpose),
    of a patient of its own (so no other file's name for that patient replaces it in an
    ingest batch)."""
    attributes.setdefault("PatientID", "RAW-" + new_uid()[-12:])
    data = variant(template, tmp, PatientName=PLACEHOLDER, **attributes)
    padded = raw + b" " * (len(PLACEHOLDER) - len(raw))
    assert data.count(PLACEHOLDER.encode()) == 1
    return data.replace(PLACEHOLDER.encode(), padded[: len(PLACEHOLDER)])


def implicit_variant(template: Path, tmp: Path, **attributes: object) -> bytes:
    """A variant in implicit VR little endian (4-byte lengths: room for huge values)."""
    ds = pydicom.dcmread(template)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    target = tmp / "implicit.dcm"
    uids = {"study_uid": new_uid(), "series_uid": new_uid(), "sop_uid": new_uid()}
    write_variant(ds, target, **uids, **attributes)  # type: ignore[arg-type]
    return target.read_bytes()


def deep_sequence(depth: int) -> Sequence:
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(depth):
        outer = Dataset()
        outer.ReferencedStudySequence = Sequence([inner])
        inner = outer
    return Sequence([inner])


def deep_sequence_bytes(depth: int) -> bytes:
    """A private sequence nested ``depth`` levels deep, undefined lengths throughout
    (explicit VR LE), to append after the last element: more than pydicom writes."""
    open_sq = struct.pack("<HH", 0x7FE1, 0x1010) + b"SQ\x00\x00" + b"\xff\xff\xff\xff"
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close_item = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    close_sq = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (open_sq + item) * depth + (close_item + close_sq) * depth


def preambles(data: bytes, rng: random.Random) -> Iterator[Mutant]:
    body = data[PREAMBLE + 4 :]
    yield Mutant("empty file", b"")
    yield Mutant("preamble and magic only", data[: PREAMBLE + 4])
    yield Mutant("garbage preamble", rng.randbytes(PREAMBLE) + data[PREAMBLE:])
    yield Mutant("no preamble", body)
    yield Mutant("magic without preamble", b"DICM" + body)
    yield Mutant("wrong magic", bytes(PREAMBLE) + b"DICX" + body)
    yield Mutant("random bytes", rng.randbytes(4096))
    yield Mutant("1 MB of zeros", bytes(1 << 20))
    yield Mutant("zeros with magic", bytes(PREAMBLE) + b"DICM" + bytes(1 << 16))
    yield Mutant("text", b"hello, this is not DICOM\n" * 40)
    yield Mutant("PNG header", b"\x89PNG\r\n\x1a\n" + rng.randbytes(256))


def corpus(tmp: Path, seed: int = 12, scale: int = 1) -> list[Mutant]:
    """The mutated files, in a fixed order for a seed; ``scale`` multiplies the random
    mutations (bit flips, wrong VRs, odd lengths)."""
    rng = random.Random(seed)
    reset_uids(seed)
    tmp.mkdir(parents=True, exist_ok=True)
    out: list[Mutant] = []

    def fresh(template: Path = SMALL) -> bytes:
        return variant(template, tmp)

    count = len(list(truncations(fresh())))
    for i in range(count):  # a fresh variant (new UIDs) for each cut
        cut = list(truncations(fresh()))[i]
        out.append(cut)
    for _ in range(10 * scale):  # and at random offsets of a larger file
        data = fresh(CT_SMALL)
        cut = rng.randrange(PREAMBLE + 4, len(data))
        out.append(Mutant(f"CT_small.dcm truncated at byte {cut}", data[:cut]))
    for i in range(40 * scale):
        template = (SMALL, CT_SMALL, MULTIFRAME)[i % 3]
        flips = rng.choice([1, 2, 4, 8, 32])
        head_only = i % 2 == 0
        data = bit_flips(fresh(template), rng, flips, head_only)
        out.append(Mutant(f"{template.name}: {flips} bit flips (head only: {head_only})", data))
    for _ in range(20 * scale):
        name, data = wrong_vr(fresh(), rng)
        out.append(Mutant(name, data))
    for _ in range(20 * scale):
        name, data = odd_length(fresh(), rng)
        out.append(Mutant(name, data))
    for charset in CHARSETS:
        data = with_raw_value(SMALL, tmp, rng.choice(UNDECODABLE), SpecificCharacterSet=charset)
        out.append(Mutant(f"charset {charset!r} with undecodable name", data))
    nul = with_raw_value(SMALL, tmp, UNDECODABLE[0], SpecificCharacterSet="ISO_IR 999")
    out.append(Mutant("charset with a NUL", nul.replace(b"ISO_IR 999", b"ISO\x00IR 100")))
    for raw in UNDECODABLE:
        out.append(Mutant(f"undecodable name {raw!r}", with_raw_value(SMALL, tmp, raw)))
    huge: list[tuple[str, Callable[[], bytes]]] = [
        ("1 MB PatientName", lambda: implicit_variant(SMALL, tmp, PatientName="A^" * 500_000)),
        (
            "1 MB StudyDescription",
            lambda: implicit_variant(SMALL, tmp, StudyDescription="x" * (1 << 20)),
        ),
        ("100 kB PatientID", lambda: implicit_variant(SMALL, tmp, PatientID="9" * 100_000)),
        ("70,000 ImageType values", lambda: implicit_variant(SMALL, tmp, ImageType=["A"] * 70_000)),
        ("200-character AccessionNumber", lambda: fresh_with(tmp, AccessionNumber="1" * 200)),
        ("StudyDate 99999999", lambda: fresh_with(tmp, StudyDate="99999999")),
        ("StudyDate 00000000", lambda: fresh_with(tmp, StudyDate="00000000")),
        ("PatientBirthDate 99991231", lambda: fresh_with(tmp, PatientBirthDate="99991231")),
    ]
    for name, make in huge:
        out.append(Mutant(name, make()))
    out.append(
        Mutant("sequence 60 deep", fresh_with(tmp, ReferencedStudySequence=deep_sequence(60)))
    )
    for depth in (500, 5000):
        out.append(Mutant(f"sequence {depth} deep (raw)", fresh() + deep_sequence_bytes(depth)))
    out.extend(preambles(fresh(), rng))
    return out


def fresh_with(tmp: Path, **attributes: object) -> bytes:
    return variant(SMALL, tmp, **attributes)
