"""Frame extraction from stored files (dicom.frames) against pydicom's own reading: real
files from pydicom's test data, plus synthetic ones for each way of finding frames, and
a check that taking one frame from a large file reads only that frame."""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from pacsfhir.dicom.frames import (
    MAX_FRAME_NUMBER,
    Missing,
    PixelDataFile,
    media_type_of,
    parse_frame_list,
)
from tests.support.samples import pydicom_sample, read_quietly

ENCAPSULATED = [
    "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG-LL.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "SC_rgb_jpeg.dcm",  # its Pixel Data element is written implicit-VR in an explicit file
    "color3d_jpeg_baseline.dcm",
]
NATIVE = [
    "CT_small.dcm",
    "MR_small.dcm",
    "emri_small.dcm",
    "MR_small_bigendian.dcm",
    "rtdose_expb.dcm",  # big endian, 32 bits allocated, VR OW
    "SC_rgb_2frame.dcm",
    "SC_rgb_expb_32bit_2frame.dcm",
    "OBXXXX1A.dcm",
    "MR_small_implicit.dcm",
]


@pytest.mark.parametrize("name", ENCAPSULATED)
def test_encapsulated_frames_are_pydicoms_frames(name: str) -> None:
    ds = read_quietly(pydicom_sample(name))
    count = int(ds.get("NumberOfFrames", 1) or 1)
    expected = list(generate_frames(ds.PixelData, number_of_frames=count))
    with PixelDataFile(pydicom_sample(name)) as source:
        assert source.encapsulated
        assert source.frame_count() == len(expected)
        assert [source.frame(i) for i in range(count)] == expected
        assert [source.frame_length(i) for i in range(count)] == [len(f) for f in expected]
        # frames in any order, repeatedly, from the same open file
        assert source.frame(count - 1) == expected[-1]
        assert source.frame(0) == expected[0]


@pytest.mark.parametrize("name", NATIVE)
def test_native_frames_are_pydicoms_pixels_little_endian(name: str) -> None:
    ds = read_quietly(pydicom_sample(name))
    pixels = ds.pixel_array
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if count == 1:
        pixels = pixels[None]
    with PixelDataFile(pydicom_sample(name)) as source:
        assert not source.encapsulated
        assert source.frame_count() == count
        for index in range(count):
            frame = pixels[index]
            if int(ds.get("PlanarConfiguration", 0) or 0) == 1:
                frame = frame.transpose(2, 0, 1)
            expected = frame.astype(frame.dtype.newbyteorder("<")).tobytes()
            assert source.frame(index) == expected
            assert source.frame_length(index) == len(expected)
        with pytest.raises(Missing):
            source.frame(count)


# The image the encapsulated-frame tests declare (8 x 8, 8 bit); their frames are stand-ins.
JPEG_8X8: dict[str, object] = {
    "Rows": 8,
    "Columns": 8,
    "BitsAllocated": 8,
    "BitsStored": 8,
    "HighBit": 7,
}


def write(path: Path, transfer_syntax: str, pixel_data: bytes, **attributes: object) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixel_data
    if transfer_syntax not in (ExplicitVRLittleEndian, ExplicitVRBigEndian):
        ds["PixelData"].VR = "OB"
    elif ds.BitsAllocated > 8:
        ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True, little_endian=transfer_syntax != ExplicitVRBigEndian)
    return path


def fake_jpeg_frames(count: int) -> list[bytes]:
    """Codestream-shaped frames (SOI ... EOI) of different sizes."""
    return [b"\xff\xd8" + bytes([n]) * (100 + 37 * n) + b"\xff\xd9" for n in range(count)]


