"""DICOM JSON (PS3.18 F.2) to the Native DICOM Model (PS3.19 A.1): the XML of
``application/dicom+xml`` answers (WADO-RS metadata, QIDO-RS), made from the JSON that
``dicom.metadata`` and ``mapping.dicom_json`` already produce, so both answers always say
the same thing.

How each piece of the JSON becomes XML (PS3.19 Table A.1.5-2):

- the root is ``NativeDicomModel`` in the schema's namespace (A.1.6), with
  ``xml:space="preserve"`` (Table A.1.5-1), the document UTF-8;
- an attribute is a ``DicomAttribute`` with ``tag`` (upper-case hex), ``vr`` and, for a
  tag in pydicom's dictionary, its ``keyword``; Group Length (gggg,0000) is left out;
- a Private Data Element whose Private Creator is in the same data set is written
  ``gggg00ee`` with ``privateCreator`` (the block is not sent, as A.1.5-2 says); one whose
  creator is absent keeps its full tag and no ``privateCreator`` (nothing is guessed);
- values are ``Value number="n"`` (a null value is an empty ``Value``), sequence items are
  ``Item number="n"``, person names ``PersonName`` with ``Alphabetic``, ``Ideographic``
  and ``Phonetic`` groups of ``FamilyName``, ``GivenName``, ``MiddleName``,
  ``NamePrefix`` and ``NameSuffix`` (empty components are left out);
  ``BulkDataURI`` becomes ``BulkData uri``, ``InlineBinary`` stays base64;
- a VR outside PS3.5's list (the schema's enumeration) is written ``UN``.

Text is escaped (``&``, ``<``, ``>``; in attributes also quotes, tab and line ends); a
carriage return is written ``&#13;`` so that XML's line-end normalisation does not turn it
into a line feed. Characters XML 1.0 cannot hold at all, even as references (C0 controls
other than tab, line feed and carriage return, such as the form feed LT and UT may
contain; unpaired surrogates; U+FFFE and U+FFFF), are replaced by U+FFFD: the document
stays well-formed, and the exact value stays available from the instance itself.

Written by hand rather than with ``xml.etree``: ElementTree neither escapes a carriage
return in text nor refuses the characters above, so it would produce documents that do
not read back the same, or do not parse at all.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.valuerep import STANDARD_VR

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
DICOM_XML = "application/dicom+xml"

VRS = frozenset(str(vr) for vr in STANDARD_VR)  # the schema's VR list, as PS3.5 has it
_NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_NAME_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")

_NOT_XML = "\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
_TEXT_SPECIAL = re.compile(f"[&<>\r{_NOT_XML}]")
_ATTRIBUTE_SPECIAL = re.compile(f'[&<>"\t\n\r{_NOT_XML}]')
_REFERENCES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "\t": "&#9;",
    "\n": "&#10;",
    "\r": "&#13;",
}


def _replace(match: re.Match[str]) -> str:
    return _REFERENCES.get(match.group(), "\ufffd")


def escape_text(text: str) -> str:
    """``text`` as XML character data (see the module's docstring)."""
    return _TEXT_SPECIAL.sub(_replace, text) if _TEXT_SPECIAL.search(text) else text


def escape_attribute(text: str) -> str:
    """``text`` as a double-quoted XML attribute value."""
    return _ATTRIBUTE_SPECIAL.sub(_replace, text) if _ATTRIBUTE_SPECIAL.search(text) else text


@lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    return str(keyword_for_tag(tag))


def _single_precision(value: float) -> str:
    """The shortest text that reads back as the same 32-bit float (an FL value widened
    to a double in the JSON: -11.2, not -11.199999809265137)."""
    try:
        stored = struct.pack("<f", value)
    except OverflowError:
        return repr(value)
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        if struct.pack("<f", float(text)) == stored:
            return text
    return repr(value)


def value_text(value: Any, vr: str = "") -> str:
    """A JSON value as the text of a ``Value``: numbers in their shortest exact form
    (integral ones without a fraction), FL and OF at single precision."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        if vr in ("FL", "OF") and math.isfinite(value):
            return _single_precision(value)
        return repr(value)
    return str(value)


def _creators(elements: list[tuple[int, Mapping[str, Any]]]) -> dict[int, str]:
    """The Private Creator of each block reserved in a data set: (gggg,00bb) -> name."""
    creators = {}
    for tag, element in elements:
        if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF:
            values = element.get("Value")
            name = values[0] if isinstance(values, list) and values else None
            if isinstance(name, str) and name.strip(" "):
                creators[tag] = name.strip(" ")  # LO: leading and trailing spaces are padding
    return creators


def _head(tag: int, vr: str, creators: Mapping[int, str]) -> str:
    group, number = tag >> 16, tag & 0xFFFF
    if group & 1 and number >= 0x1000:
        creator = creators.get(group << 16 | number >> 8)
        if creator is not None:
            written = group << 16 | number & 0xFF
            return (
                f'<DicomAttribute tag="{written:08X}" vr="{vr}" '
                f'privateCreator="{escape_attribute(creator)}">'
            )
        return f'<DicomAttribute tag="{tag:08X}" vr="{vr}">'
    keyword = "" if group & 1 else _keyword(tag)
    if keyword:
        return f'<DicomAttribute tag="{tag:08X}" vr="{vr}" keyword="{keyword}">'
    return f'<DicomAttribute tag="{tag:08X}" vr="{vr}">'


def _person_name(number: int, value: Any, out: list[str]) -> None:
    out.append(f'<PersonName number="{number}">')
    if isinstance(value, str):
        value = {"Alphabetic": value}
    if isinstance(value, Mapping):
        for group in _NAME_GROUPS:
            text = value.get(group)
            if not isinstance(text, str) or not text.strip("^ "):
                continue
            out.append(f"<{group}>")
            components = text.split("^", len(_NAME_COMPONENTS) - 1)
            for name, component in zip(_NAME_COMPONENTS, components, strict=False):
                if component:
                    out.append(f"<{name}>{escape_text(component)}</{name}>")
            out.append(f"</{group}>")
    out.append("</PersonName>")


def _values(vr: str, values: list[Any], out: list[str]) -> None:
    if vr == "SQ":
        for number, item in enumerate(values, 1):
            out.append(f'<Item number="{number}">')
            if isinstance(item, Mapping):
                _dataset(item, out)
            out.append("</Item>")
    elif vr == "PN":
        for number, name in enumerate(values, 1):
            _person_name(number, name, out)
    else:
        for number, value in enumerate(values, 1):
            text = value if type(value) is str else "" if value is None else value_text(value, vr)
            out.append(f'<Value number="{number}">{escape_text(text)}</Value>')


def _attribute(
    tag: int, element: Mapping[str, Any], creators: Mapping[int, str], out: list[str]
) -> None:
    vr = element.get("vr")
    vr = vr if isinstance(vr, str) and vr in VRS else "UN"
    out.append(_head(tag, vr, creators))
    uri = element.get("BulkDataURI")
    inline = element.get("InlineBinary")
    values = element.get("Value")
    if isinstance(uri, str):
        out.append(f'<BulkData uri="{escape_attribute(uri)}"/>')
    elif isinstance(inline, str):
        out.append(f"<InlineBinary>{escape_text(inline)}</InlineBinary>")
    elif isinstance(values, list):
        _values(vr, values, out)
    out.append("</DicomAttribute>\n")


def _dataset(dataset: Mapping[str, Any], out: list[str]) -> None:
    elements = sorted(
        (
            (int(key, 16), element)
            for key, element in dataset.items()
            if _TAG.fullmatch(key) and isinstance(element, Mapping)
        ),
        key=lambda pair: pair[0],
    )
    creators = _creators(elements)
    for tag, element in elements:
        if tag & 0xFFFF:
            _attribute(tag, element, creators, out)


def native_xml(dataset: Mapping[str, Any]) -> bytes:
    """The Native DICOM Model document (UTF-8) of one DICOM JSON object."""
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<NativeDicomModel xmlns="{NAMESPACE}" xml:space="preserve">\n',
    ]
    _dataset(dataset, out)
    out.append("</NativeDicomModel>\n")
    return "".join(out).encode("utf-8")
