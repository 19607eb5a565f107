#!/usr/bin/env python3
"""Generate ``src/pacsfhir/vocabulary/body_part_table.py`` from the DICOM standard.

The inputs are two excerpts of DICOM PS3.16 "Content Mapping Resource", kept in
``scripts/data/`` and cut out of NEMA's HTML rendering of the standard:

* ``dicom_ps3.16_table_L-1.xml``: Annex L "Correspondence of Anatomic Region Codes and Body Part
  Examined Defined Terms", Table L-1 "Corresponding Codes and Terms for Human Use";
* ``dicom_ps3.16_cid_244.xml``: CID 244 "Laterality" and CID 247 "Laterality Left-Right Only",
  which CID 244 includes.

Run from the repository root::

    .venv/bin/python scripts/generate_body_part_table.py          # rewrite the module
    .venv/bin/python scripts/generate_body_part_table.py --check  # exit 1 if it is stale

To move to another edition, save NEMA's pages ``part16/chapter_L.html``,
``part16/sect_CID_244.html`` and ``part16/sect_CID_247.html`` of that edition (from
``https://dicom.nema.org/medical/dicom/<edition>/output/chtml/``), cut the excerpts anew and
regenerate::

    .venv/bin/python scripts/generate_body_part_table.py extract \\
        --chapter-l chapter_L.html --cid sect_CID_244.html --cid sect_CID_247.html
    .venv/bin/python scripts/generate_body_part_table.py
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "scripts" / "data"
BODY_PART_DATA = DATA / "dicom_ps3.16_table_L-1.xml"
LATERALITY_DATA = DATA / "dicom_ps3.16_cid_244.xml"
OUTPUT = ROOT / "src" / "pacsfhir" / "vocabulary" / "body_part_table.py"

BODY_PART_TABLE = "table_L-1"
LATERALITY_TABLE = "table_CID_244"
LATERALITY_INCLUDED_TABLES = ("table_CID_247",)

SCHEME = "Coding Scheme Designator"
CODE = "Code Value"
MEANING = "Code Meaning"
BODY_PART = "Body Part Examined"

# Laterality (0020,0060) has the Enumerated Values "R" (right) and "L" (left); Image Laterality
# (0020,0062) and Frame Laterality (0020,9072) add "B" (both left and right) and "U" (unpaired)
# (PS3.3 C.7.3.1, C.8.11.2). Each value is matched to the CID 244 concept of the same meaning;
# "U" has none (CID 244's "Unilateral" means one side, not an unpaired structure).
LATERALITY_MEANINGS = {"R": "Right", "L": "Left", "B": "Bilateral"}

RELEASE = re.compile(r"DICOM PS3\.16 (?P<edition>\d{4}[a-z]) - Content Mapping Resource")
SCTID = re.compile(r"[1-9][0-9]{5,17}")
CS_TERM = re.compile(r"[A-Z0-9_ ]{1,16}")  # a CS value: upper case, at most 16 characters
NEMA_CHTML = "https://dicom.nema.org/medical/dicom/{edition}/output/chtml/part16/{page}"


class SourceError(Exception):
    """The source excerpt does not have the expected shape or content."""


@dataclass(frozen=True)
class Cell:
    text: str
    links: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    table_id: str
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]

    def column(self, name: str) -> int:
        try:
            return self.header.index(name)
        except ValueError:
            raise SourceError(f"{self.table_id}: no column {name!r} in {self.header}") from None


@dataclass(frozen=True)
class Excerpt:
    release: str
    tables: dict[str, Table]

    @property
    def edition(self) -> str:
        match = RELEASE.fullmatch(self.release)
        if match is None:
            raise SourceError(f"unexpected release information {self.release!r}")
        return match["edition"]

    def table(self, table_id: str) -> Table:
        try:
            return self.tables[table_id]
        except KeyError:
            raise SourceError(f"no {table_id} in the excerpt") from None


@dataclass(frozen=True)
class Tables:
    edition: str
    source_rows: int
    body_parts: dict[str, tuple[str, str]]
    terms_without_code: tuple[str, ...]
    laterality: dict[str, tuple[str, str]]


# ---------------------------------------------------------------- reading NEMA's HTML


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _has_class(element: ET.Element, name: str) -> bool:
    return name in (element.get("class") or "").split()


def _children(element: ET.Element, tag: str) -> Iterator[ET.Element]:
    return (child for child in element.iter() if _local(child.tag) == tag)


def _cell(element: ET.Element) -> Cell:
    links = tuple(a.get("href", "") for a in _children(element, "a") if a.get("href"))
    return Cell(_normal("".join(element.itertext())), links)


def _table(div: ET.Element) -> Table | None:
    anchors = [a.get("id", "") for a in _children(div, "a") if a.get("id", "").startswith("table_")]
    tables = list(_children(div, "table"))
    if not anchors or not tables:
        return None
    titles = [_normal("".join(p.itertext())) for p in _children(div, "p") if _has_class(p, "title")]
    table = tables[0]
    header: tuple[str, ...] = ()
    rows: list[tuple[Cell, ...]] = []
    for section in table:
        for tr in (row for row in section if _local(row.tag) == "tr"):
            cells = tuple(_cell(c) for c in tr if _local(c.tag) in ("td", "th"))
            if _local(section.tag) == "thead":
                header = tuple(cell.text for cell in cells)
            else:
                rows.append(cells)
    return Table(anchors[0], titles[0] if titles else "", header, tuple(rows))


def read_excerpt(path: Path) -> Excerpt:
    """The tables of one of NEMA's chunked HTML pages of PS3.16, or of an excerpt of them."""
    root = ET.parse(path).getroot()
    releases = {
        _normal("".join(e.itertext()))
        for e in root.iter()
        if _has_class(e, "documentreleaseinformation")
    }
    if len(releases) != 1:
        raise SourceError(f"{path}: expected one release statement, found {sorted(releases)}")
    tables: dict[str, Table] = {}
    for div in root.iter():
        if _local(div.tag) == "div" and _has_class(div, "table"):
            table = _table(div)
            if table is not None:
                tables[table.table_id] = table
    return Excerpt(releases.pop(), tables)


