#!/usr/bin/env python3
"""Generate ``src/pacsfhir/vocabulary/modality_table.py`` from pydicom's PS3.16 dictionaries.

pydicom ships DICOM PS3.16's DCM concepts and context groups as Python modules
(``pydicom.sr``), generated from the standard. Imported by a server they cost it some
15 MB of memory for good, to name a few dozen modalities; this writes the part the server
needs into a small module instead:

* ``MODALITY_MEANINGS``: the Code Meaning of every DCM code that can be a Modality
  (0008,0060) value: those of CID 33 "Modality", and the other DCM codes written as a
  modality is (upper-case letters, digits and underscores, a letter first, at most 16
  characters: the retired modalities among them);
* ``ACQUISITION_MODALITIES``: the codes of CID 29 "Acquisition Modality", the value set
  FHIR R4 binds ImagingStudy.modality to.

Run from the repository root::

    .venv/bin/python scripts/generate_modality_table.py          # rewrite the module
    .venv/bin/python scripts/generate_modality_table.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "src" / "pacsfhir" / "vocabulary" / "modality_table.py"
MODALITY_CID = 33
ACQUISITION_MODALITY_CID = 29
_MODALITY_FORM = re.compile(r"[A-Z][A-Z0-9_]{0,15}")


def build() -> tuple[str, dict[str, str], frozenset[str]]:
    """pydicom's version, the meanings of the codes that can be modalities, and CID 29."""
    import pydicom
    from pydicom.sr import _cid_dict, _concepts_dict

    dcm = _concepts_dict.concepts["DCM"]

    def cid_codes(cid: int) -> dict[str, str]:
        keywords = _cid_dict.cid_concepts[cid]["DCM"]
        return {code: meaning for kw in keywords for code, (meaning, _) in dcm[kw].items()}

    meanings = cid_codes(MODALITY_CID)
    for entries in dcm.values():
        for code, (meaning, _cids) in entries.items():
            if _MODALITY_FORM.fullmatch(code):
                meanings.setdefault(code, meaning)
    acquisition = frozenset(cid_codes(ACQUISITION_MODALITY_CID))
    missing = acquisition - meanings.keys()
    if missing:
        raise SystemExit(f"CID 29 codes without a meaning: {sorted(missing)}")
    return pydicom.__version__, meanings, acquisition


def render(built: tuple[str, dict[str, str], frozenset[str]]) -> str:
    version, meanings, acquisition = built
    lines = [
        '"""DCM modality codes and their meanings, from DICOM PS3.16 as pydicom '
        f"{version} ships it.",
        "",
        "GENERATED FILE, do not edit. It is written by scripts/generate_modality_table.py;",
        "to regenerate, run from the repository root:",
        "",
        "    .venv/bin/python scripts/generate_modality_table.py",
        "",
        "MODALITY_MEANINGS maps each DCM code that can be a Modality (0008,0060) value (CID 33",
        '"Modality", and the retired modalities) to its Code Meaning; ACQUISITION_MODALITIES',
        'holds the codes of CID 29 "Acquisition Modality".',
        '"""',
        "",
        "from typing import Final",
        "",
        f'SOURCE: Final = "pydicom {version}: pydicom.sr DCM concepts, CID 29 and CID 33"',
        "",
        "MODALITY_MEANINGS: Final[dict[str, str]] = {",
        *(
            f"    {_literal(code)}: {_literal(meaning)},"
            for code, meaning in sorted(meanings.items())
        ),
        "}",
        "",
        "ACQUISITION_MODALITIES: Final[frozenset[str]] = frozenset(",
        "    {",
        *(f"        {_literal(code)}," for code in sorted(acquisition)),
        "    }",
        ")",
        "",
    ]
    return "\n".join(lines)


def _literal(text: str) -> str:
    """A Python string literal in double quotes (a JSON string is one)."""
    return json.dumps(text, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the module is stale")
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
