"""Reading Native DICOM Model documents (PS3.19 A.1) back, with lxml, into plain data the
tests compare: each data set a dict keyed by (tag, privateCreator), each attribute an
``Attribute``; and the RELAX NG schema of PS3.19 A.1.6 (``native_dicom_model.rng``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lxml import etree

from pacsfhir.dicom.native_xml import NAMESPACE

SCHEMA = Path(__file__).with_name("native_dicom_model.rng")
XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"

Key = tuple[str, str | None]  # (tag, privateCreator)


@dataclass(frozen=True)
class Attribute:
    vr: str
    keyword: str | None
    kind: str  # "empty", "Value", "Item", "PersonName", "InlineBinary", "BulkData"
    values: Any  # texts; item data sets; names {group: {component: text}}; base64; URI


@cache
def _schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def schema_errors(document: bytes) -> list[str]:
    """Why ``document`` is not a valid Native DICOM Model, or nothing. The schema does
    not declare ``xml:space``, which Table A.1.5-1 requires on the root ("The directive
    xml:space="preserve" shall be included"): it is checked here, then left out before
    the schema is applied."""
    root = etree.fromstring(document)
    errors = []
    if root.get(XML_SPACE) != "preserve":
        errors.append('the root lacks xml:space="preserve"')
    root.attrib.pop(XML_SPACE, None)
    schema = _schema()
    if not schema.validate(root):
        errors.extend(str(e) for e in schema.error_log)
    return errors


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def _dataset(parent: etree._Element) -> dict[Key, Attribute]:
    found: dict[Key, Attribute] = {}
    for node in parent:
        if not isinstance(node.tag, str) or _local(node) != "DicomAttribute":
            continue
        key = (str(node.get("tag")), node.get("privateCreator"))
        children = [c for c in node if isinstance(c.tag, str)]
        kind = _local(children[0]) if children else "empty"
        values: Any
        if kind == "Item":
            values = [_dataset(c) for c in children]
        elif kind == "PersonName":
            values = [
                {_local(g): {_local(c): c.text or "" for c in g} for g in name} for name in children
            ]
        elif kind == "Value":
            values = [c.text or "" for c in children]
        elif kind == "InlineBinary":
            values = children[0].text or ""
        elif kind == "BulkData":
            values = children[0].get("uri") or children[0].get("uuid")
        else:
            values = None
        found[key] = Attribute(str(node.get("vr")), node.get("keyword"), kind, values)
    return found


def read_native(document: bytes) -> dict[Key, Attribute]:
    """The top-level data set of a document (in PS3.19's namespace, or in none, as
    dcmtk writes it without ``+Xn``)."""
    root = etree.fromstring(document)
    assert _local(root) == "NativeDicomModel"
    assert etree.QName(root).namespace in (NAMESPACE, None)
    return _dataset(root)
