"""The Body Part Examined and Laterality -> SNOMED CT tables generated from DICOM PS3.16.

The expected rows below were read in DICOM PS3.16 2024c, Annex L Table L-1 "Corresponding Codes
and Terms for Human Use", and in CID 244 "Laterality" / CID 247 "Laterality Left-Right Only".
When the excerpts in scripts/data/ move to another edition, check them again at the source.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.scripts import load_file

ROOT = Path(__file__).resolve().parents[2]
TABLE_MODULE = ROOT / "src" / "pacsfhir" / "vocabulary" / "body_part_table.py"
GENERATOR = ROOT / "scripts" / "generate_body_part_table.py"
BODY_PART_DATA = ROOT / "scripts" / "data" / "dicom_ps3.16_table_L-1.xml"
XHTML = "{http://www.w3.org/1999/xhtml}"


table = load_file("_pacsfhir_body_part_table_under_test", TABLE_MODULE)
generator = load_file("_generate_body_part_table_under_test", GENERATOR)


@pytest.mark.parametrize(
    ("term", "code", "display"),
    [
        ("CHEST", "43799004", "Chest"),
        ("ABDOMEN", "818981001", "Abdomen"),
        ("HEAD", "69536005", "Head"),
        ("CSPINE", "122494005", "Cervical spine"),
        ("KNEE", "72696002", "Knee"),
        ("BREAST", "76752008", "Breast"),
        ("PELVIS", "816092008", "Pelvis"),
        ("WHOLEBODY", "38266002", "Entire body"),
        # the term is not the meaning: SSPINE is the sacrum
        ("SSPINE", "54735007", "Sacrum"),
        # cut to the 16 characters of a CS value
        ("NECKCHESTABDPELV", "416319003", "Neck, Chest, Abdomen and Pelvis"),
        # a term that starts with a digit
        ("3RDVENTRICLE", "49841001", "Third ventricle"),
        # a ten-digit identifier
        ("CTSPINE", "1217257000", "Cervico-thoracic spine"),
        # two terms share one code
        ("THORAX", "43799004", "Thorax"),
        ("ENDOVAGINAL", "76784001", "Endo-vaginal"),
        ("VAGINA", "76784001", "Vagina"),
    ],
)
def test_rows_as_read_in_the_standard(term: str, code: str, display: str) -> None:
    assert table.BODY_PART_SNOMED[term] == (code, display)


@pytest.mark.parametrize(
    ("value", "code", "display"),
    [("R", "24028007", "Right"), ("L", "7771000", "Left"), ("B", "51440002", "Bilateral")],
)
def test_laterality_as_read_in_cid_244(value: str, code: str, display: str) -> None:
    assert table.LATERALITY_SNOMED[value] == (code, display)


def test_laterality_has_only_r_l_b() -> None:
    # "U" (unpaired) has no concept in CID 244; its "Unilateral" (66459002) means another thing
    assert set(table.LATERALITY_SNOMED) == {"R", "L", "B"}


def test_terms_without_code_are_kept_apart() -> None:
    without_code = table.BODY_PART_TERMS_WITHOUT_CODE
    assert without_code == {"FETALARM", "FETALDIGIT", "FETALHEART", "FETALLEG", "FETALPOLE"}
    assert not without_code & table.BODY_PART_SNOMED.keys()


def test_terms_are_dicom_cs_values() -> None:
    for term in [*table.BODY_PART_SNOMED, *table.BODY_PART_TERMS_WITHOUT_CODE]:
        assert re.fullmatch(r"[A-Z0-9_ ]{1,16}", term), term
        assert term == term.strip()


def test_verhoeff_check() -> None:
    assert generator.verhoeff_valid("818981001")
    assert generator.verhoeff_valid("1217257000")
    assert not generator.verhoeff_valid("818981002")
    assert not generator.verhoeff_valid("818981010")


def test_codes_are_snomed_concept_ids() -> None:
    pairs = [*table.BODY_PART_SNOMED.values(), *table.LATERALITY_SNOMED.values()]
    for code, display in pairs:
        assert re.fullmatch(r"[1-9][0-9]{5,17}", code), code
        assert code[-3:-1] in ("00", "10"), f"{code} is not a concept identifier"
        assert generator.verhoeff_valid(code), f"{code} fails its check digit"
        assert display
        assert display == display.strip()


def _dict_keys(name: str) -> list[str]:
    tree = ast.parse(TABLE_MODULE.read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
        ):
            assert isinstance(node.value, ast.Dict)
            return [ast.literal_eval(key) for key in node.value.keys if key is not None]
    raise AssertionError(f"{name} is not assigned in {TABLE_MODULE}")


@pytest.mark.parametrize("name", ["BODY_PART_SNOMED", "LATERALITY_SNOMED"])
def test_no_duplicate_keys_in_the_generated_literal(name: str) -> None:
    keys = _dict_keys(name)
    assert len(keys) == len(set(keys))
    assert len(keys) == len(getattr(table, name))


def _source_rows() -> tuple[list[str], list[list[str]]]:
    """Table L-1 in the excerpt, read here without the generator."""
    root = ET.parse(BODY_PART_DATA).getroot()
    for div in root.iter(f"{XHTML}div"):
        if div.find(f"{XHTML}a[@id='table_L-1']") is not None:
            header = [
                "".join(th.itertext()).strip() for th in div.iterfind(f".//{XHTML}thead//{XHTML}th")
            ]
            rows = [
                ["".join(td.itertext()).strip() for td in tr.iterfind(f"{XHTML}td")]
                for tr in div.iterfind(f".//{XHTML}tbody/{XHTML}tr")
            ]
            return header, rows
    raise AssertionError(f"no Table L-1 in {BODY_PART_DATA}")


def test_counts_match_the_source_table() -> None:
    header, rows = _source_rows()
    term, code = header.index("Body Part Examined"), header.index("Code Value")
    with_term = [row for row in rows if row[term]]
    source_rows: int = table.SOURCE_TABLE_ROWS
    assert source_rows == len(rows)
    assert len(table.BODY_PART_SNOMED) == sum(1 for row in with_term if row[code])
    assert len(table.BODY_PART_TERMS_WITHOUT_CODE) == sum(1 for row in with_term if not row[code])
    assert {row[term] for row in with_term} == (
        table.BODY_PART_SNOMED.keys() | table.BODY_PART_TERMS_WITHOUT_CODE
    )


def test_counts_of_the_2024c_edition() -> None:
    if table.DICOM_EDITION != "2024c":
        pytest.skip("counts read in the 2024c edition")
    assert table.SOURCE_TABLE_ROWS == 398  # 80 rows have no Body Part Examined term
    assert len(table.BODY_PART_SNOMED) == 313
    assert len(table.BODY_PART_TERMS_WITHOUT_CODE) == 5


def test_source_names_the_edition() -> None:
    assert re.fullmatch(r"\d{4}[a-z]", table.DICOM_EDITION)
    assert f"PS3.16 {table.DICOM_EDITION}" in table.SOURCE
    release = f"DICOM PS3.16 {table.DICOM_EDITION} - Content Mapping Resource"
    assert release in BODY_PART_DATA.read_text(encoding="utf-8")
    assert table.SNOMED_SYSTEM == "http://snomed.info/sct"


def test_generated_module_is_up_to_date() -> None:
    expected = generator.render(generator.build())
    assert TABLE_MODULE.read_text(encoding="utf-8") == expected, (
        "regenerate with: .venv/bin/python scripts/generate_body_part_table.py"
    )


EXCERPT = """<html xmlns="http://www.w3.org/1999/xhtml"><body>
<p><span class="documentreleaseinformation">DICOM PS3.16 2099a - Content Mapping Resource</span></p>
<div class="table"><a id="table_L-1"/><p class="title"><strong>Table L-1. Test</strong></p>
<table><thead><tr><th>Coding Scheme Designator</th><th>Code Value</th><th>Code Meaning</th>
<th>Body Part Examined</th></tr></thead><tbody>
{rows}
</tbody></table></div></body></html>"""


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["SCT|818981001|Abdomen|ABDOMEN", "SCT|818982008|Abdomen and Pelvis|ABDOMEN"], "twice"),
        (["SCT|818981002|Abdomen|ABDOMEN"], "not a SNOMED CT concept identifier"),
        (["SRT|T-D4000|Abdomen|ABDOMEN"], "not SCT"),
        (["SCT|818981001|Abdomen|abdomen"], "not a Body Part Examined term"),
        (["SCT|818981001|Abdomen|ABDOMENANDPELVISX"], "not a Body Part Examined term"),
    ],
)
def test_generator_rejects_a_bad_source(tmp_path: Path, rows: list[str], message: str) -> None:
    cells = (
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in row.split("|")) + "</tr>" for row in rows
    )
    path = tmp_path / "excerpt.xml"
    path.write_text(EXCERPT.format(rows="\n".join(cells)), encoding="utf-8")
    excerpt = generator.read_excerpt(path)
    assert excerpt.edition == "2099a"
    with pytest.raises(generator.SourceError, match=message):
        generator.body_parts(excerpt.table("table_L-1"))
