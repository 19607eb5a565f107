"""DICOM Person Name (PN) -> FHIR HumanName, and the normalisation FHIR string search
uses (case- and accent-insensitive)."""

from __future__ import annotations

import unicodedata
from typing import Any

EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
_REPRESENTATIONS = ("ABC", "IDE", "SYL")  # alphabetic, ideographic, phonetic groups


def _human_name(group: str) -> dict[str, Any] | None:
    parts = [p.strip() for p in group.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    name: dict[str, Any] = {}
    text = " ".join(p for p in (prefix, given, middle, family, suffix) if p)
    if not text:
        return None
    name["text"] = text
    if family:
        name["family"] = family
    givens = [g for g in (given, middle) if g]
    if givens:
        name["given"] = givens
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name


def human_names(person_name: str) -> list[dict[str, Any]]:
    """HumanNames for each component group of a PN value; the ideographic and phonetic
    groups carry the ISO 21090 EN representation extension."""
    groups = person_name.split("=")
    names = []
    for index, group in enumerate(groups[:3]):
        name = _human_name(group)
        if name is None:
            continue
        if len(groups) > 1 and index > 0:
            name = {
                "extension": [{"url": EN_REPRESENTATION, "valueCode": _REPRESENTATIONS[index]}],
                **name,
            }
        names.append(name)
    return names


def display_name(person_name: str) -> str:
    names = human_names(person_name)
    return str(names[0]["text"]) if names else ""


def normalise(text: str) -> str:
    """Lower case, accents removed, whitespace collapsed: FHIR string matching."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


def _pack(parts: list[str]) -> str:
    """Parts joined as ``|a|b|`` so that ``LIKE '%|prefix%'`` is a starts-with on a part."""
    parts = [p for p in parts if p]
    return "|" + "|".join(parts) + "|" if parts else ""


def name_search_keys(person_name: str) -> dict[str, str]:
    """The Patient name search columns for a PN value: ``*_search`` normalised (for the
    default starts-with and :contains), ``*_exact`` as written (for :exact)."""
    family: list[str] = []
    given: list[str] = []
    other: list[str] = []
    for name in human_names(person_name):
        if "family" in name:
            family.append(name["family"])
        given.extend(name.get("given", []))
        other.extend([*name.get("prefix", []), *name.get("suffix", []), name["text"]])
    every = family + given + other
    return {
        "name_search": _pack([normalise(p) for p in every]),
        "family_search": _pack([normalise(p) for p in family]),
        "given_search": _pack([normalise(p) for p in given]),
        "name_exact": _pack(every),
        "family_exact": _pack(family),
        "given_exact": _pack(given),
    }
