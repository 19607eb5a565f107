"""Read the index attributes of one DICOM file, without loading its pixel data.

``read_instance`` returns an ``InstanceAttributes`` record holding plain JSON-friendly
values (strings, lists of code dicts) keyed by DICOM keyword, grouped by the level at
which DICOM defines them. Text is decoded through Specific Character Set by pydicom.
Anything that cannot become a stored instance raises ``RejectedInstance`` with a short,
stable reason key.
"""

from __future__ import annotations

import dataclasses
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from pacsfhir.dicom.uids import is_valid_uid
from pacsfhir.dicom.value_caps import MAX_ITEMS, MAX_VALUES, cut
from pacsfhir.errors import RejectedInstance

# Transfer syntax of files without file meta information, when pydicom had to guess.
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

# The top-level elements ``attributes_from_dataset`` reads. pydicom skips the others
# without reading their values (a quarter of the parse of a small CT header). A test
# reads every sample file both ways and compares the attributes.
INDEXED_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "TimezoneOffsetFromUTC",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "RequestAttributesSequence",
    "ReasonForTheRequestedProcedure",
    "ReasonForRequestedProcedureCodeSequence",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "Laterality",
    "ImageLaterality",
    "SeriesDate",
    "SeriesTime",
    "PerformingPhysicianName",
    "OperatorsName",
    "InstanceNumber",
    "ContentLabel",
    "DocumentTitle",
    "ConceptNameCodeSequence",
    "ImageType",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
)
_INDEXED_TAGS: list[int] = [tag_for_keyword(k) for k in INDEXED_KEYWORDS]  # type: ignore[misc]

_SEQUENCE_DELIMITER_LE = b"\xfe\xff\xdd\xe0"
_SEQUENCE_DELIMITER_BE = b"\xff\xfe\xe0\xdd"


@dataclass(frozen=True)
class InstanceAttributes:
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    warnings: tuple[str, ...] = field(default=())

    @property
    def study_uid(self) -> str:
        return str(self.study["StudyInstanceUID"])

    @property
    def series_uid(self) -> str:
        return str(self.series["SeriesInstanceUID"])

    @property
    def sop_uid(self) -> str:
        return str(self.instance["SOPInstanceUID"])


def _kept(keyword: str, value: object) -> str:
    """One value as the index keeps it: without the NUL padding PS3.5 allows at the end
    (of a UID), any other NUL shown as U+FFFD (no text VR allows one, and PostgreSQL text
    cannot hold it: it failed a whole batch), cut to its VR's length (``value_caps``)."""
    return cut(keyword, str(value).rstrip("\0").replace("\0", "\ufffd"))


def _value(ds: Dataset, keyword: str) -> Any:
    """``ds.keyword``; a text value left in bytes (VR UN: pydicom keeps a value past 64 KB
    in an explicit VR file that way) decoded as the text its VR is, values split."""
    value = ds.get(keyword)
    if not isinstance(value, bytes):
        return value
    encodings = convert_encodings(ds._character_set)
    text = decode_bytes(value, encodings, {0x5C, 0x5E, 0x3D}).rstrip("\0 ")
    return text.split("\\") if "\\" in text else text


def _text(ds: Dataset, keyword: str) -> str:
    """The value (values joined by backslashes, the first ``MAX_VALUES``) of ``keyword``."""
    value = _value(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue | list):
        return "\\".join(_kept(keyword, v) for v in value[:MAX_VALUES]).strip()
    return _kept(keyword, str(value).strip()).rstrip()


def _person_name(value: object) -> str:
    """A PN value, or "" when every component is empty (``^^^^``, ``=^``)."""
    text = str(value).strip()
    return text if text.strip("^= ") else ""


def _names(ds: Dataset, keyword: str) -> list[str]:
    value = _value(ds, keyword)
    if value is None or value == "":
        return []
    values = value if isinstance(value, pydicom.multival.MultiValue | list) else [value]
    kept = (_person_name(_kept(keyword, v)) for v in values[:MAX_VALUES])
    return [name for name in kept if name]