def fragmented(frames: list[bytes], pieces: int) -> Iterator[bytes]:
    """Split each frame into ``pieces`` even-length fragments."""
    for frame in frames:
        frame = frame + b"\x00" * (len(frame) % 2)
        step = -(-len(frame) // pieces)
        step += step % 2
        for start in range(0, len(frame), step):
            yield frame[start : start + step]


@pytest.mark.parametrize(("has_bot", "pieces"), [(True, 1), (True, 3), (False, 1), (False, 3)])
def test_encapsulated_frames_by_offset_table_or_fragment_scan(
    tmp_path: Path, has_bot: bool, pieces: int
) -> None:
    frames = fake_jpeg_frames(5)
    padded = [f + b"\x00" * (len(f) % 2) for f in frames]
    data = encapsulate(padded, fragments_per_frame=pieces, has_bot=has_bot)
    path = write(
        tmp_path / "enc.dcm",
        JPEGBaseline8Bit,
        data,
        **JPEG_8X8,
        NumberOfFrames=5,
    )
    with PixelDataFile(path) as source:
        assert source.frame_count() == 5
        assert [source.frame(i) for i in (4, 0, 2)] == [padded[4], padded[0], padded[2]]


def test_encapsulated_frames_by_extended_offset_table(tmp_path: Path) -> None:
    frames = [f + b"\x00" * (len(f) % 2) for f in fake_jpeg_frames(4)]
    data, offsets, lengths = encapsulate_extended(frames)
    path = write(
        tmp_path / "ext.dcm",
        JPEGBaseline8Bit,
        data,
        **JPEG_8X8,
        NumberOfFrames=4,
        ExtendedOffsetTable=offsets,
        ExtendedOffsetTableLengths=lengths,
    )
    with PixelDataFile(path) as source:
        assert [source.frame(i) for i in range(4)] == frames


def test_bit_packed_frames_start_anywhere_in_a_byte(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2, size=(3, 3, 3), dtype=np.uint8)  # 3 frames of 3x3: 9 bits each
    packed = np.packbits(bits.ravel(), bitorder="little").tobytes()
    path = write(
        tmp_path / "bits.dcm",
        ExplicitVRLittleEndian,
        packed + b"\x00" * (len(packed) % 2),
        Rows=3,
        Columns=3,
        BitsAllocated=1,
        BitsStored=1,
        HighBit=0,
        NumberOfFrames=3,
    )
    with PixelDataFile(path) as source:
        for index in range(3):
            expected = np.packbits(bits[index].ravel(), bitorder="little").tobytes()
            assert source.frame(index) == expected


def test_big_endian_words_come_out_little_endian(tmp_path: Path) -> None:
    values = np.arange(2 * 4 * 4, dtype=">u2").reshape(2, 4, 4) * 257
    path = write(
        tmp_path / "be.dcm",
        ExplicitVRBigEndian,
        values.tobytes(),
        Rows=4,
        Columns=4,
        BitsAllocated=16,
        BitsStored=16,
        HighBit=15,
        NumberOfFrames=2,
    )
    with PixelDataFile(path) as source:
        assert source.frame(1) == values[1].astype("<u2").tobytes()
        assert b"".join(source.value_chunks()) == values.astype("<u2").tobytes()


def test_one_frame_of_a_large_file_costs_one_frame_of_memory(tmp_path: Path) -> None:
    rows = columns = 512
    count = 160  # 80 MiB of 16-bit pixels
    frame_size = rows * columns * 2
    pixels = np.zeros((count, rows, columns), dtype="<u2")
    pixels[-1] = 1234
    path = write(
        tmp_path / "large.dcm",
        ExplicitVRLittleEndian,
        pixels.tobytes(),
        Rows=rows,
        Columns=columns,
        BitsAllocated=16,
        BitsStored=16,
        HighBit=15,
        NumberOfFrames=count,
    )
    del pixels
    tracemalloc.start()
    try:
        with PixelDataFile(path) as source:
            frame = source.frame(count - 1)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frame == (np.full(rows * columns, 1234, dtype="<u2")).tobytes()
    assert peak < 3 * frame_size


def test_a_large_encapsulated_file_is_indexed_without_reading_its_fragments(
    tmp_path: Path,
) -> None:
    frames = [b"\xff\xd8" + bytes([n % 256]) * (256 * 1024) + b"\xff\xd9" for n in range(200)]
    path = write(
        tmp_path / "large-enc.dcm",
        JPEGBaseline8Bit,
        encapsulate(frames, has_bot=False),
        **JPEG_8X8,
        NumberOfFrames=200,
    )
    expected = frames[-1]
    del frames
    tracemalloc.start()
    try:
        with PixelDataFile(path) as source:
            assert source.frame(199) == expected
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(expected)


def test_no_pixel_data(tmp_path: Path) -> None:
    with PixelDataFile(pydicom_sample("rtplan.dcm")) as source:
        assert not source.has_pixel_data
        assert source.frame_count() == 0
        with pytest.raises(Missing):
            source.frame(0)


def test_other_bulk_data_elements() -> None:
    ds = read_quietly(pydicom_sample("MR_small.dcm"))
    with PixelDataFile(pydicom_sample("MR_small.dcm")) as source:
        with pytest.raises(Missing):
            source.bulk_element(0x00100010)  # a name is no bulk data
        with pytest.raises(Missing):
            source.bulk_element(0x00091001)  # absent
    with PixelDataFile(pydicom_sample("OBXXXX1A.dcm")) as source:
        ob = [
            e
            for e in read_quietly(pydicom_sample("OBXXXX1A.dcm"))
            if e.VR == "OB" and e.tag < 0x7FE00010
        ]
        for element in ob:
            vr, chunks, size = source.bulk_element(int(element.tag))
            assert (vr, b"".join(chunks), size) == ("OB", element.value, len(element.value))
    assert ds.PixelData


@pytest.mark.parametrize(
    ("transfer_syntax", "media"),
    [
        ("1.2.840.10008.1.2.1", "application/octet-stream"),
        ("1.2.840.10008.1.2.4.50", "image/jpeg"),
        ("1.2.840.10008.1.2.4.90", "image/jp2"),
        ("1.2.840.10008.1.2.4.80", "image/jls"),
        ("1.2.840.10008.1.2.5", "image/dicom-rle"),
        ("1.2.840.10008.1.2.4.102", "video/mp4"),
    ],
)
def test_media_type_of(transfer_syntax: str, media: str) -> None:
    assert media_type_of(transfer_syntax) == media


# -- frame lists (the {frames} of .../frames/{frames}[/rendered|/thumbnail]) --------------


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("1", (1,)),
        ("3,1,2", (3, 1, 2)),  # any order, kept
        (" 2 , 5", (2, 5)),
        ("007", (7,)),
        (str(MAX_FRAME_NUMBER), (MAX_FRAME_NUMBER,)),
    ],
)
def test_frame_lists_parse(text: str, numbers: tuple[int, ...]) -> None:
    assert parse_frame_list(text) == numbers


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1,1", "frame 1 is listed twice"),
        ("2,1,2", "frame 2 is listed twice"),
        (",".join(["1"] * 10), "frame 1 is listed twice"),
        ("0", "frame numbers are 1 to 2147483647, not 0"),
        ("-1", "not '-1'"),
        ("+1", "not '+1'"),
        (str(MAX_FRAME_NUMBER + 1), "frame numbers are 1 to"),
        ("1" + "0" * 30, "frame numbers are 1 to"),
        ("9" * 5000, "frame numbers are 1 to"),  # past int()'s digit limit
        ("\u00b2", "not '\\xb2'"),  # superscript two: str.isdigit() says yes
        ("\u0663", "not '\\u0663'"),  # Arabic-Indic three: int() takes it
        ("\uff11", "not '\\uff11'"),  # fullwidth one
        ("1.0", "not '1.0'"),
        ("1e3", "not '1e3'"),
        ("1_000", "not '1_000'"),
        ("a", "not 'a'"),
        ("", "not an empty item"),
        ("1,,2", "not an empty item"),
        ("1,", "not an empty item"),
        ("1\t", "not '1\\t'"),
    ],
)
def test_frame_lists_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as raised:
        parse_frame_list(text)
    assert str(raised.value).isascii()  # it goes into a Warning header
