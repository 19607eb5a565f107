"""DICOM Person Name -> FHIR HumanName, and string-search normalisation."""

from __future__ import annotations

from typing import Any

import pytest

from pacsfhir.vocabulary.names import EN_REPRESENTATION, human_names, name_search_keys, normalise

NAMES: list[tuple[str, list[dict[str, Any]]]] = [
    ("Buc^Jérôme", [{"text": "Jérôme Buc", "family": "Buc", "given": ["Jérôme"]}]),
    (
        "Adams^John Robert Quincy^^Rev.^B.A. M.Div.",
        [
            {
                "text": "Rev. John Robert Quincy Adams B.A. M.Div.",
                "family": "Adams",
                "given": ["John Robert Quincy"],
                "prefix": ["Rev."],
                "suffix": ["B.A. M.Div."],
            }
        ],
    ),
    (
        "Wang^XiaoDong^Jr",
        [{"text": "XiaoDong Jr Wang", "family": "Wang", "given": ["XiaoDong", "Jr"]}],
    ),
    ("Διονυσιος", [{"text": "Διονυσιος", "family": "Διονυσιος"}]),
    ("", []),
    ("^^^^", []),
    (
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        [
            {"text": "Tarou Yamada", "family": "Yamada", "given": ["Tarou"]},
            {
                "extension": [{"url": EN_REPRESENTATION, "valueCode": "IDE"}],
                "text": "太郎 山田",
                "family": "山田",
                "given": ["太郎"],
            },
            {
                "extension": [{"url": EN_REPRESENTATION, "valueCode": "SYL"}],
                "text": "たろう やまだ",
                "family": "やまだ",
                "given": ["たろう"],
            },
        ],
    ),
    (
        "=山田^太郎",  # no alphabetic group
        [
            {
                "extension": [{"url": EN_REPRESENTATION, "valueCode": "IDE"}],
                "text": "太郎 山田",
                "family": "山田",
                "given": ["太郎"],
            }
        ],
    ),
]


@pytest.mark.parametrize(("pn", "expected"), NAMES, ids=[n for n, _ in NAMES])
def test_human_names(pn: str, expected: list[dict[str, Any]]) -> None:
    assert human_names(pn) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Jérôme", "jerome"),
        ("ÄNEAS  Rüdiger", "aneas rudiger"),
        ("Straße", "strasse"),
        ("山田", "山田"),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_name_search_keys_pack_parts() -> None:
    keys = name_search_keys("Buc^Jérôme")
    assert keys["family_search"] == "|buc|"
    assert keys["given_search"] == "|jerome|"
    assert keys["name_search"] == "|buc|jerome|jerome buc|"
    assert keys["family_exact"] == "|Buc|"
    assert name_search_keys("")["name_search"] == ""
