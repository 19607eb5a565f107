"""``dicom.reader``: reading only the indexed elements gives the attributes a full read
gives, for every sample file; a file cut anywhere in its header is never accepted."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from pacsfhir.dicom.prepare import walk
from pacsfhir.dicom.reader import InstanceAttributes, read_instance
from pacsfhir.errors import RejectedInstance
from tests.conftest import PYDICOM_DATA, sample_paths

SAMPLES = sorted(walk(sample_paths()))
CT_SMALL = PYDICOM_DATA / "test_files" / "CT_small.dcm"


def _outcome(data: bytes, every_element: bool) -> InstanceAttributes | str:
    try:
        return read_instance(io.BytesIO(data), len(data), every_element=every_element)
    except RejectedInstance as exc:
        return exc.reason


def test_there_are_samples() -> None:
    assert len(SAMPLES) > 250


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: Path(p).name)
def test_indexed_elements_alone_give_the_same_attributes(path: str) -> None:
    data = Path(path).read_bytes()
    assert _outcome(data, every_element=False) == _outcome(data, every_element=True)


def _value_middles(path: Path) -> list[int]:
    """For each top-level element with a value of 2 bytes or more, an offset inside it."""
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        pixels = fp.tell()
    middles = []
    for raw in ds.elements():  # raw: values not converted
        length = getattr(raw, "length", 0)
        if 2 <= length < 0xFFFFFFFF:
            middles.append(raw.value_tell + length // 2)
    return [*middles, pixels + 14, pixels + 4000]


@pytest.mark.parametrize("every_element", [False, True])
def test_a_file_cut_inside_a_value_is_truncated(every_element: bool) -> None:
    """A cut inside a value read, a value skipped unread, or the Pixel Data: each is
    "truncated", never an instance."""
    data = CT_SMALL.read_bytes()
    cuts = _value_middles(CT_SMALL)
    assert len(cuts) > 50
    outcomes = {cut: _outcome(data[:cut], every_element) for cut in cuts}
    assert {cut: o for cut, o in outcomes.items() if o != "truncated"} == {}
