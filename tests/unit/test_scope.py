"""The index scope: what a request may see, narrowed and never widened (pure)."""

from __future__ import annotations

import pytest

from pacsfhir.index.scope import Scope

EVERYTHING = Scope()
A = Scope("a")
NOTHING = Scope(nothing=True)


@pytest.mark.parametrize(
    ("start", "narrow_to", "expected"),
    [
        (EVERYTHING, None, EVERYTHING),
        (EVERYTHING, "a", A),
        (A, None, A),
        (A, "a", A),
        (A, "b", NOTHING),  # the compartment of B under a token for A
        (NOTHING, "a", NOTHING),
        (NOTHING, None, NOTHING),
    ],
)
def test_narrow(start: Scope, narrow_to: str | None, expected: Scope) -> None:
    assert start.narrow(narrow_to) == expected


@pytest.mark.parametrize(
    ("scope", "patient", "admitted"),
    [
        (EVERYTHING, "a", True),
        (A, "a", True),
        (A, "b", False),
        (A, "A", False),  # ids are case-sensitive
        (NOTHING, "a", False),
    ],
)
def test_admits(scope: Scope, patient: str, admitted: bool) -> None:
    assert scope.admits(patient) is admitted


def test_keys_tell_scopes_apart() -> None:
    keys = {s.key for s in (EVERYTHING, A, Scope("b"), NOTHING)}
    assert len(keys) == 4


def test_clause_compiles_to_each_case() -> None:
    assert str(EVERYTHING.clause().compile()) == "true"
    assert str(NOTHING.clause().compile()) == "false"
    assert "patient.resource_id" in str(A.clause().compile())


@pytest.mark.parametrize(
    ("scope", "everything"), [(EVERYTHING, True), (A, False), (NOTHING, False)]
)
def test_everything(scope: Scope, everything: bool) -> None:
    """QIDO and STOW skip the condition only for this; a scope narrowed to nothing once
    slipped through a ``patient_id is not None`` test and saw every study."""
    assert scope.everything is everything
