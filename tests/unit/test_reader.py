"""``dicom.reader``: reading only the indexed elements gives the attributes a full read
gives, for every sample file; a file cut anywhere in its header is never accepted."""

from __future__ import annotations

import datetime
import io
import time
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.valuerep import MAX_VALUE_LEN, validate_pn_component_length

from pacsfhir.dicom.prepare import walk
from pacsfhir.dicom.reader import InstanceAttributes, read_instance
from pacsfhir.dicom.value_caps import MARGIN, PN_GROUP, UNLISTED, kept_length, standard_length
from pacsfhir.errors import RejectedInstance
from pacsfhir.index.writer import patient_row, study_row
from tests.conftest import PYDICOM_DATA, sample_paths
from tests.support.dicom_factory import load_template, write_variant

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


def _header_then_zeros(megabytes: int) -> bytes:
    """CT_small up to its Pixel Data, then zeros where the Pixel Data element should be."""
    data = CT_SMALL.read_bytes()
    pixels = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    with CT_SMALL.open("rb") as fp:
        pydicom.dcmread(fp, stop_before_pixels=True)
        header_end = fp.tell()
    assert "PatientName" in pixels
    return data[:header_end] + bytes(megabytes << 20)


def test_a_valid_header_followed_by_zeros_is_refused_without_reading_them() -> None:
    """Issue 12 item 2: zeros after a sane start were read as 8-byte elements (0.1 s of
    CPU a MB; minutes for a part of gigabytes). The first tag lower than the one before
    ends the read."""
    content = _header_then_zeros(16)
    started = time.process_time()
    with pytest.raises(RejectedInstance) as caught:
        read_instance(io.BytesIO(content), len(content))
    assert time.process_time() - started < 0.2
    assert caught.value.reason == "malformed"
    assert "out of order" in caught.value.detail


# -- what the index keeps of long values (item 9 of issue 12) ----------------------


def test_kept_lengths_come_from_pydicom() -> None:
    """The table is pydicom's; PN's 64 per component group is what pydicom checks."""
    for vr, length in MAX_VALUE_LEN.items():
        assert standard_length(vr) == length
    assert validate_pn_component_length("PN", "x" * PN_GROUP)[0]
    assert not validate_pn_component_length("PN", "x" * (PN_GROUP + 1))[0]
    assert kept_length("StudyDescription") == MARGIN * MAX_VALUE_LEN["LO"]
    assert kept_length("PatientName") == MARGIN * (3 * PN_GROUP + 2)
    assert kept_length("StudyDate") == UNLISTED  # DA: a format, no length in the table


def _read_variant(tmp_path: Path, **attributes: object) -> InstanceAttributes:
    path = tmp_path / "variant.dcm"
    write_variant(load_template(), path, **attributes)
    with path.open("rb") as fp:
        return read_instance(fp, path.stat().st_size)


def _codes(count: int) -> Sequence:
    items = []
    with warnings.catch_warnings():  # a CodeMeaning longer than LO allows, on purpose
        warnings.simplefilter("ignore")
        for number in range(count):
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = f"C{number}", "99TEST"
            item.CodeMeaning = "m" * 500
            items.append(item)
    return Sequence(items)


LONG_VALUES = [
    # (attribute, value written, (level, key), expected length or count kept)
    ("PatientName", "Doe^" + "x" * 10_000_000, ("patient", "PatientName"), 776),
    ("StudyDescription", "d" * 5000, ("study", "StudyDescription"), 256),
    ("AccessionNumber", "9" * 5000, ("study", "AccessionNumber"), 64),
    ("SeriesDescription", "s" * 300, ("series", "SeriesDescription"), 256),
    ("StudyDescription", "d" * 256, ("study", "StudyDescription"), 256),  # at the cap: whole
    ("StudyDate", "2" * 5000, ("study", "StudyDate"), UNLISTED),
    (
        "NameOfPhysiciansReadingStudy",
        ["Doe^J"] * 5000,
        ("study", "NameOfPhysiciansReadingStudy"),
        64,
    ),
    ("OperatorsName", ["A^" + "b" * 5000] * 2, ("series", "OperatorsName"), 2),
    ("ProcedureCodeSequence", _codes(5000), ("study", "ProcedureCodeSequence"), 64),
]


@pytest.mark.parametrize(
    ("keyword", "value", "where", "expected"), LONG_VALUES, ids=lambda v: str(v)[:20]
)
def test_long_values_are_cut_to_what_the_index_keeps(
    tmp_path: Path, keyword: str, value: object, where: tuple[str, str], expected: int
) -> None:
    attributes = _read_variant(tmp_path, **{keyword: value})
    kept = getattr(attributes, where[0])[where[1]]
    assert len(kept) == expected
    if isinstance(value, str):
        assert value.startswith(kept)
    if keyword == "OperatorsName":
        assert all(len(name) == kept_length("OperatorsName") for name in kept)
    if keyword == "ProcedureCodeSequence":
        assert all(len(code["CodeMeaning"]) == kept_length("CodeMeaning") for code in kept)


def test_a_long_value_is_cut_between_characters(tmp_path: Path) -> None:
    """UTF-8 (3 bytes a character here): the kept name is the first characters, whole."""
    name = "山田^" + "太郎" * 100_000
    attributes = _read_variant(tmp_path, SpecificCharacterSet="ISO_IR 192", PatientName=name)
    kept = attributes.patient["PatientName"]
    assert len(kept) == kept_length("PatientName")
    assert name.startswith(kept)


def test_short_values_are_kept_whole(tmp_path: Path) -> None:
    attributes = _read_variant(
        tmp_path, StudyDescription="Brain", ImageType=["ORIGINAL", "PRIMARY"]
    )
    assert attributes.study["StudyDescription"] == "Brain"
    assert attributes.instance["title"] == "ORIGINAL\\PRIMARY"


# -- dates at the edge of the calendar reach the index ------------------------------

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_US = 1_000_000


def _micros(*date: int) -> int:
    moment = datetime.datetime(*date, tzinfo=datetime.UTC)  # type: ignore[misc]
    return (moment - _EPOCH) // datetime.timedelta(microseconds=1)


_DAY = 86_400 * _US
_YEAR_10000 = _micros(9999, 12, 31) + _DAY  # past what datetime holds


EDGE_DATES = [
    # (StudyDate, StudyTime, offset) -> started_low (UTC), None: no period
    (("99991231", "235900", "-1400"), _YEAR_10000 + (13 * 3600 + 59 * 60) * _US),
    (("00010101", "000000", "+1400"), _micros(1, 1, 1) - 14 * 3600 * _US),
    (("99991231", "", ""), _micros(9999, 12, 31)),
    (("00010101", "", ""), _micros(1, 1, 1)),
    (("00000101", "", ""), None),  # no year 0
]


@pytest.mark.parametrize(("date", "low"), EDGE_DATES, ids=[str(d) for d, _ in EDGE_DATES])
def test_dates_at_the_edge_of_the_calendar_reach_the_index(
    tmp_path: Path, date: tuple[str, str, str], low: int | None
) -> None:
    study_date, study_time, offset = date
    attributes = _read_variant(
        tmp_path,
        StudyDate=study_date,
        StudyTime=study_time,
        TimezoneOffsetFromUTC=offset,
        PatientBirthDate=study_date,
    )
    assert study_row(attributes, "")["started_low"] == low
    birth = patient_row(attributes)
    assert (birth["birth_low"] is None) == (low is None)