def _codes(ds: Dataset, keyword: str) -> list[dict[str, str]]:
    codes = []
    for item in (ds.get(keyword) or [])[:MAX_ITEMS]:
        code = {
            "CodeValue": _text(item, "CodeValue")
            or _text(item, "LongCodeValue")
            or _text(item, "URNCodeValue"),
            "CodingSchemeDesignator": _text(item, "CodingSchemeDesignator"),
            "CodeMeaning": _text(item, "CodeMeaning"),
        }
        if code["CodeValue"] or code["CodeMeaning"]:
            codes.append(code)
    return codes


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _issuer_qualifiers(item: Dataset | None) -> dict[str, str]:
    if item is None:
        return {}
    return {
        k: _text(item, k)
        for k in ("LocalNamespaceEntityID", "UniversalEntityID", "UniversalEntityIDType")
        if _text(item, k)
    }


def _request_attribute(ds: Dataset, keyword: str) -> Any:
    """A value from the top level, else from the first Request Attributes item."""
    if keyword in ds:
        return ds
    item = _first_item(ds, "RequestAttributesSequence")
    if item is not None and keyword in item:
        return item
    return ds


def _title(ds: Dataset) -> str:
    # R4 mapping: Content Label | Concept Name Code Sequence > Code Meaning |
    # Document Title | Image Type
    for keyword in ("ContentLabel", "DocumentTitle"):
        if _text(ds, keyword):
            return _text(ds, keyword)
    concept = _first_item(ds, "ConceptNameCodeSequence")
    if concept is not None and _text(concept, "CodeMeaning"):
        return _text(concept, "CodeMeaning")
    return _text(ds, "ImageType")


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword).rstrip("\0 ")
    if not value:
        raise RejectedInstance("missing-attribute", f"no {keyword}")
    if not is_valid_uid(value):
        raise RejectedInstance("invalid-uid", f"{keyword} {value[:80]!r} is not a valid UID")
    return value


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword, default))
    except (TypeError, ValueError):
        return default


MAX_FRAMES = 2**31 - 1  # the index's integer column on both backends


def _frame_count(ds: Dataset) -> int:
    """Number of Frames (1 when absent or unreadable); one no index column can hold is
    malformed (PostgreSQL refused it, and with it the whole batch)."""
    frames = _int(ds, "NumberOfFrames", 1)
    if not 0 <= frames <= MAX_FRAMES:
        raise RejectedInstance("malformed", f"Number of Frames {frames} is out of range")
    return frames


MAX_US = 0xFFFF


def _unsigned_short(ds: Dataset, keyword: str) -> int:
    """A US value (Rows, Columns, Bits Allocated); 0 when absent or not one value in
    1..65535 (a value no image can have is no value)."""
    value = _int(ds, keyword, 0)
    return value if 0 < value <= MAX_US else 0


