"""QIDO-RS result objects in DICOM JSON (PS3.18 F.2), built from index rows (pure).

An index row is a mapping keyed by DICOM keyword (the index's columns are keywords
verbatim; derived columns are labelled with the keyword they stand for) holding values
as stored: DICOM strings (multiple values separated by backslashes), integers for the
counts, JSON lists for the multi-valued person names. Attributes the index does not
hold come from a stored instance's DICOM JSON (its "sidecar", see ``dicom.metadata``).

Which attributes a level returns by default is PS3.18 Tables 10.6.3-3 to -5. Which level
an attribute belongs to (so that includefield never returns a lower level's attribute,
PS3.18 10.6.3.3) is ``vocabulary.levels``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pacsfhir.vocabulary.levels import (
    Level,
    attribute_level,
    keyword_of,
    keyword_set,
    tag_of,
    tag_set,
    vr_of,
)

_INTEGER = re.compile(r"[+-]?[0-9]+")  # IS as stored: "²" is text, not 2


SPECIFIC_CHARACTER_SET = tag_of("SpecificCharacterSet")
RETRIEVE_URL = tag_of("RetrieveURL")
INSTANCE_AVAILABILITY = tag_of("InstanceAvailability")
NUMBER_OF_FRAMES = tag_of("NumberOfFrames")
_TIMEZONE = tag_of("TimezoneOffsetFromUTC")

# PS3.18 Tables 10.6.3-3, -4, -5. Performed Procedure Step Start Date/Time and Request
# Attribute Sequence (series) are not in the index: they are returned when asked for
# with includefield (read from the stored DICOM JSON), not by default (see
# docs/conformance.md).
STUDY_DEFAULTS = tag_set(
    """StudyDate StudyTime AccessionNumber InstanceAvailability ModalitiesInStudy
    ReferringPhysicianName TimezoneOffsetFromUTC RetrieveURL PatientName PatientID
    PatientBirthDate PatientSex StudyInstanceUID StudyID NumberOfStudyRelatedSeries
    NumberOfStudyRelatedInstances"""
)
SERIES_DEFAULTS = tag_set(
    """Modality TimezoneOffsetFromUTC SeriesDescription RetrieveURL SeriesInstanceUID
    SeriesNumber NumberOfSeriesRelatedInstances StudyInstanceUID"""
)
INSTANCE_DEFAULTS = tag_set(
    """SOPClassUID SOPInstanceUID InstanceAvailability TimezoneOffsetFromUTC RetrieveURL
    InstanceNumber Rows Columns BitsAllocated NumberOfFrames StudyInstanceUID
    SeriesInstanceUID"""
)
# Image Pixel attributes the index keeps as integers, 0 for "the file has none"
_IMAGE_PIXEL = tag_set("Rows Columns BitsAllocated")
# Shown only when they have a value ("shall be present if known"); the other defaults
# are shown empty when the index holds no value. An empty Modalities in Study (no series
# has a Modality) is left out too: OHIF 3's study list fails on one without a Value.
_CONDITIONAL = frozenset({_TIMEZONE, NUMBER_OF_FRAMES, tag_of("ModalitiesInStudy"), *_IMAGE_PIXEL})

# Keywords rendered from index rows (values as in the file, or derived from it).
INDEXED = keyword_set(
    """PatientName PatientID PatientBirthDate PatientSex StudyInstanceUID StudyDate
    StudyTime TimezoneOffsetFromUTC AccessionNumber StudyID StudyDescription
    ReferringPhysicianName NameOfPhysiciansReadingStudy ModalitiesInStudy
    NumberOfStudyRelatedSeries NumberOfStudyRelatedInstances SeriesInstanceUID Modality
    SeriesNumber SeriesDescription BodyPartExamined SeriesDate SeriesTime
    PerformingPhysicianName OperatorsName NumberOfSeriesRelatedInstances SOPInstanceUID
    SOPClassUID InstanceNumber NumberOfFrames Rows Columns BitsAllocated"""
)
_JSON_LISTS = frozenset(
    {"NameOfPhysiciansReadingStudy", "PerformingPhysicianName", "OperatorsName"}
)
_DERIVED = frozenset({RETRIEVE_URL, INSTANCE_AVAILABILITY, SPECIFIC_CHARACTER_SET})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # a backslash is text, not a separator
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PARSED_VRS = frozenset({"PN", "IS"})


def default_tags(level: Level, study_given: bool, series_given: bool) -> frozenset[int]:
    """PS3.18 10.6.3.3: a level's defaults, plus the series' when searching a study's
    instances, plus the study's when searching all series or all instances."""
    if level is Level.STUDY:
        return STUDY_DEFAULTS
    if level is Level.SERIES:
        return SERIES_DEFAULTS if study_given else SERIES_DEFAULTS | STUDY_DEFAULTS
    tags = INSTANCE_DEFAULTS
    if not series_given:
        tags = tags | SERIES_DEFAULTS
    if not study_given:
        tags = tags | STUDY_DEFAULTS
    return tags


