"""Is a file plausibly DICOM? A look at its first bytes, made before pydicom's forced parse,
which reads anything: zeros become millions of empty elements at about 0.3 s of CPU per MB.

pydicom (``filereader.read_preamble`` and ``read_partial`` with ``force=True``) takes a
128-byte preamble followed by ``DICM``, then the file meta group (0002); without them it
assumes the data set starts at byte 0 and guesses its encoding from the first element:
explicit VR when bytes 4-5 are a VR, then big endian when the group read little endian is
1024 or more; else implicit VR little endian. The same guess is made here, and the first
element of the data set must then make sense:

- its group is 0000 (command), 0002 (file meta), 0004 (directory) or 0008: a storable
  instance has its SOP Class and Instance UIDs in group 0008, and elements come in
  ascending order (PS3.5 7.1), so nothing else can come first;
- a group length (element 0000) holds 4 bytes (UL);
- its value fits in the file, or has undefined length where PS3.5 allows one (SQ, UN, OB,
  OW; any element in implicit VR, where the VR is not on the wire).

pydicom reads the file meta (0002) and command (0000) groups at the start of a file
before the data set proper, each for as long as the group goes on, with nothing to stop
it: zeros are an endless command group. So the elements of those groups are walked here,
each checked the same way and each group in ascending tag order (PS3.5 7.1), up to the
data set, whose first element is checked too (unless it is deflated). What comes after
that first element is pydicom's to read. Element headers are decoded with ``struct``:
pydicom has no public call that reads one element header without parsing on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.uid import AllTransferSyntaxes
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

HEAD_BYTES = 64 * 1024  # what ``not_dicom`` needs to see: preamble, file meta, one element
PREAMBLE = 128
MAGIC = b"DICM"
UNDEFINED_LENGTH = 0xFFFFFFFF
FIRST_GROUPS = (0x0000, 0x0002, 0x0004, 0x0008)
UNDEFINED_LENGTH_VRS = frozenset({"SQ", "UN", "OB", "OW"})
_VRS = frozenset(str(vr) for vr in STANDARD_VR)
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
TRANSFER_SYNTAX_ELEMENT = 0x0010
DEFLATED = frozenset(str(uid) for uid in AllTransferSyntaxes if uid.is_deflated)


@dataclass(frozen=True)
class ElementHeader:
    group: int
    element: int
    vr: str | None  # None: implicit VR
    length: int
    size: int  # bytes of the header itself (8 or 12)

    @property
    def tag(self) -> str:
        return f"({self.group:04X},{self.element:04X})"


def element_header(head: bytes, at: int) -> ElementHeader | None:
    """The element header at ``at``, decoded as pydicom guesses it; None when ``head`` ends
    inside it."""
    if len(head) < at + 8:
        return None
    vr = head[at + 4 : at + 6].decode("latin-1")
    if vr not in _VRS:
        group, element, length = struct.unpack_from("<HHI", head, at)
        return ElementHeader(group, element, None, length, 8)
    endian = ">" if struct.unpack_from("<H", head, at)[0] >= 1024 else "<"
    group, element = struct.unpack_from(endian + "HH", head, at)
    if vr not in _LONG_VRS:
        (length,) = struct.unpack_from(endian + "H", head, at + 6)
        return ElementHeader(group, element, vr, length, 8)
    if len(head) < at + 12:
        return None
    (length,) = struct.unpack_from(endian + "I", head, at + 8)
    return ElementHeader(group, element, vr, length, 12)


def _problem(header: ElementHeader, at: int, size: int) -> str | None:
    """Why the element at ``at`` cannot start a data set (or a file meta group)."""
    if header.group not in FIRST_GROUPS:
        return f"first element {header.tag} is not in group 0000, 0002, 0004 or 0008"
    if header.element == 0 and header.length != 4:
        return f"group length {header.tag} of {header.length} bytes (it holds 4)"
    if header.length == UNDEFINED_LENGTH:
        if header.vr is None or header.vr in UNDEFINED_LENGTH_VRS:
            return None
        return f"element {header.tag} of VR {header.vr} with undefined length"
    if at + header.size + header.length > size:
        return f"element {header.tag} of {header.length} bytes runs past the end of the file"
    return None


def _leading_groups(head: bytes, at: int, size: int) -> str | None:
    """Walk the file meta (0002) and command (0000) elements from ``at``, each group in
    ascending tag order, and check the first element after them."""
    previous: ElementHeader | None = None
    transfer_syntax = ""
    while (header := element_header(head, at)) is not None:
        if previous is not None and previous.group == 0x0002 and header.group != 0x0002:
            if transfer_syntax in DEFLATED:
                return None  # the data set is a deflate stream
            previous = None  # the data set starts: its tags start afresh
        problem = _problem(header, at, size)
        if problem is not None:
            return f"file meta {problem}" if header.group == 0x0002 else problem
        if previous is not None and (header.group, header.element) <= (
            previous.group,
            previous.element,
        ):
            return f"element {header.tag} after {previous.tag}: tags out of order"
        if header.group not in (0x0000, 0x0002) or header.length == UNDEFINED_LENGTH:
            return None  # the data set's first element, which is fine
        value_at = at + header.size
        if header.group == 0x0002 and header.element == TRANSFER_SYNTAX_ELEMENT:
            raw = head[value_at : value_at + header.length]
            transfer_syntax = raw.rstrip(b"\0 ").decode("latin-1")
        at = value_at + header.length
        previous = header
    return None  # the head or the file ends first: pydicom reads on, at little cost


def not_dicom(head: bytes, size: int) -> str | None:
    """Why a file of ``size`` bytes starting with ``head`` (its first ``HEAD_BYTES`` or
    all of it) is not DICOM, or None when it plausibly is."""
    if size == 0:
        return "empty file"
    if head[PREAMBLE : PREAMBLE + len(MAGIC)] == MAGIC:
        return _leading_groups(head, PREAMBLE + len(MAGIC), size)
    if len(head) < 8:
        return f"no DICOM preamble and only {size} bytes"
    problem = _leading_groups(head, 0, size)
    return None if problem is None else f"no DICOM preamble and {problem}"