def attributes_from_dataset(ds: Dataset, transfer_syntax: str) -> InstanceAttributes:
    """Pick the index attributes out of a parsed dataset (pure, no I/O)."""
    study_uid = _required_uid(ds, "StudyInstanceUID")
    series_uid = _required_uid(ds, "SeriesInstanceUID")
    sop_uid = _required_uid(ds, "SOPInstanceUID")
    sop_class = _text(ds, "SOPClassUID") or _text(ds.file_meta, "MediaStorageSOPClassUID")
    if not sop_class:
        raise RejectedInstance("missing-attribute", "no SOPClassUID")
    reason_src = _request_attribute(ds, "ReasonForTheRequestedProcedure")
    reason_codes_src = _request_attribute(ds, "ReasonForRequestedProcedureCodeSequence")
    patient = {
        "PatientID": _text(ds, "PatientID"),
        "IssuerOfPatientID": _text(ds, "IssuerOfPatientID"),
        "IssuerOfPatientIDQualifiers": _issuer_qualifiers(
            _first_item(ds, "IssuerOfPatientIDQualifiersSequence")
        ),
        "PatientName": _person_name(_text(ds, "PatientName")),
        "PatientBirthDate": _text(ds, "PatientBirthDate"),
        "PatientSex": _text(ds, "PatientSex").upper(),
    }
    study = {
        "StudyInstanceUID": study_uid,
        "StudyDate": _text(ds, "StudyDate"),
        "StudyTime": _text(ds, "StudyTime"),
        "TimezoneOffsetFromUTC": _text(ds, "TimezoneOffsetFromUTC"),
        "AccessionNumber": _text(ds, "AccessionNumber"),
        "IssuerOfAccessionNumber": _issuer_qualifiers(
            _first_item(ds, "IssuerOfAccessionNumberSequence")
        ),
        "StudyID": _text(ds, "StudyID"),
        "StudyDescription": _text(ds, "StudyDescription"),
        "ReferringPhysicianName": _person_name(_text(ds, "ReferringPhysicianName")),
        "NameOfPhysiciansReadingStudy": _names(ds, "NameOfPhysiciansReadingStudy"),
        "ProcedureCodeSequence": _codes(ds, "ProcedureCodeSequence"),
        "ReasonForTheRequestedProcedure": _text(reason_src, "ReasonForTheRequestedProcedure"),
        "ReasonForRequestedProcedureCodeSequence": _codes(
            reason_codes_src, "ReasonForRequestedProcedureCodeSequence"
        ),
    }
    series = {
        "SeriesInstanceUID": series_uid,
        "Modality": _text(ds, "Modality").upper(),
        "SeriesNumber": _text(ds, "SeriesNumber"),
        "SeriesDescription": _text(ds, "SeriesDescription"),
        "BodyPartExamined": _text(ds, "BodyPartExamined").upper(),
        "Laterality": _text(ds, "Laterality").upper() or _text(ds, "ImageLaterality").upper(),
        "SeriesDate": _text(ds, "SeriesDate"),
        "SeriesTime": _text(ds, "SeriesTime"),
        "PerformingPhysicianName": _names(ds, "PerformingPhysicianName"),
        "OperatorsName": _names(ds, "OperatorsName"),
    }
    instance = {
        "SOPInstanceUID": sop_uid,
        "SOPClassUID": sop_class,
        "InstanceNumber": _text(ds, "InstanceNumber"),
        "title": _title(ds),
        "TransferSyntaxUID": transfer_syntax,
        "NumberOfFrames": _frame_count(ds),
        "Rows": _unsigned_short(ds, "Rows"),
        "Columns": _unsigned_short(ds, "Columns"),
        "BitsAllocated": _unsigned_short(ds, "BitsAllocated"),
    }
    return InstanceAttributes(patient, study, series, instance)


def _check_pixel_data_complete(fp: BinaryIO, ds: Dataset, size: int) -> str | None:
    """After a stop-before-pixels read, check that the Pixel Data element fits the file;
    return its VR (None when the file has no Pixel Data)."""
    start = fp.tell()
    if start >= size:
        return None
    header = fp.read(12)
    implicit, little = ds.original_encoding
    endian = "<" if little else ">"
    if len(header) < 8:
        raise RejectedInstance("truncated", "file ends inside the Pixel Data header")
    if implicit:
        (length,) = struct.unpack(endian + "I", header[4:8])
        value_start = start + 8
        vr = "OB" if length == 0xFFFFFFFF else "OW"
    else:
        if len(header) < 12:
            raise RejectedInstance("truncated", "file ends inside the Pixel Data header")
        (length,) = struct.unpack(endian + "I", header[8:12])
        value_start = start + 12
        vr = header[4:6].decode("ascii", "replace")
    if length == 0xFFFFFFFF:
        fp.seek(max(start, size - 4096))
        tail = fp.read()
        delimiter = _SEQUENCE_DELIMITER_LE if little else _SEQUENCE_DELIMITER_BE
        if delimiter not in tail:
            raise RejectedInstance("truncated", "encapsulated Pixel Data has no end delimiter")
    elif value_start + length > size:
        raise RejectedInstance(
            "truncated", f"Pixel Data needs {length} bytes, file has {size - value_start}"
        )
    return vr


