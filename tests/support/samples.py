"""pydicom's (and pydicom-data's) sample files, and reading DICOM quietly: the test sets
hold odd files on purpose, whose warnings are not what a test is about."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import pydicom
import pydicom.data
from pydicom.dataset import Dataset


def pydicom_sample(name: str) -> Path:
    """A file from pydicom's test data (or pydicom-data's)."""
    found = pydicom.data.get_testdata_file(name)
    assert found, name
    return Path(str(found))


def read_quietly(
    source: Path | str | BinaryIO, force: bool = False, stop_before_pixels: bool = False
) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(source, force=force, stop_before_pixels=stop_before_pixels)
