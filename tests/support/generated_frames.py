"""Single-frame images of given pixels, written with pydicom (native or RLE): large
frames for the rendering limits, cheap to build and, RLE-encoded, small on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid


def write_frame(
    path: Path, pixels: np.ndarray, *, rle: bool = False, study_uid: str | None = None
) -> Dataset:
    """A MONOCHROME2 Secondary Capture image of these pixels (uint8 or uint16)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "render-limits", "Render^Limits", "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = pixels.tobytes()
    if rle:
        ds.compress(RLELossless)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def rle_bomb(path: Path, rows: int = 6000, columns: int = 6000) -> Dataset:
    """Issue 12's render bomb: a frame of rows x columns 8-bit samples, nearly all zero,
    RLE-encoded into about a megabyte."""
    pixels = np.zeros((rows, columns), dtype=np.uint8)
    pixels[::97, ::89] = 200
    return write_frame(path, pixels, rle=True)
