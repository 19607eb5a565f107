"""What the gateway asks an upstream for a study search: the studies, then each study's
series and each series' instances, with the attributes the index keeps (so that an
ImagingStudy made from the answers is the one the files would give), the same way for a
DICOMweb and a DIMSE upstream (both answer ``search(QidoQuery)`` with DICOM JSON).

Instances are asked series by series: a C-FIND below the study needs its parents in a
hierarchical Study Root query. What an upstream does not return stays empty (a C-FIND
SCP returns what it has: often no Performing Physician, Body Part or Number of Frames),
but for the SOP Class UID an ImagingStudy instance cannot go without: when the answers
lack it, one header per series is asked for (``_complete_from_header``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from pacsfhir.search.qido import QidoQuery
from pacsfhir.upstream.errors import UpstreamError
from pacsfhir.upstream.query import UNIQUE_TAGS
from pacsfhir.vocabulary.levels import Level, keyword_set, tag_of

MAX_STUDIES = 100  # studies one search may bring in from upstream (each costs 2+ queries)

# The attributes the index keeps, by the level an upstream answers them at.
STUDY_KEYS = keyword_set(
    """PatientID IssuerOfPatientID PatientName PatientBirthDate PatientSex
    StudyInstanceUID StudyDate StudyTime TimezoneOffsetFromUTC AccessionNumber StudyID
    StudyDescription ReferringPhysicianName NameOfPhysiciansReadingStudy
    ProcedureCodeSequence ReasonForTheRequestedProcedure"""
)
SERIES_KEYS = keyword_set(
    """SeriesInstanceUID Modality SeriesNumber SeriesDescription BodyPartExamined
    Laterality SeriesDate SeriesTime PerformingPhysicianName OperatorsName"""
)
INSTANCE_KEYS = keyword_set(
    """SOPInstanceUID SOPClassUID InstanceNumber NumberOfFrames ContentLabel DocumentTitle
    ImageType Rows Columns BitsAllocated"""
)


SOP_CLASS = f"{tag_of('SOPClassUID'):08X}"
STUDY_TAGS = sorted(f"{tag_of(k):08X}" for k in STUDY_KEYS)
SERIES_TAGS = sorted(f"{tag_of(k):08X}" for k in SERIES_KEYS)
INSTANCE_HEADER_TAGS = sorted(f"{tag_of(k):08X}" for k in INSTANCE_KEYS)


class Searcher(Protocol):
    def search(self, query: QidoQuery) -> list[dict[str, Any]]: ...

    def header(self, study_uid: str, series_uid: str, sop_uid: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StudyAnswer:
    """One study as an upstream describes it, in DICOM JSON."""

    study: dict[str, Any]
    series: list[dict[str, Any]]
    instances: list[dict[str, Any]]


def _tags(keywords: frozenset[str]) -> frozenset[int]:
    return frozenset(tag_of(k) for k in keywords)


def uid_of(answer: dict[str, Any], level: Level) -> str:
    value = answer.get(f"{UNIQUE_TAGS[level]:08X}", {}).get("Value") or [""]
    return str(value[0])


def fetch_studies(
    upstream: Searcher, query: QidoQuery, max_studies: int = MAX_STUDIES
) -> list[StudyAnswer]:
    """The studies ``query`` (study level) finds upstream, each whole; UpstreamError
    past ``max_studies`` (the search must be narrowed)."""
    asked = replace(query, includes=query.includes | _tags(STUDY_KEYS))
    studies = [s for s in upstream.search(asked) if uid_of(s, Level.STUDY)]
    if len(studies) > max_studies:
        raise UpstreamError(
            f"the upstream has {len(studies)} studies for this search; at most {max_studies} "
            "are brought in at once: narrow the search"
        )
    return [fetch_study(upstream, study) for study in studies]


def fetch_study(upstream: Searcher, study: dict[str, Any]) -> StudyAnswer:
    study_uid = uid_of(study, Level.STUDY)
    series = [
        s
        for s in upstream.search(
            QidoQuery(Level.SERIES, study_uid=study_uid, includes=_tags(SERIES_KEYS))
        )
        if uid_of(s, Level.SERIES)
    ]
    instances: list[dict[str, Any]] = []
    for one in series:
        series_uid = uid_of(one, Level.SERIES)
        found = upstream.search(
            QidoQuery(
                Level.INSTANCE,
                study_uid=study_uid,
                series_uid=series_uid,
                includes=_tags(INSTANCE_KEYS),
            )
        )
        if found and any(SOP_CLASS not in i for i in found):
            _complete_from_header(upstream, study, one, found)
        instances += found
    return StudyAnswer(study, series, instances)


def _complete_from_header(
    upstream: Searcher,
    study: dict[str, Any],
    series: dict[str, Any],
    instances: list[dict[str, Any]],
) -> None:
    """An upstream that answers no SOP Class UID (dcmqrscp's C-FIND) is asked for the
    header of the series' first instance: its SOP Class UID stands for every instance of
    the series that has none (a series is of one SOP class as a rule; where it is not,
    those instances are shown with the first one's), and the study and series attributes
    the index keeps are taken from it where the answers had none (a Timezone Offset From
    UTC, say, without which ``started`` has no time). Costs one retrieve per series."""
    first = instances[0]
    study_uid = uid_of(study, Level.STUDY)
    header = upstream.header(study_uid, uid_of(series, Level.SERIES), uid_of(first, Level.INSTANCE))
    for level, tags in ((study, STUDY_TAGS), (series, SERIES_TAGS)):
        for tag in tags:
            if tag in header and not level.get(tag, {}).get("Value"):
                level[tag] = header[tag]
    for instance in instances:
        for tag in INSTANCE_HEADER_TAGS:
            missing = tag in header and not instance.get(tag, {}).get("Value")
            if missing and (tag == SOP_CLASS or instance is first):
                instance[tag] = header[tag]