def _ends_inside_an_element(fp: BinaryIO, ds: Dataset, size: int) -> bool:
    """pydicom neither reads past the end of a file nor complains: an element skipped
    unread leaves the position beyond the end, one read comes back short. (A file cut
    inside an element's 8-12 byte header just ends the data set; that goes unseen.)"""
    if fp.tell() > size:
        return True
    if len(ds) == 0:
        return False
    last = ds.get_item(max(ds.keys()))  # read last: elements come in tag order
    value_tell = getattr(last, "value_tell", None)
    length = getattr(last, "length", 0xFFFFFFFF)
    return value_tell is not None and length != 0xFFFFFFFF and value_tell + length > size


def read_instance(fp: BinaryIO, size: int, every_element: bool = False) -> InstanceAttributes:
    """Parse the header of an open DICOM file and return its index attributes.
    ``every_element``: parse all top-level elements, not only ``INDEXED_KEYWORDS``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attributes = _read(fp, size, None if every_element else _INDEXED_TAGS)
    if not caught:
        return attributes
    notes = tuple(dict.fromkeys(str(w.message) for w in caught))
    return dataclasses.replace(attributes, warnings=notes)


@dataclass
class _HeaderEnd:
    """``read_partial``'s ``stop_when``: stop at Pixel Data, or where a top-level tag goes
    backwards. PS3.5 7.1 orders a data set's elements by tag, so a tag lower than the one
    before means what follows is not a data set (a valid start followed by megabytes of
    zeros would otherwise be read as 8-byte elements, about 0.1 s of CPU a MB)."""

    last: int = -1
    backwards: tuple[int, int] | None = None  # (the tag before, the lower tag)

    def __call__(self, tag: BaseTag, _vr: str | None, _length: int) -> bool:
        if tag == 0x7FE00010:
            return True
        if tag < self.last:
            self.backwards = (self.last, int(tag))
            return True
        self.last = int(tag)
        return False


def _read(fp: BinaryIO, size: int, tags: list[int] | None) -> InstanceAttributes:
    """``tags``: the top-level elements to read (None: all)."""
    end = _HeaderEnd()
    try:
        specific = [Tag(t) for t in tags] if tags is not None else None
        ds = read_partial(fp, end, force=True, specific_tags=specific)  # type: ignore[arg-type]
    except InvalidDicomError as exc:
        raise RejectedInstance("not-dicom", str(exc)) from exc
    except (EOFError, struct.error) as exc:
        raise RejectedInstance("truncated", f"file ends inside the header ({exc})") from exc
    except Exception as exc:  # pydicom raises many types on garbage input
        raise RejectedInstance("not-dicom", f"{type(exc).__name__}: {exc}") from exc
    if len(ds) == 0 and ds.preamble is None and not ds.file_meta:
        raise RejectedInstance("not-dicom", "no DICOM data elements found")
    if end.backwards is not None:
        before, after = end.backwards
        raise RejectedInstance(
            "malformed",
            f"data elements out of order at byte {fp.tell()}: ({after >> 16:04X},"
            f"{after & 0xFFFF:04X}) after ({before >> 16:04X},{before & 0xFFFF:04X})",
        )
    if _ends_inside_an_element(fp, ds, size):
        if ds.preamble is None and not ds.file_meta:
            raise RejectedInstance("not-dicom", "no DICOM preamble and no whole element")
        raise RejectedInstance("truncated", "file ends inside the header")
    transfer_syntax = _text(ds.file_meta, "TransferSyntaxUID") or IMPLICIT_VR_LITTLE_ENDIAN
    try:
        attributes = attributes_from_dataset(ds, transfer_syntax)
    except RejectedInstance as exc:
        if exc.reason == "missing-attribute" and ds.preamble is None and not ds.file_meta:
            raise RejectedInstance("not-dicom", f"no DICOM preamble and {exc.detail}") from exc
        raise
    except Exception as exc:  # a value pydicom cannot decode
        raise RejectedInstance("malformed", f"{type(exc).__name__}: {exc}") from exc
    _check_pixel_data_complete(fp, ds, size)
    return attributes
