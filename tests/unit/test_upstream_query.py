"""A parsed QIDO query as a QIDO-RS request and as C-FIND identifiers (pure)."""

from __future__ import annotations

import pytest

from pacsfhir.search.qido import parse_query
from pacsfhir.upstream.dicomweb import query_string
from pacsfhir.upstream.query import (
    MAX_IDENTIFIERS,
    NotExpressible,
    cfind_identifiers,
    qido_path,
    qido_requests,
)
from pacsfhir.vocabulary.levels import Level

STUDY = "1.2.3.4"
SERIES = "1.2.3.4.5"


@pytest.mark.parametrize(
    ("level", "study", "series", "path"),
    [
        (Level.STUDY, None, None, "/studies"),
        (Level.SERIES, None, None, "/series"),
        (Level.INSTANCE, None, None, "/instances"),
        (Level.SERIES, STUDY, None, f"/studies/{STUDY}/series"),
        (Level.INSTANCE, STUDY, None, f"/studies/{STUDY}/instances"),
        (Level.INSTANCE, STUDY, SERIES, f"/studies/{STUDY}/series/{SERIES}/instances"),
    ],
)
def test_qido_paths(level: Level, study: str | None, series: str | None, path: str) -> None:
    assert qido_path(parse_query(level, [], study, series)) == path


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("PatientID", "12345")], [("PatientID", "12345")]),
        ([("00100020", "A*")], [("PatientID", "A*")]),
        ([("StudyDate", "20200101-20201231")], [("StudyDate", "20200101-20201231")]),
        ([("StudyDate", "-20201231")], [("StudyDate", "-20201231")]),
        ([("StudyInstanceUID", "1.2,1.3")], [("StudyInstanceUID", "1.2,1.3")]),
        ([("ModalitiesInStudy", "CT,MR")], [("ModalitiesInStudy", "CT,MR")]),
        (
            [("PatientName", "doe"), ("fuzzymatching", "true")],
            [("PatientName", "doe"), ("fuzzymatching", "true")],
        ),
        (
            [("includefield", "StudyDescription"), ("includefield", "00081030")],
            [("includefield", "00081030")],
        ),
        ([("includefield", "all")], [("includefield", "all")]),
    ],
)
def test_qido_requests_say_what_was_asked(
    pairs: list[tuple[str, str]], expected: list[tuple[str, str]]
) -> None:
    """One request with the same parameters, unpaged (what comes back is paged again
    where it lands)."""
    assert qido_requests(parse_query(Level.STUDY, pairs)) == [expected]


def test_a_study_cfind_names_its_level_matches_and_return_keys() -> None:
    [identifier] = cfind_identifiers(
        parse_query(Level.STUDY, [("PatientID", "12345"), ("StudyDate", "20200101-")])
    )
    assert identifier.QueryRetrieveLevel == "STUDY"
    assert identifier.PatientID == "12345"
    assert identifier.StudyDate == "20200101-"
    for keyword in ("StudyInstanceUID", "PatientName", "ModalitiesInStudy", "AccessionNumber"):
        assert keyword in identifier, keyword
    assert not identifier.StudyInstanceUID  # a return key: universal matching


def test_the_path_fixes_the_parents_of_lower_levels() -> None:
    [identifier] = cfind_identifiers(parse_query(Level.INSTANCE, [], STUDY, SERIES))
    assert identifier.QueryRetrieveLevel == "IMAGE"
    assert (identifier.StudyInstanceUID, identifier.SeriesInstanceUID) == (STUDY, SERIES)
    assert "SOPInstanceUID" in identifier


def test_uid_lists_stay_one_cfind_other_lists_become_several() -> None:
    [uids] = cfind_identifiers(parse_query(Level.STUDY, [("StudyInstanceUID", "1.2,1.3")]))
    assert uids.StudyInstanceUID == ["1.2", "1.3"]
    several = cfind_identifiers(
        parse_query(Level.STUDY, [("PatientID", "A\\B"), ("AccessionNumber", "X\\Y\\Z")])
    )
    assert sorted((i.PatientID, i.AccessionNumber) for i in several) == [
        (p, a) for p in "AB" for a in "XYZ"
    ]


def test_fuzzy_names_are_not_sent_as_exact_ones() -> None:
    [identifier] = cfind_identifiers(
        parse_query(Level.STUDY, [("PatientName", "john"), ("fuzzymatching", "true")])
    )
    assert not identifier.PatientName  # universal: filtered where the answer lands


def test_too_many_combinations_are_refused() -> None:
    values = "\\".join(f"P{n}" for n in range(MAX_IDENTIFIERS + 1))
    with pytest.raises(NotExpressible):
        cfind_identifiers(parse_query(Level.STUDY, [("PatientID", values)]))


def test_qido_requests_split_lists_of_free_text_only() -> None:
    query = parse_query(
        Level.STUDY,
        [
            ("AccessionNumber", "A1\\A2"),
            ("StudyInstanceUID", "1.2,1.3"),
            ("ModalitiesInStudy", "CT"),
        ],
    )
    requests = qido_requests(query)
    assert [r[:3] for r in requests] == [
        [("AccessionNumber", "A1"), ("StudyInstanceUID", "1.2,1.3"), ("ModalitiesInStudy", "CT")],
        [("AccessionNumber", "A2"), ("StudyInstanceUID", "1.2,1.3"), ("ModalitiesInStudy", "CT")],
    ]
    assert all(("limit", str(query.limit)) not in r for r in requests)  # unpaged


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ([("PatientName", "DOE^J*")], "PatientName=DOE^J*"),
        ([("AccessionNumber", "A\\B")], "AccessionNumber=A\\B"),
        ([("StudyInstanceUID", "1.2,1.3")], "StudyInstanceUID=1.2,1.3"),
        ([("StudyDescription", "a&b=c d?#")], "StudyDescription=a%26b%3Dc%20d%3F%23"),
        ([("PatientName", "Иван")], "PatientName=%D0%98%D0%B2%D0%B0%D0%BD"),
    ],
)
def test_query_strings_escape_only_what_must_be(params: list[tuple[str, str]], text: str) -> None:
    assert query_string(params) == text