# ---------------------------------------------------------------- checks


def verhoeff_valid(number: str) -> bool:
    """SNOMED CT identifiers end with a Verhoeff check digit."""
    d = (
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
        (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
        (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
        (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
        (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
        (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
        (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
        (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
        (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
        (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
    )
    p = (
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
        (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
        (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
        (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
        (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
        (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
        (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
        (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
    )
    check = 0
    for i, digit in enumerate(reversed(number)):
        check = d[check][p[i % 8][int(digit)]]
    return check == 0


def check_concept_id(code: str, where: str) -> None:
    """A SNOMED CT concept identifier: digits, partition 00 or 10, valid check digit."""
    if not SCTID.fullmatch(code) or code[-3:-1] not in ("00", "10") or not verhoeff_valid(code):
        raise SourceError(f"{where}: {code!r} is not a SNOMED CT concept identifier")


# ---------------------------------------------------------------- the mappings


def body_parts(table: Table) -> tuple[dict[str, tuple[str, str]], tuple[str, ...]]:
    """Body Part Examined term -> (SCT code, Code Meaning), and the terms with no code."""
    scheme, code, meaning, term = (
        table.column(name) for name in (SCHEME, CODE, MEANING, BODY_PART)
    )
    mapped: dict[str, tuple[str, str]] = {}
    uncoded: list[str] = []
    for number, row in enumerate(table.rows, 1):
        where = f"{table.table_id} row {number}"
        if len(row) != len(table.header):
            raise SourceError(f"{where}: {len(row)} cells, expected {len(table.header)}")
        value = row[term].text
        if not value:
            continue  # an anatomic region without a Body Part Examined term
        if not CS_TERM.fullmatch(value):
            raise SourceError(f"{where}: {value!r} is not a Body Part Examined term")
        if value in mapped or value in uncoded:
            raise SourceError(f"{where}: {value!r} appears twice")
        if not row[code].text and not row[scheme].text:
            uncoded.append(value)
            continue
        if row[scheme].text != "SCT":
            raise SourceError(f"{where}: {value!r} is coded in {row[scheme].text!r}, not SCT")
        check_concept_id(row[code].text, where)
        if not row[meaning].text:
            raise SourceError(f"{where}: {value!r} has no Code Meaning")
        mapped[value] = (row[code].text, row[meaning].text)
    return mapped, tuple(uncoded)


def _concepts(excerpt: Excerpt, table_id: str) -> Iterator[tuple[str, str, str]]:
    """(scheme, code, meaning) of a context group table, following its "Include" rows."""
    table = excerpt.table(table_id)
    scheme, code, meaning = (table.column(name) for name in (SCHEME, CODE, MEANING))
    for row in table.rows:
        if len(row) == 1 and row[0].text.startswith("Include"):
            for link in row[0].links:
                included = "table_" + link.removesuffix(".html").removeprefix("sect_")
                if included not in LATERALITY_INCLUDED_TABLES:
                    raise SourceError(f"{table_id}: unexpected include {link!r}")
                yield from _concepts(excerpt, included)
        else:
            yield row[scheme].text, row[code].text, row[meaning].text


def laterality(excerpt: Excerpt) -> dict[str, tuple[str, str]]:
    """Laterality value -> (SCT code, Code Meaning) from CID 244."""
    by_meaning: dict[str, tuple[str, str]] = {}
    for scheme, code, meaning in _concepts(excerpt, LATERALITY_TABLE):
        if scheme != "SCT":
            raise SourceError(f"{LATERALITY_TABLE}: {meaning!r} is coded in {scheme!r}")
        check_concept_id(code, LATERALITY_TABLE)
        by_meaning[meaning] = (code, meaning)
    missing = sorted(set(LATERALITY_MEANINGS.values()) - set(by_meaning))
    if missing:
        raise SourceError(f"{LATERALITY_TABLE}: no concept for {missing}")
    return {value: by_meaning[meaning] for value, meaning in LATERALITY_MEANINGS.items()}


def build(body_part_data: Path = BODY_PART_DATA, laterality_data: Path = LATERALITY_DATA) -> Tables:
    body_part_excerpt = read_excerpt(body_part_data)
    laterality_excerpt = read_excerpt(laterality_data)
    if body_part_excerpt.edition != laterality_excerpt.edition:
        raise SourceError(
            f"the excerpts are of different editions: {body_part_excerpt.edition} and "
            f"{laterality_excerpt.edition}"
        )
    table = body_part_excerpt.table(BODY_PART_TABLE)
    mapped, uncoded = body_parts(table)
    return Tables(
        edition=body_part_excerpt.edition,
        source_rows=len(table.rows),
        body_parts=mapped,
        terms_without_code=uncoded,
        laterality=laterality(laterality_excerpt),
    )


# ---------------------------------------------------------------- writing the module

LINE_LENGTH = 100

MODULE_DOC = '''\
"""Body Part Examined and Laterality as SNOMED CT codings, from DICOM PS3.16 {edition}.

GENERATED FILE, do not edit. It is written by scripts/generate_body_part_table.py from the
excerpts of the DICOM standard in scripts/data/; to regenerate, run from the repository root:

    .venv/bin/python scripts/generate_body_part_table.py

BODY_PART_SNOMED maps each Body Part Examined (0018,0015) Defined Term of PS3.16 Annex L,
Table L-1 "Corresponding Codes and Terms for Human Use", to the SNOMED CT code and the Code
Meaning of the corresponding anatomic region. BODY_PART_TERMS_WITHOUT_CODE holds the Defined
Terms of that table that have no code. LATERALITY_SNOMED maps the Laterality (0020,0060) and
Image Laterality (0020,0062) values R, L and B to the codes of CID 244 "Laterality".
"""
'''


def _literal(text: str) -> str:
    if "\\" in text or '"' in text or not text.isprintable():
        return repr(text)
    return f'"{text}"'


def _entries(mapping: dict[str, tuple[str, str]], keys: Sequence[str]) -> list[str]:
    lines = []
    for key in keys:
        code, display = mapping[key]
        one_line = f"    {_literal(key)}: ({_literal(code)}, {_literal(display)}),"
        if len(one_line) <= LINE_LENGTH:
            lines.append(one_line)
        else:
            lines += [
                f"    {_literal(key)}: (",
                f"        {_literal(code)},",
                f"        {_literal(display)},",
                "    ),",
            ]
    return lines


def render(tables: Tables) -> str:
    source = f"DICOM PS3.16 {tables.edition}: Annex L Table L-1, CID 244 Laterality (with CID 247)"
    lines = [
        MODULE_DOC.format(edition=tables.edition),
        "from typing import Final",
        "",
        f"SOURCE: Final = {_literal(source)}",
        f"DICOM_EDITION: Final = {_literal(tables.edition)}",
        'SNOMED_SYSTEM: Final = "http://snomed.info/sct"',
        "",
        "# Rows of Table L-1 read, with or without a Body Part Examined term.",
        f"SOURCE_TABLE_ROWS: Final = {tables.source_rows}",
        "",
        "BODY_PART_SNOMED: Final[dict[str, tuple[str, str]]] = {",
        *_entries(tables.body_parts, sorted(tables.body_parts)),
        "}",
        "",
        "BODY_PART_TERMS_WITHOUT_CODE: Final[frozenset[str]] = frozenset(",
        "    {",
        *(f"        {_literal(term)}," for term in sorted(tables.terms_without_code)),
        "    }",
        ")",
        "",
        "LATERALITY_SNOMED: Final[dict[str, tuple[str, str]]] = {",
        *_entries(tables.laterality, list(tables.laterality)),
        "}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- cutting the excerpts


def _inline(element: ET.Element) -> str:
    """The content of a table cell as XHTML, keeping only the text and the hyperlinks."""
    parts = [escape(element.text or "")]
    for child in element:
        inner = _inline(child)
        href = child.get("href")
        if _local(child.tag) == "a" and href:
            parts.append(f"<a href={quoteattr(href)}>{_normal(inner)}</a>")
        else:
            parts.append(inner)
        parts.append(escape(child.tail or ""))
    return re.sub(r"\s+", " ", "".join(parts))


def _row(tr: ET.Element) -> str:
    cells = []
    for cell in (c for c in tr if _local(c.tag) in ("td", "th")):
        tag = _local(cell.tag)
        span = "".join(
            f" {name}={quoteattr(cell.get(name, '1'))}"
            for name in ("colspan", "rowspan")
            if cell.get(name, "1") != "1"
        )
        content = _inline(cell).strip()
        cells.append(f"<{tag}{span}>{content}</{tag}>" if content else f"<{tag}{span}/>")
    return "<tr>" + "".join(cells) + "</tr>"


def _table_markup(div: ET.Element, table_id: str) -> list[str]:
    title = next(
        _normal("".join(p.itertext())) for p in _children(div, "p") if _has_class(p, "title")
    )
    table = next(_children(div, "table"))
    lines = [
        f'<div class="table"><a id={quoteattr(table_id)}/>'
        f'<p class="title"><strong>{escape(title)}</strong></p>',
        "<table>",
    ]
    for section in table:
        name = _local(section.tag)
        if name in ("thead", "tbody"):
            lines.append(f"<{name}>")
            lines += [_row(tr) for tr in section if _local(tr.tag) == "tr"]
            lines.append(f"</{name}>")
    lines += ["</table>", "</div>"]
    return lines


def _page_name(root: ET.Element) -> str:
    """The page's own name, from its link to the current edition of the same page."""
    for a in _children(root, "a"):
        if a.get("accesskey") == "current" and a.get("href"):
            return a.get("href", "").rsplit("/", 1)[-1]
    return ""


def cut_excerpt(pages: Sequence[Path], table_ids: Sequence[str], out: Path, note: str) -> None:
    """Write the tables table_ids, found in NEMA's chunked HTML pages, to the excerpt out."""
    release = ""
    found: dict[str, tuple[str, list[str]]] = {}
    for page in pages:
        excerpt = read_excerpt(page)
        if release and excerpt.release != release:
            raise SourceError(f"{page}: {excerpt.release!r}, not {release!r}")
        release = excerpt.release
        root = ET.parse(page).getroot()
        name = _page_name(root) or page.name
        for div in root.iter():
            if _local(div.tag) == "div" and _has_class(div, "table"):
                table = _table(div)
                if table is not None and table.table_id in table_ids:
                    found[table.table_id] = (name, _table_markup(div, table.table_id))
    missing = [table_id for table_id in table_ids if table_id not in found]
    if missing:
        raise SourceError(f"tables {missing} not found in {[str(p) for p in pages]}")
    edition = Excerpt(release, {}).edition
    urls = sorted({NEMA_CHTML.format(edition=edition, page=found[t][0]) for t in table_ids})
    titles = [found[t][1][0].split("<strong>")[1].split("</strong>")[0] for t in table_ids]
    header = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<!--",
        f"  Excerpt of {release} (NEMA):",
        *(f"    {title}" for title in titles),
        "",
        "  Source, NEMA's chunked HTML rendering of the standard:",
        *(f"    {url}" for url in urls),
        *(f"  {line}" for line in note.splitlines()),
        "",
        "  Cut by `scripts/generate_body_part_table.py extract`: only these tables are kept, and",
        "  in them the paragraph anchors, the layout attributes and the <p> wrappers are dropped",
        "  and white space is collapsed; cell text and hyperlinks are as published.",
        "  Do not edit by hand.",
        "",
        "  DICOM(R) is the registered trademark of the National Electrical Manufacturers",
        "  Association for its standards publications relating to digital communications of",
        "  medical information. The content of the standard is copyright NEMA.",
        "-->",
        '<html xmlns="http://www.w3.org/1999/xhtml"><body>',
        f'<p><span class="documentreleaseinformation">{escape(release)}</span></p>',
    ]
    body = [line for table_id in table_ids for line in found[table_id][1]]
    out.write_text("\n".join([*header, *body, "</body></html>"]) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the module is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    commands = parser.add_subparsers(dest="command")
    extract = commands.add_parser("extract", help="cut scripts/data/ excerpts from NEMA pages")
    extract.add_argument("--chapter-l", type=Path, required=True, help="part16/chapter_L.html")
    extract.add_argument(
        "--cid", type=Path, action="append", required=True, help="sect_CID_244.html, …_247.html"
    )
    extract.add_argument("--note", default="", help="a line on where the pages were taken")
    args = parser.parse_args(argv)

    try:
        if args.command == "extract":
            cut_excerpt([args.chapter_l], [BODY_PART_TABLE], BODY_PART_DATA, args.note)
            laterality_tables = [LATERALITY_TABLE, *LATERALITY_INCLUDED_TABLES]
            cut_excerpt(args.cid, laterality_tables, LATERALITY_DATA, args.note)
            print(f"wrote {BODY_PART_DATA.name} and {LATERALITY_DATA.name} in {DATA}")
            return 0
        tables = build()
    except (SourceError, ET.ParseError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    text = render(tables)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(
        f"wrote {args.output} from DICOM PS3.16 {tables.edition}: {len(tables.body_parts)} body "
        f"parts ({tables.source_rows} rows in Table L-1, {len(tables.terms_without_code)} terms "
        f"without code), {len(tables.laterality)} laterality values"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
