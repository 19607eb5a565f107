"""Which transfer syntax a WADO-RS request gets (dicom.transcode), as tables of
(asked, stored) -> served, each row from PS3.18 8.7.3: 8.7.3.4 for application/dicom
(default Explicit VR Little Endian unless lossy), Table 8.7.3-4 for frames and bulk data
(application/octet-stream uncompressed by default) and Table 8.7.3-5 for the
compressed media types' defaults; and a multi-frame instance transcoded in bounded
memory."""

from __future__ import annotations

import io
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pacsfhir.dicom.frames import PixelDataFile
from pacsfhir.dicom.transcode import (
    EXPLICIT_VR_LITTLE_ENDIAN as EXPLICIT,
)
from pacsfhir.dicom.transcode import (
    JPEG_2000_LOSSLESS,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    frame_chunks,
    instance_chunks,
    instance_syntax,
    pixel_syntax,
)

IMPLICIT = "1.2.840.10008.1.2"
BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
J2K = "1.2.840.10008.1.2.4.91"
MPEG4 = "1.2.840.10008.1.2.4.102"
OCTET = "application/octet-stream"


@pytest.mark.parametrize(
    ("asked", "stored", "served"),
    [
        ("*", JPEG_BASELINE, JPEG_BASELINE),  # "*": the stored bytes
        ("*", IMPLICIT, IMPLICIT),
        (None, EXPLICIT, EXPLICIT),
        (None, IMPLICIT, EXPLICIT),  # 8.7.3: implicit VR is not used with web services
        (None, BIG, EXPLICIT),
        (None, DEFLATED, EXPLICIT),
        (None, JPEG_LOSSLESS, EXPLICIT),  # lossless: converted (8.7.3.4)
        (None, RLE_LOSSLESS, EXPLICIT),
        (None, JPEG_2000_LOSSLESS, EXPLICIT),
        (None, JPEG_BASELINE, JPEG_BASELINE),  # lossy: may stay as received
        (None, J2K, J2K),
        (None, MPEG4, MPEG4),  # no decoder, and lossy
        (EXPLICIT, JPEG_BASELINE, EXPLICIT),  # asked: decoded
        (EXPLICIT, MPEG4, None),  # no decoder: 406
        (RLE_LOSSLESS, IMPLICIT, RLE_LOSSLESS),
        (JPEG_LS_LOSSLESS, JPEG_BASELINE, JPEG_LS_LOSSLESS),
        (JPEG_2000_LOSSLESS, RLE_LOSSLESS, JPEG_2000_LOSSLESS),
        (JPEG_BASELINE, JPEG_BASELINE, JPEG_BASELINE),  # the stored one
        (JPEG_BASELINE, RLE_LOSSLESS, None),  # no JPEG encoder
        (IMPLICIT, EXPLICIT, None),  # 8.7.3: not used with web services
        ("1.2.3.4", EXPLICIT, None),
    ],
)
def test_instance_syntax(asked: str | None, stored: str, served: str | None) -> None:
    assert instance_syntax(asked, stored) == served


@pytest.mark.parametrize(
    ("wanted", "asked", "stored", "served"),
    [
        # no syntax asked: uncompressed octet-stream (Table 8.7.3-4), lossy or not
        (OCTET, None, JPEG_BASELINE, (EXPLICIT, OCTET)),
        ("*/*", None, RLE_LOSSLESS, (EXPLICIT, OCTET)),
        (OCTET, None, IMPLICIT, (EXPLICIT, OCTET)),
        ("*/*", None, MPEG4, (MPEG4, "video/mp4")),  # no decoder: as stored
        (OCTET, None, MPEG4, None),
        # "*": the stored bytes, in their own type or as octet-stream (OHIF's request)
        (OCTET, "*", JPEG_BASELINE, (JPEG_BASELINE, OCTET)),
        ("image/jpeg", "*", JPEG_BASELINE, (JPEG_BASELINE, "image/jpeg")),
        ("image/jp2", "*", JPEG_BASELINE, None),
        # a compressed media type without a syntax: the stored bytes when of that type,
        # else that type's default (Table 8.7.3-5) when it can be encoded
        ("image/jpeg", None, JPEG_BASELINE, (JPEG_BASELINE, "image/jpeg")),
        ("image/jls", None, RLE_LOSSLESS, (JPEG_LS_LOSSLESS, "image/jls")),
        ("image/jp2", None, EXPLICIT, (JPEG_2000_LOSSLESS, "image/jp2")),
        ("image/dicom-rle", None, JPEG_LOSSLESS, (RLE_LOSSLESS, "image/dicom-rle")),
        ("image/jpeg", None, RLE_LOSSLESS, None),  # its default, 4.70: no encoder
        # a syntax asked
        (OCTET, EXPLICIT, J2K, (EXPLICIT, OCTET)),
        ("image/jls", JPEG_LS_LOSSLESS, EXPLICIT, (JPEG_LS_LOSSLESS, "image/jls")),
        (OCTET, RLE_LOSSLESS, JPEG_BASELINE, (RLE_LOSSLESS, OCTET)),
        ("image/jpeg", JPEG_LS_LOSSLESS, EXPLICIT, None),  # type and syntax disagree
        ("image/jpeg", JPEG_BASELINE, RLE_LOSSLESS, None),
        (OCTET, EXPLICIT, MPEG4, None),
    ],
)
def test_pixel_syntax(
    wanted: str, asked: str | None, stored: str, served: tuple[str, str] | None
) -> None:
    assert pixel_syntax(wanted, asked, stored) == served


def _multiframe(tmp_path: Path, frames: int) -> tuple[Path, np.ndarray]:
    """An RLE multi-frame file of 512 x 512 x 16-bit noise frames."""
    name = pydicom.data.get_testdata_file("MR_small_RLE.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds: Dataset = pydicom.dcmread(str(name))
    rng = np.random.default_rng(15)
    pixels = rng.integers(-2048, 2048, (frames, 512, 512), dtype=np.int16)
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.compress(RLE_LOSSLESS, pixels, generate_instance_uid=False)
    path = tmp_path / "multi.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, pixels


def test_a_multiframe_instance_is_transcoded_a_frame_at_a_time(tmp_path: Path) -> None:
    path, pixels = _multiframe(tmp_path, 24)  # 12 MiB decoded
    frame = pixels[0].nbytes
    tracemalloc.start()
    try:
        total = 0
        for chunk in instance_chunks(PixelDataFile(path), EXPLICIT):
            assert len(chunk) <= frame + (1 << 16)
            total += len(chunk)
            del chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > pixels.nbytes
    assert peak < 6 * frame  # a frame stored, encapsulated, decoded and as bytes: not 24
    body = b"".join(instance_chunks(PixelDataFile(path), EXPLICIT))
    served = pydicom.dcmread(io.BytesIO(body))
    assert served.file_meta.TransferSyntaxUID == EXPLICIT
    assert np.array_equal(served.pixel_array, pixels)


def test_one_frame_encoded_decodes_to_the_same_pixels(tmp_path: Path) -> None:
    path, pixels = _multiframe(tmp_path, 3)
    with PixelDataFile(path) as source:
        for target in (EXPLICIT, RLE_LOSSLESS):
            data = b"".join(frame_chunks(source, 1, target))
            if target == EXPLICIT:
                assert data == pixels[1].tobytes()
            else:
                assert data == b"".join(source.frame_chunks(1))  # the stored syntax
