"""A parsed QIDO query (``search.qido.QidoQuery``) as an upstream query (pure): the path
and parameters of a QIDO-RS request, or the identifiers of a C-FIND (PS3.4 C.4.1).

What the upstream answers is a superset to be filtered again where it lands (the index,
with pacsfhir's own matching rules): an upstream may match person names case-sensitively,
ignore optional keys (PS3.4 C.2.2.1.3), or have no fuzzy matching; so nothing an
upstream cannot express is sent in a way that could narrow wrongly:

- a list of values (``PatientID=A\\B``) is one C-FIND per value (PS3.4 has list matching
  for UIDs only), and one QIDO-RS request per value unless UIDs, codes or integers
  (which QIDO-RS lists with commas), bounded by ``MAX_IDENTIFIERS``;
- fuzzy matching is not sent in a C-FIND (universal matching on that key instead);
- QIDO-RS gets the other values as they came (the same parameters).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from pacsfhir.mapping.dicom_json import default_tags
from pacsfhir.search.qido import Match, QidoQuery, RangeMatch, ValueMatch
from pacsfhir.vocabulary.levels import Level, keyword_of, tag_of

MAX_IDENTIFIERS = 32  # C-FINDs one query may become (lists of non-UID values multiply)
_LEVEL_NAMES = {Level.STUDY: "STUDY", Level.SERIES: "SERIES", Level.INSTANCE: "IMAGE"}
UNIQUE_KEYS = {
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.INSTANCE: "SOPInstanceUID",
}
UNIQUE_TAGS = {level: tag_of(keyword) for level, keyword in UNIQUE_KEYS.items()}


class NotExpressible(ValueError):
    """The query cannot be sent upstream within the bounds (too many combinations)."""


def qido_path(query: QidoQuery) -> str:
    """The QIDO-RS resource (PS3.18 10.6.1) the query was made for."""
    level = {Level.STUDY: "studies", Level.SERIES: "series", Level.INSTANCE: "instances"}
    if query.study_uid is None:
        return "/" + level[query.level]
    path = f"/studies/{query.study_uid}"
    if query.series_uid is not None:
        path += f"/series/{query.series_uid}"
    return f"{path}/{level[query.level]}"


def _value_text(match: Match, separator: str) -> str:
    if isinstance(match, RangeMatch):
        return f"{match.low or ''}-{match.high or ''}"
    return separator.join(match.values)


def qido_requests(query: QidoQuery) -> list[list[tuple[str, str]]]:
    """The QIDO-RS requests that together find what ``query`` finds: one, but one per
    value of a list of values other than UIDs, codes or integers (a comma may be part of
    such a value, and servers differ on the separator); NotExpressible beyond
    ``MAX_IDENTIFIERS``. Unpaged: the matches land where they are paged again."""
    requests = []
    for chosen in _combinations(query, split=lambda m: m.vr not in ("UI", "CS", "IS")):
        requests.append([(k, v) for k, _vr, v in chosen] + _result_params(query))
    return requests


def _result_params(query: QidoQuery) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    if query.include_all:
        params.append(("includefield", "all"))
    else:
        matched = {m.keyword for m in query.matches}  # a matching key is returned anyway
        params += [
            ("includefield", f"{tag:08X}")
            for tag in sorted(query.includes)
            if keyword_of(tag) not in matched
        ]
    if query.fuzzy:
        params.append(("fuzzymatching", "true"))
    return params


def _combinations(
    query: QidoQuery, split: Callable[[ValueMatch], bool], drop_fuzzy: bool = False
) -> list[tuple[tuple[str, str, str], ...]]:
    """(keyword, VR, value) of each match, a list of values split into one combination
    per value where ``split`` says so."""
    choices: list[list[tuple[str, str, str]]] = []
    for match in query.matches:
        if drop_fuzzy and query.fuzzy and match.vr == "PN":
            continue
        if isinstance(match, ValueMatch) and len(match.values) > 1 and split(match):
            choices.append([(match.keyword, match.vr, v) for v in match.values])
        else:
            separator = "\\" if drop_fuzzy else ","
            choices.append([(match.keyword, match.vr, _value_text(match, separator))])
    combinations = 1
    for choice in choices:
        combinations *= len(choice)
    if combinations > MAX_IDENTIFIERS:
        raise NotExpressible(
            f"the query's value lists make {combinations} upstream queries; "
            f"at most {MAX_IDENTIFIERS}"
        )
    return list(itertools.product(*choices))


def return_tags(query: QidoQuery) -> list[int]:
    """The attributes a C-FIND must ask for: the level's QIDO-RS defaults (PS3.18
    10.6.3.3) and what the query includes."""
    tags = default_tags(query.level, query.study_uid is not None, query.series_uid is not None)
    return sorted(tags | query.includes)


def cfind_identifiers(query: QidoQuery) -> list[Dataset]:
    """The C-FIND identifiers (Study Root) that together find what ``query`` finds, or
    more; NotExpressible beyond ``MAX_IDENTIFIERS``."""
    combinations = _combinations(query, split=lambda m: m.vr != "UI", drop_fuzzy=True)
    return [_identifier(query, chosen) for chosen in combinations]


def _identifier(query: QidoQuery, chosen: Iterable[tuple[str, str, str]]) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = _LEVEL_NAMES[query.level]
    for tag in return_tags(query):
        keyword = keyword_of(tag)
        if keyword and keyword not in ("QueryRetrieveLevel", "RetrieveURL"):
            identifier.add_new(tag, dictionary_VR(tag), None)
    for keyword, _vr, value in chosen:
        setattr(identifier, keyword, value)
    if query.study_uid is not None:
        identifier.StudyInstanceUID = query.study_uid
    elif query.level is not Level.STUDY and "StudyInstanceUID" not in identifier:
        identifier.StudyInstanceUID = ""
    if query.series_uid is not None:
        identifier.SeriesInstanceUID = query.series_uid
    elif query.level is not Level.STUDY and "SeriesInstanceUID" not in identifier:
        identifier.SeriesInstanceUID = ""
    return identifier


def study_query_json(query: QidoQuery) -> dict[str, Any]:
    """What selects the studies of a study-level query, as JSON (a job's payload; the
    same studies give the same JSON, so the same job)."""
    matches: list[dict[str, Any]] = []
    for match in sorted(query.matches, key=lambda m: m.keyword):
        if isinstance(match, RangeMatch):
            matches.append({"k": match.keyword, "vr": match.vr, "lo": match.low, "hi": match.high})
        else:
            matches.append({"k": match.keyword, "vr": match.vr, "v": sorted(match.values)})
    return {"level": query.level.name, "matches": matches, "fuzzy": query.fuzzy}


def study_query_from_json(data: dict[str, Any]) -> QidoQuery:
    matches: list[Match] = []
    for m in data["matches"]:
        if "v" in m:
            matches.append(ValueMatch(m["k"], m["vr"], tuple(m["v"])))
        else:
            matches.append(RangeMatch(m["k"], m["vr"], m["lo"], m["hi"]))
    return QidoQuery(Level[data["level"]], matches=tuple(matches), fuzzy=bool(data["fuzzy"]))
