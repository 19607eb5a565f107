"""QIDO-RS search (PS3.18 10.6): query parameters -> ``QidoQuery`` (pure: ``parse_query``).

The same parsed query can become SQL over the index (``index.qido``), an upstream QIDO-RS
query or a C-FIND identifier.

Matching follows PS3.4 C.2.2.2: single value, wildcard (``*`` ``?``), list of UIDs (or of
values, comma- or backslash-separated), and date / time / datetime ranges. Person names
match case-insensitively in any component group; ``fuzzymatching=true`` matches each
word of the query as the start of a name part, ignoring case, carets and order.

Attributes the index does not hold cannot be matched: such keys (and keys of a level
below the one searched) are ignored and reported in ``ignored`` (PS3.4 C.2.2.1.3 lets an
SCP treat optional keys it does not support as universal matching).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pacsfhir.dicom.uids import is_valid_uid
from pacsfhir.errors import BadRequest, TooCostly
from pacsfhir.search.limits import MAX_WORDS, non_negative_integer, shown
from pacsfhir.vocabulary.levels import (
    Level,
    attribute_level,
    keyword_of,
    keyword_set,
    tag_of,
    vr_of,
)

MAX_RESULTS = 10_000  # the most results one response carries (PS3.18 8.3.4.4.1 maxResults)
MAX_VALUES = 100  # values in one list match
MAX_QUERY_VALUES = 200  # over all the keys of a query (SQL terms: see search.parse)
MAX_VALUE_LENGTH = 1024  # characters in one value (longer than any value the index keeps)
_RESERVED = frozenset({"includefield", "fuzzymatching", "limit", "offset", "accept", "charset"})
_SINGLE = frozenset({"fuzzymatching", "limit", "offset"})
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# re.ASCII: a digit is 0-9 (``\d`` alone also takes "٣", which int() reads as 3)
_DA = re.compile(r"\d{8}", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d{1,12}", re.ASCII)
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?", re.ASCII)
_DT = re.compile(
    r"(\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?)([+-]\d{4})?",
    re.ASCII,
)
_TM_TOP = "235959.999999"  # a partial time's upper bound: itself + the rest of this
_DT_TOP = "99991231235959.999999"
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_LIST_BY_COMMA = frozenset({"UI", "CS", "IS"})  # no comma can occur in their values


@dataclass(frozen=True)
class ValueMatch:
    """Any of ``values`` (single values, or wildcard patterns for text VRs)."""

    keyword: str
    vr: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class RangeMatch:
    """``low`` <= value <= ``high`` as DICOM strings; None: open. A partial time or
    datetime bound stands for its whole implicit range."""

    keyword: str
    vr: str
    low: str | None
    high: str | None


Match = ValueMatch | RangeMatch


@dataclass(frozen=True)
class QidoQuery:
    level: Level
    study_uid: str | None = None  # from the path
    series_uid: str | None = None
    matches: tuple[Match, ...] = ()
    includes: frozenset[int] = frozenset()  # tags asked for (includefield, return keys)
    include_all: bool = False
    fuzzy: bool = False
    limit: int = MAX_RESULTS
    offset: int = 0
    ignored: tuple[str, ...] = field(default=())  # keys that did not take part in matching


# The attributes the index holds a column for (``index.qido`` maps each to its column).
MATCHABLE = keyword_set(
    """PatientName PatientID PatientBirthDate PatientSex StudyInstanceUID StudyDate
    StudyTime AccessionNumber StudyID StudyDescription ReferringPhysicianName
    ModalitiesInStudy SeriesInstanceUID Modality SeriesNumber SeriesDescription
    BodyPartExamined SeriesDate SeriesTime SOPInstanceUID SOPClassUID InstanceNumber"""
)


def parse_attribute(text: str) -> int:
    """An attribute ID: a keyword or eight hex digits; for a sequence path
    (``00400275.00400009``) the top-level attribute."""
    head = text.split(".")[0]
    for part in text.split("."):
        if not (_TAG.fullmatch(part) or _KEYWORD.fullmatch(part)):
            raise BadRequest(f"{shown(text)} is not a DICOM keyword or tag")
    if _TAG.fullmatch(head):
        return int(head, 16)
    try:
        return tag_of(head)
    except KeyError:
        raise BadRequest(f"{shown(head)} is not a DICOM keyword") from None


def _check_date(value: str, key: str) -> str:
    if not _DA.fullmatch(value):
        raise BadRequest(f"{key}={shown(value)}: a date is YYYYMMDD")
    try:
        datetime.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise BadRequest(f"{key}={shown(value)}: no such date") from None
    return value


def _check_time(value: str, key: str) -> str:
    found = _TM.fullmatch(value)
    if not found:
        raise BadRequest(f"{key}={shown(value)}: a time is HH[MM[SS[.FFFFFF]]]")
    hours, minutes, seconds = (int(g) if g else 0 for g in found.groups())
    if hours > 23 or minutes > 59 or seconds > 60:
        raise BadRequest(f"{key}={shown(value)}: no such time")
    return value


def _check_datetime(value: str, key: str) -> str:
    found = _DT.fullmatch(value)
    if not found:
        raise BadRequest(f"{key}={shown(value)}: a datetime is YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]")
    moment = found.group(1)
    if len(moment) >= 8:
        _check_date(moment[:8], key)
    elif len(moment) == 6 and not 1 <= int(moment[4:6]) <= 12:
        raise BadRequest(f"{key}={shown(value)}: no such month")
    if len(moment) > 8:
        _check_time(moment[8:], key)
    return moment  # the offset from UTC is not used: stored values are local times


def _split_range(value: str, vr: str, key: str) -> tuple[str, str] | None:
    """(low, high) when ``value`` is a range; None for a single value."""
    if vr != "DT":
        if "-" not in value:
            return None
        low, _, high = value.partition("-")
        if "-" in high:
            raise BadRequest(f"{key}={shown(value)}: a range has one '-'")
        return low, high
    candidates = []
    for position, char in enumerate(value):
        if char != "-":
            continue
        low, high = value[:position], value[position + 1 :]
        if all(not part or _DT.fullmatch(part) for part in (low, high)) and (low or high):
            candidates.append((low, high))
    if _DT.fullmatch(value):
        return None  # a single value with a negative offset from UTC
    if len(candidates) != 1:
        raise BadRequest(f"{key}={shown(value)}: not a datetime or datetime range")
    return candidates[0]


def _temporal(keyword: str, vr: str, value: str, key: str) -> Match:
    check = {"DA": _check_date, "TM": _check_time, "DT": _check_datetime}[vr]
    top = {"DA": "", "TM": _TM_TOP, "DT": _DT_TOP}[vr]
    bounds = _split_range(value, vr, key)
    if bounds is None:
        single = check(value, key)
        if vr == "DA":
            return ValueMatch(keyword, vr, (single,))
        return RangeMatch(keyword, vr, single, single + top[len(single) :])
    low = check(bounds[0], key) if bounds[0] else None
    high = check(bounds[1], key) if bounds[1] else None
    if low is None and high is None:
        raise BadRequest(f"{key}={shown(value)}: a range needs a start or an end")
    if high is not None:
        high += top[len(high) :]
    if low is not None and high is not None and low > high:
        raise BadRequest(f"{key}={shown(value)}: the range ends before it starts")
    return RangeMatch(keyword, vr, low, high)


def _values(vr: str, value: str, key: str) -> tuple[str, ...]:
    parts = re.split(r"[\\,]", value) if vr in _LIST_BY_COMMA else value.split("\\")
    if len(parts) > MAX_VALUES:
        raise TooCostly(f"{key}: more than {MAX_VALUES} values")
    if any(len(p) > MAX_VALUE_LENGTH for p in parts):
        raise TooCostly(f"{key}: a value longer than {MAX_VALUE_LENGTH} characters")
    if vr == "UI":
        for uid in parts:
            if not is_valid_uid(uid):
                raise BadRequest(f"{key}={shown(value)}: {shown(uid)} is not a valid UID")
    elif vr == "IS":
        if not all(_INTEGER.fullmatch(p.strip()) for p in parts):
            raise BadRequest(f"{key}={shown(value)}: expected integers")
        parts = [str(int(p)) for p in parts]
    elif vr not in WILDCARD_VRS and any(c in value for c in "*?"):
        raise BadRequest(f"{key}={shown(value)}: wildcards are not allowed for VR {vr}")
    return tuple(dict.fromkeys(parts))


def parse_match(keyword: str, vr: str, value: str, key: str | None = None) -> Match | None:
    """The match for one key; None for universal matching (empty, or only ``*``)."""
    key = key or keyword
    if value == "" or (value.strip("*") == "" and vr in WILDCARD_VRS):
        return None
    if vr in ("DA", "TM", "DT"):
        if "\\" in value or "," in value:
            raise BadRequest(f"{key}={shown(value)}: one date, time or range only")
        return _temporal(keyword, vr, value, key)
    return ValueMatch(keyword, vr, _values(vr, value, key))


_NOT_PRIVATE_GROUPS = frozenset({0x0001, 0x0003, 0x0005, 0x0007, 0xFFFF})


def private_creator(tag: int) -> int | None:
    """The Private Creator element that reserves a private data element's block (PS3.5
    7.8.1: in an odd group other than 0001-0007 and FFFF, element xxyy belongs to the
    block that (gggg,00xx) reserves); None for any other tag."""
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 0 or group in _NOT_PRIVATE_GROUPS or element < 0x1000:
        return None
    return (group << 16) | (element >> 8)


def _with_private_creators(tags: frozenset[int]) -> frozenset[int]:
    """PS3.18 10.6.3.3: a private data element asked for comes with its Private Creator."""
    creators = {private_creator(t) for t in tags}
    return tags | {c for c in creators if c is not None}


def _parse_includes(values: Sequence[str]) -> tuple[frozenset[int], bool]:
    tags: set[int] = set()
    include_all = False
    for value in values:
        for item in value.split(","):
            if item == "all":
                include_all = True
            elif item:
                tags.add(parse_attribute(item))
    return frozenset(tags), include_all


def _split_pairs(
    pairs: Sequence[tuple[str, str]],
) -> tuple[dict[int, tuple[str, list[str]]], dict[str, str], list[str]]:
    """Match keys (tag -> first name used, values), single options, includefields. A
    key given more than once (as dicomweb-client sends a list) adds values to match."""
    keys: dict[int, tuple[str, list[str]]] = {}
    options: dict[str, str] = {}
    include_values: list[str] = []
    for name, value in pairs:
        if name == "includefield":
            include_values.append(value)
        elif name in _RESERVED:
            if name in _SINGLE and name in options:
                raise BadRequest(f"{name} given more than once")
            options[name] = value
        else:
            keys.setdefault(parse_attribute(name), (name, []))[1].append(value)
    return keys, options, include_values


def _key_match(
    tag: int, name: str, values: list[str], level: Level
) -> tuple[Match | None, bool, bool]:
    """(the match, whether the attribute is returned, whether the key is ignored)."""
    value = "\\".join(v for v in values if v)
    keyword = keyword_of(tag) if "." not in name else ""
    match = parse_match(keyword, vr_of(tag), value, name) if keyword else None
    if attribute_level(tag) > level:
        return None, False, bool(value)
    if match is None:
        return None, True, bool(value) and not keyword
    if keyword not in MATCHABLE:
        return None, True, True
    return match, True, False


def name_words(value: str) -> list[str]:
    """The words of a fuzzy person name match (each to match the start of a name part)."""
    return [w.rstrip("*") for w in re.split(r"[\s^=,]+", value) if w.rstrip("*")]


def _check_fuzzy_words(matches: Sequence[Match]) -> None:
    """Fuzzy matching makes one SQL term per word: a bounded number of them."""
    for match in matches:
        if isinstance(match, ValueMatch) and match.vr == "PN":
            words = sum(len(name_words(v)) for v in match.values)
            if words > MAX_WORDS:
                raise TooCostly(
                    f"{match.keyword}: fuzzy matching takes at most {MAX_WORDS} words, not {words}"
                )


def parse_query(
    level: Level,
    pairs: Sequence[tuple[str, str]],
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> QidoQuery:
    """Parse a QIDO-RS query string (PS3.18 8.3.4) searched at ``level``, under the
    study (and series) of the request path. Malformed input raises ``BadRequest``."""
    for name, uid in (("study", study_uid), ("series", series_uid)):
        if uid is not None and not is_valid_uid(uid):
            raise BadRequest(f"{shown(uid)} in the path is not a valid {name} UID")
    keys, options, include_values = _split_pairs(pairs)
    matches: list[Match] = []
    returned: set[int] = set()
    ignored: list[str] = []
    for tag, (name, values) in keys.items():
        match, is_returned, is_ignored = _key_match(tag, name, values, level)
        if match is not None:
            matches.append(match)
        if is_returned:
            returned.add(tag)
        if is_ignored:
            ignored.append(name)
    includes, include_all = _parse_includes(include_values)
    includes = frozenset(
        t for t in _with_private_creators(includes | returned) if attribute_level(t) <= level
    )
    fuzzy = options.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise BadRequest(f"fuzzymatching={shown(fuzzy)}: expected true or false")
    total = sum(len(m.values) for m in matches if isinstance(m, ValueMatch))
    if total > MAX_QUERY_VALUES:
        raise TooCostly(f"more than {MAX_QUERY_VALUES} values in one query")
    if fuzzy == "true":
        _check_fuzzy_words(matches)
    limit = non_negative_integer("limit", options["limit"]) if "limit" in options else MAX_RESULTS
    return QidoQuery(
        level=level,
        study_uid=study_uid,
        series_uid=series_uid,
        matches=tuple(matches),
        includes=includes,
        include_all=include_all,
        fuzzy=fuzzy == "true",
        limit=min(limit, MAX_RESULTS),
        offset=non_negative_integer("offset", options["offset"]) if "offset" in options else 0,
        ignored=tuple(ignored),
    )
