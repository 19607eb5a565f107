"""UID validation: the one gate between values from outside and names we build from them."""

from __future__ import annotations

import re

# PS3.5 9.1: components of digits separated by dots, at most 64 characters. Leading zeros
# in a component are not conformant but common in the wild; we accept them (Orthanc does
# too) because they are still safe as file names and FHIR ids.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_valid_uid(value: str) -> bool:
    return len(value) <= 64 and _UID.fullmatch(value) is not None
