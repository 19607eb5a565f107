"""The index scope: what a request may see, narrowed and never widened (pure)."""

from __future__ import annotations

import pytest

from pacsfhir.errors import Forbidden
from pacsfhir.index.scope import Scope

EVERYTHING = Scope()
A = Scope(("a",))
A_AND_B = Scope(("a", "b"))
NOTHING = Scope(nothing=True)


@pytest.mark.parametrize(
    ("start", "narrow_to", "expected"),
    [
        (EVERYTHING, None, EVERYTHING),
        (EVERYTHING, "a", A),
        (A, None, A),
        (A, "a", A),
        # the compartment of B under a token for A: studies of both, which only a DICOM
        # patient linked to an EHR patient has (see test_admits)
        (A, "b", A_AND_B),
        (A_AND_B, "a", A_AND_B),
        (NOTHING, "a", NOTHING),
        (NOTHING, None, NOTHING),
    ],
)
def test_narrow(start: Scope, narrow_to: str | None, expected: Scope) -> None:
    assert start.narrow(narrow_to) == expected


@pytest.mark.parametrize(
    ("scope", "patient", "linked_to", "admitted"),
    [
        (EVERYTHING, "a", None, True),
        (A, "a", None, True),
        (A, "b", None, False),
        (A, "A", None, False),  # ids are case-sensitive
        (A, "b", "a", True),  # DICOM patient b, linked to EHR patient a
        (A, "a", "b", True),
        (A, "b", "c", False),
        (A_AND_B, "a", "b", True),  # b's $wado-rs base under a token for a, b linked to a
        (A_AND_B, "a", None, False),
        (A_AND_B, "b", "c", False),
        (NOTHING, "a", None, False),
    ],
)
def test_admits(scope: Scope, patient: str, linked_to: str | None, admitted: bool) -> None:
    assert scope.admits(patient, linked_to) is admitted


def test_keys_tell_scopes_apart() -> None:
    keys = {s.key for s in (EVERYTHING, A, Scope(("b",)), A_AND_B, NOTHING)}
    assert len(keys) == 5


def test_clause_compiles_to_each_case() -> None:
    assert str(EVERYTHING.clause().compile()) == "true"
    assert str(NOTHING.clause().compile()) == "false"
    assert "patient.resource_id" in str(A.clause().compile())
    assert "patient.linked_to" in str(A.clause().compile())
    assert str(A_AND_B.clause().compile()).count("patient.linked_to") == 2


@pytest.mark.parametrize(
    ("scope", "everything"), [(EVERYTHING, True), (A, False), (NOTHING, False)]
)
def test_everything(scope: Scope, everything: bool) -> None:
    """QIDO and STOW skip the condition only for this; a scope narrowed to nothing once
    slipped through a ``patient_id is not None`` test and saw every study."""
    assert scope.everything is everything


CT = (("modality", "CT"),)
MR = (("modality", "MR"),)
A_CT = A.restrict([CT])


def test_restrict_narrows_and_keeps_patients() -> None:
    assert EVERYTHING.restrict(None) == EVERYTHING
    assert A_CT.patients == ("a",)
    assert [r.pairs for r in A_CT.restrictions[0]] == [CT]
    assert A_CT.restrict([CT]) == A_CT  # the same narrowing twice is one
    assert A_CT.restrict([MR]).restrictions[1][0].pairs == MR  # a second one adds
    assert EVERYTHING.restrict([CT]).narrow("a") == A_CT  # narrowing keeps restrictions
    assert NOTHING.restrict([CT]) == NOTHING


def test_restricted_scope_is_not_everything() -> None:
    """QIDO skips the clause only when everything: a restriction must keep it."""
    restricted = EVERYTHING.restrict([CT])
    assert not restricted.everything
    assert restricted.restricted
    assert not A.restricted
    assert 'series."Modality"' in str(restricted.clause().compile())


def test_keys_tell_restrictions_apart() -> None:
    scopes = [
        EVERYTHING,
        EVERYTHING.restrict([CT]),
        EVERYTHING.restrict([MR]),
        EVERYTHING.restrict([CT, MR]),
        A,
        A_CT,
        A_CT.restrict([MR]),
    ]
    assert len({s.key for s in scopes}) == len(scopes)
    assert len(set(scopes)) == len(scopes)  # QIDO keys its counts by the scope itself
    assert EVERYTHING.restrict([MR, CT]).key == EVERYTHING.restrict([CT, MR]).key


@pytest.mark.parametrize(
    "pairs",
    [
        (("foo", "bar"),),  # not a search parameter
        (("_count", "1"),),  # result parameters
        (("_sort", "started"),),
        (("_include", "ImagingStudy:subject"),),
        (("_summary", "count"),),
        (("_elements", "id"),),
        (("modality", ""),),  # no value: would be no condition
        (("modality:below", "CT"),),  # a modifier this server does not support
        (("started", "2020-13"),),  # malformed
        (("started", "ap2020"),),  # depends on the time of the request
        (("modality", "CT"), ("foo", "bar")),  # one bad parameter spoils the alternative
    ],
)
def test_unusable_restriction_grants_nothing(pairs: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(Forbidden) as refused:
        EVERYTHING.restrict([pairs])
    assert pairs[-1][0] in refused.value.message


def test_an_unusable_alternative_is_dropped() -> None:
    restricted = EVERYTHING.restrict([(("foo", "bar"),), CT])
    assert [r.pairs for r in restricted.restrictions[0]] == [CT]
