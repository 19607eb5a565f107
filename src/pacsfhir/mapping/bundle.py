"""Searchset Bundles, OperationOutcomes and the subsetting of resources (pure)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
# Elements every ImagingStudy keeps under _elements (mandatory, plus the basics).
_ALWAYS_KEPT = ("resourceType", "id", "meta", "status", "subject")


def _mark_subsetted(resource: dict[str, Any]) -> None:
    meta = resource.setdefault("meta", {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]


def select_elements(resource: dict[str, Any], elements: Sequence[str]) -> dict[str, Any]:
    """``_elements``: keep the named top-level elements (and the mandatory ones)."""
    kept = {k: v for k, v in resource.items() if k in elements or k in _ALWAYS_KEPT}
    kept["meta"] = copy.deepcopy(resource.get("meta", {}))
    _mark_subsetted(kept)
    return kept


def summarise(resource: dict[str, Any], summary: str) -> dict[str, Any]:
    """``_summary=true|data|text`` for ImagingStudy (R4 isSummary: instances are not)."""
    if summary in ("", "false"):
        return resource
    result = copy.deepcopy(resource)
    if summary == "true":
        for series in result.get("series", []):
            series.pop("instance", None)
    elif summary == "text":
        result = {k: v for k, v in result.items() if k in (*_ALWAYS_KEPT, "text")}
    elif summary == "data":
        result.pop("text", None)
        return result
    _mark_subsetted(result)
    return result


def link_url(base: str, params: Sequence[tuple[str, str]]) -> str:
    return base + ("?" + urlencode(list(params)) if params else "")


def searchset(
    *,
    matches: Sequence[tuple[str, dict[str, Any]]],
    includes: Sequence[tuple[str, dict[str, Any]]] = (),
    total: int | None,
    self_url: str,
    next_url: str | None = None,
    first_url: str | None = None,
    outcome: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A searchset Bundle; entries are (fullUrl, resource)."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    links = [{"relation": "self", "url": self_url}]
    if first_url:
        links.append({"relation": "first", "url": first_url})
    if next_url:
        links.append({"relation": "next", "url": next_url})
    bundle["link"] = links
    entries = [
        {"fullUrl": url, "resource": resource, "search": {"mode": "match"}}
        for url, resource in matches
    ]
    entries += [
        {"fullUrl": url, "resource": resource, "search": {"mode": "include"}}
        for url, resource in includes
    ]
    if outcome is not None:
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return bundle


def operation_outcome(
    severity: str, code: str, diagnostics: str, expression: Sequence[str] = ()
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = list(expression)
    return {"resourceType": "OperationOutcome", "issue": [issue]}
