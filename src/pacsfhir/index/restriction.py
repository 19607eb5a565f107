"""SMART v2 search restrictions (``patient/ImagingStudy.rs?modality=CT``) as SQL over the
index, built by the FHIR search machinery itself (``search.parse`` then
``index.search.criterion_clause``): a restriction matches exactly the studies a FHIR
search with its parameters finds.

Fail closed: an alternative whose parameters this server cannot honour exactly (unknown,
malformed, a result parameter such as ``_count``, an empty value, a date compared ``ap``,
which depends on the time of the request) grants nothing; when no alternative is left,
``compile_alternatives`` refuses the request (403 naming the parameter at fault).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, and_, or_, select

from pacsfhir.errors import Forbidden, PacsFhirError
from pacsfhir.index.schema import study
from pacsfhir.index.search import criterion_clause
from pacsfhir.search.model import Criterion, DateValue
from pacsfhir.search.parse import CONTROL_PARAMS, parse_search

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Restriction:
    """One restricted scope's parameters (AND'ed), as written (compared and hashed: it
    keys remembered counts) and as parsed."""

    pairs: Pairs
    criteria: tuple[Criterion, ...] = field(compare=False, repr=False)


def _unusable(pairs: Pairs) -> str | None:
    """Why ``pairs`` cannot be honoured exactly; None when they can."""
    for name, value in pairs:
        if name in CONTROL_PARAMS:
            return f"{name}: a result parameter, not a condition on studies"
        if not value:
            return f"{name}: no value"
    return None


def _uses_the_clock(criterion: Criterion) -> bool:
    if criterion.chain is not None and _uses_the_clock(criterion.chain):
        return True
    return any(isinstance(v, DateValue) and v.prefix == "ap" for v in criterion.values)


def compile_one(pairs: Pairs) -> Restriction | str:
    """The restriction of one scope, or why it grants nothing."""
    why = _unusable(pairs)
    if why is not None:
        return why
    try:
        parsed = parse_search(pairs, strict=True)
    except PacsFhirError as exc:
        return exc.message
    if len(parsed.criteria) != len(pairs):  # pragma: no cover (every pair is a criterion)
        return "not every parameter is a condition"
    for criterion in parsed.criteria:
        if _uses_the_clock(criterion):
            return f"{criterion.param}: ap depends on the time of the request"
    return Restriction(pairs, parsed.criteria)


def compile_alternatives(alternatives: Iterable[Pairs]) -> tuple[Restriction, ...]:
    """The usable ones of ``alternatives`` (any one of which a visible study matches);
    403 when none is."""
    usable: list[Restriction] = []
    refused: list[str] = []
    for pairs in alternatives:
        compiled = compile_one(pairs)
        if isinstance(compiled, Restriction):
            usable.append(compiled)
        else:
            shown = "&".join(f"{n}={v}" for n, v in pairs)
            refused.append(f"?{shown} ({compiled})")
    if not usable:
        raise Forbidden(
            "the scopes granting this restrict it by search parameters this server cannot "
            "honour on ImagingStudy: " + "; ".join(refused or ["none given"])
        )
    return tuple(sorted(set(usable), key=lambda r: r.pairs))


def restriction_clause(alternatives: tuple[Restriction, ...]) -> ColumnElement[bool]:
    """``study`` rows matching any of ``alternatives``: ``study.pk IN (SELECT ...)``, the
    inner SELECT not correlated, so that the condition means the same inside a query
    joining series or instances (a restriction's ``modality`` is about some series of the
    study, not the row at hand)."""
    now = time.time_ns() // 1000
    matching = select(study.c.pk).where(
        or_(*(and_(*(criterion_clause(c, now) for c in r.criteria)) for r in alternatives))
    )
    return study.c.pk.in_(matching.correlate(None))