def from_index(tag: int) -> bool:
    """Can this attribute be answered without reading a stored instance?"""
    return tag in _DERIVED or keyword_of(tag) in INDEXED


def _person_name(value: str) -> dict[str, str]:
    groups = value.split("=")
    return {name: group for name, group in zip(_PN_GROUPS, groups, strict=False) if group}


def _values(vr: str, value: Any) -> list[Any]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        items = [str(v) for v in value]
    elif vr in _SINGLE_TEXT_VRS:
        items = [str(value)] if value else []
    else:
        items = str(value).split("\\") if value else []
    if vr == "PN":
        return [_person_name(v) for v in items]
    if vr == "IS":
        return [int(v) if _INTEGER.fullmatch(v.strip()) else v for v in items]
    return items


def element(vr: str, value: Any) -> dict[str, Any]:
    """A DICOM JSON attribute from an index value; an empty value has no ``Value``."""
    if isinstance(value, str) and vr not in _PARSED_VRS and "\\" not in value:
        return {"vr": vr, "Value": [value]} if value else {"vr": vr}  # the common case
    values = _values(vr, value)
    if not values or all(v in ("", {}) for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": [None if v in ("", {}) else v for v in values]}


def _row_value(keyword: str, row: Mapping[str, Any]) -> Any:
    value = row[keyword]
    if keyword in _JSON_LISTS and isinstance(value, str):
        return json.loads(value) if value else []
    return value


def retrieve_url(base_url: str, level: Level, row: Mapping[str, Any]) -> str:
    url = f"{base_url}/studies/{row['StudyInstanceUID']}"
    if level >= Level.SERIES:
        url += f"/series/{row['SeriesInstanceUID']}"
    if level is Level.INSTANCE:
        url += f"/instances/{row['SOPInstanceUID']}"
    return url


def _from_sidecar(tag: int, sidecar: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if sidecar is None:
        return None
    found = sidecar.get(f"{tag:08X}")
    if not isinstance(found, dict) or "BulkDataURI" in found or "InlineBinary" in found:
        return None  # bulk data is for WADO-RS, not search results
    return found


def _sidecar_tags(sidecar: Mapping[str, Any] | None, level: Level) -> set[int]:
    """The attributes of ``level`` in a stored instance (for includefield=all)."""
    tags = set()
    for key in sidecar or {}:
        tag = int(key, 16)
        if tag >> 16 != 0x0002 and attribute_level(tag) is level:
            tags.add(tag)
    return tags


def _is_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, list):
        return all(_is_ascii(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False).isascii()
    return True


Getter = Callable[[Mapping[str, Any], Mapping[str, Any] | None], tuple[Any, Any]]


def _getter(tag: int, level: Level, base_url: str) -> Getter:
    """How to make one attribute of a result: (the element or None, the raw value it
    came from, to tell whether it is ASCII), given an index row and a sidecar."""
    keyword = keyword_of(tag)
    if tag == RETRIEVE_URL:

        def url(row: Mapping[str, Any], _sidecar: Mapping[str, Any] | None) -> tuple[Any, Any]:
            found = retrieve_url(base_url, level, row)
            return {"vr": "UR", "Value": [found]}, found

        return url
    if tag == INSTANCE_AVAILABILITY:
        return lambda _row, _sidecar: ({"vr": "CS", "Value": ["ONLINE"]}, "")
    if tag == SPECIFIC_CHARACTER_SET:
        return lambda _row, _sidecar: (None, "")  # set from the content: result_objects
    if tag == NUMBER_OF_FRAMES:  # the index keeps 1 for "absent" as for "1"

        def frames(row: Mapping[str, Any], _sidecar: Mapping[str, Any] | None) -> tuple[Any, Any]:
            found = row.get("NumberOfFrames")
            if isinstance(found, int) and found > 1:
                return {"vr": "IS", "Value": [found]}, ""
            return None, ""

        return frames
    if tag in _IMAGE_PIXEL:

        def pixel(row: Mapping[str, Any], sidecar: Mapping[str, Any] | None) -> tuple[Any, Any]:
            found = row.get(keyword)
            if isinstance(found, int) and found > 0:
                return {"vr": "US", "Value": [found]}, ""
            return (_from_sidecar(tag, sidecar) if found is None else None), ""

        return pixel
    vr = vr_of(tag)

    def indexed(row: Mapping[str, Any], sidecar: Mapping[str, Any] | None) -> tuple[Any, Any]:
        if keyword in row:
            value = _row_value(keyword, row)
            return element(vr, value), value
        found = _from_sidecar(tag, sidecar)
        return found, found

    def stored(_row: Mapping[str, Any], sidecar: Mapping[str, Any] | None) -> tuple[Any, Any]:
        found = _from_sidecar(tag, sidecar)
        return found, found

    return indexed if keyword in INDEXED else stored


@dataclass(frozen=True)
class _Entry:
    key: str
    get: Getter
    empty: dict[str, Any] | None  # a default's element when it has no value at all
    conditional: bool  # left out when it has no value


def _entries(
    tags: Iterable[int], level: Level, base_url: str, defaults: frozenset[int]
) -> list[_Entry]:
    entries = []
    for tag in sorted(set(tags)):
        empty = {"vr": vr_of(tag)} if tag in defaults else None
        getter = _getter(tag, level, base_url)
        entries.append(_Entry(f"{tag:08X}", getter, empty, tag in _CONDITIONAL))
    return entries


def _render(
    entries: Iterable[_Entry], row: Mapping[str, Any], sidecar: Mapping[str, Any] | None
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    ascii_only = True
    for entry in entries:
        found, raw = entry.get(row, sidecar)
        if found is None or "Value" not in found:
            if entry.conditional:
                continue
            found = found or entry.empty
            if found is None:
                continue
        result[entry.key] = found
        if ascii_only and not _is_ascii(raw):
            ascii_only = False
    if not ascii_only:
        return {f"{SPECIFIC_CHARACTER_SET:08X}": {"vr": "CS", "Value": ["ISO_IR 192"]}, **result}
    return result


def result_objects(
    level: Level,
    tags: Iterable[int],
    rows: Sequence[tuple[Mapping[str, Any], Mapping[str, Any] | None]],
    base_url: str,
    include_all: bool = False,
    defaults: frozenset[int] = frozenset(),
) -> list[dict[str, Any]]:
    """Search results from (index row, stored instance or None) pairs: ``tags``
    (defaults and requested attributes) from the row, from the stored instance for the
    rest; with ``include_all``, also every attribute of ``level`` in the row and the
    stored instance. ``defaults`` without a value are returned empty (PS3.4 C.2.2.1:
    type 2 keys), except the conditional ones. Specific Character Set is ISO_IR 192 (the
    JSON is UTF-8) when any text is not ASCII."""
    entries = _entries(tags, level, base_url, defaults)
    results = []
    for row, sidecar in rows:
        if include_all:
            extra = {tag_of(k) for k in INDEXED if k in row and attribute_level(tag_of(k)) <= level}
            extra |= _sidecar_tags(sidecar, level)
            known = {int(e.key, 16) for e in entries}
            more = _entries(extra - known, level, base_url, defaults)
            results.append(_render(sorted(entries + more, key=lambda e: e.key), row, sidecar))
        else:
            results.append(_render(entries, row, sidecar))
    return results


def result_object(
    level: Level,
    tags: Iterable[int],
    row: Mapping[str, Any],
    base_url: str,
    sidecar: Mapping[str, Any] | None = None,
    include_all: bool = False,
    defaults: frozenset[int] = frozenset(),
) -> dict[str, Any]:
    """One search result (see ``result_objects``)."""
    return result_objects(level, tags, [(row, sidecar)], base_url, include_all, defaults)[0]
