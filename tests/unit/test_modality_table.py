"""The DCM modality table generated from pydicom's PS3.16 dictionaries: current, and
giving the meaning pydicom's full dictionaries give for every code that can be a
Modality value (what ``vocabulary.codes`` looked up there before the table replaced the
15 MB import)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pacsfhir.vocabulary import codes, modality_table
from tests.support.scripts import load_file

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "generate_modality_table.py"


generator = load_file("_generate_modality_table_under_test", GENERATOR)


def test_generated_module_is_up_to_date() -> None:
    expected = generator.render(generator.build())
    assert Path(modality_table.__file__).read_text(encoding="utf-8") == expected, (
        "regenerate with: .venv/bin/python scripts/generate_modality_table.py"
    )


def _meanings(cid: int | None = None) -> dict[str, set[str]]:
    """Each DCM code's meanings in pydicom's dictionaries (a code can stand under several
    keywords, with different meanings), of the concepts in context group ``cid`` only
    when it is given."""
    from pydicom.sr import _concepts_dict

    found: dict[str, set[str]] = {}
    for entries in _concepts_dict.concepts["DCM"].values():
        for code, (meaning, cids) in entries.items():
            if cid is None or cid in cids:
                found.setdefault(code, set()).add(meaning)
    return found


def test_every_code_written_as_a_modality_has_one_of_pydicoms_meanings() -> None:
    every = _meanings()
    modality_like = {c for c in every if re.fullmatch(r"[A-Z][A-Z0-9_]{0,15}", c)}
    assert modality_like <= modality_table.MODALITY_MEANINGS.keys()
    in_cid_33 = _meanings(33)
    for code, meaning in modality_table.MODALITY_MEANINGS.items():
        assert meaning in in_cid_33.get(code, every[code]), code  # CID 33's when it has one


def test_acquisition_modalities_are_cid_29() -> None:
    assert _meanings(29).keys() == modality_table.ACQUISITION_MODALITIES


@pytest.mark.parametrize(
    ("modality", "display", "acquisition"),
    [
        ("CT", "Computed Tomography", True),
        ("MR", "Magnetic Resonance", True),
        ("US", "Ultrasound", True),
        ("DX", "Digital Radiography", True),
        ("SR", "Structured Report Document", False),
        ("KO", "Key Object Selection", False),
        ("SEG", "Segmentation", False),
        ("LS", "Laser Scan", True),  # CID 29 and 33, not the "Laser Surface Scan" of CID 9573
        ("DS", "Digital Subtraction Angiography", False),  # retired
        ("XYZ", None, False),
        ("", None, False),
    ],
)
def test_modality_coding(modality: str, display: str | None, acquisition: bool) -> None:
    coding = codes.modality_coding(modality)
    assert coding.get("display") == display
    assert coding["system"] == "http://dicom.nema.org/resources/ontology/DCM"
    assert codes.is_acquisition_modality(modality) is acquisition
