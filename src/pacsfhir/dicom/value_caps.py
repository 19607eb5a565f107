"""How much of an attribute's value the index keeps (pure).

The index holds at most ``MARGIN`` times the maximum length PS3.5 (Table 6.2-1) gives the
attribute's VR, as pydicom's ``MAX_VALUE_LEN`` holds it: real-world files overrun the
standard's lengths (descriptions, names from long-named hospitals), never by that much.
PN has 64 characters per component group, three groups (pydicom checks it in
``validate_pn_component_length``, not in its table: a test checks they agree). VRs for
which pydicom gives no maximum (the DA, TM, DT and AS formats; UC, UR and UT, which the
standard leaves unbounded) keep ``UNLISTED`` characters. A multi-valued attribute keeps
its first ``MAX_VALUES`` values, a sequence its first ``MAX_ITEMS`` items.

Cutting happens on decoded text, so at a character boundary. The stored file is never
changed: WADO-RS serves it, and its metadata, whole.
"""

from __future__ import annotations

from functools import cache

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.valuerep import MAX_VALUE_LEN

MARGIN = 4
PN_GROUP = 64  # characters in one PN component group (PS3.5 6.2)
PN_GROUPS = 3  # alphabetic, ideographic, phonetic
UNLISTED = 1024  # characters kept of a VR pydicom gives no maximum for
MAX_VALUES = 64  # values kept of a multi-valued attribute
MAX_ITEMS = 64  # items kept of a sequence


def standard_length(vr: str) -> int | None:
    """PS3.5's maximum length of one value of ``vr`` in characters; None: not listed."""
    if vr == "PN":
        return PN_GROUPS * PN_GROUP + PN_GROUPS - 1  # with the "=" between groups
    return MAX_VALUE_LEN.get(vr)


@cache
def kept_length(keyword: str) -> int:
    """The characters of one value of ``keyword`` the index keeps."""
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag) if tag is not None else ""
    length = standard_length(vr)
    return UNLISTED if length is None else MARGIN * length


def cut(keyword: str, text: str) -> str:
    """``text`` (one decoded value of ``keyword``) as the index keeps it."""
    kept = kept_length(keyword)
    return text if len(text) <= kept else text[:kept]
