"""Bulk data inside sequences: the path a nested BulkDataURI names (``dicom.metadata``)
and the value it leads to.

A path is ``{sequence}/{item}/.../{tag}``: tags as eight hex digits, item indexes from 0,
at most ``MAX_DEPTH`` sequences deep. A top-level value is the one-segment path ``{tag}``
(``api.wado`` serves those, Pixel Data included, from the file without parsing it).

A nested value is read by parsing the header (up to Pixel Data) with pydicom, as the
metadata that named it was made; it is held in memory while it is sent (values inside
sequences are header values, not pixel data).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from pacsfhir.errors import NotFound

MAX_DEPTH = 16
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_INDEX = re.compile(r"0|[1-9][0-9]{0,5}")
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


@dataclass(frozen=True)
class BulkPath:
    steps: tuple[tuple[int, int], ...]  # (sequence tag, item index), from the top level
    tag: int

    def __str__(self) -> str:
        """The path as a bulkdata URL writes it (``00400275/0/00081190``)."""
        return "/".join([*(f"{seq:08X}/{index}" for seq, index in self.steps), f"{self.tag:08X}"])


def parse_bulk_path(text: str) -> BulkPath:
    """The path of a bulkdata URL; NotFound for anything no metadata names (pure)."""
    segments = text.split("/")
    if len(segments) % 2 == 0 or len(segments) > 2 * MAX_DEPTH + 1:
        raise NotFound(f"no bulk data {text[:40]!a}")
    tags, indexes = segments[0::2], segments[1::2]
    if not all(_TAG.fullmatch(t) for t in tags) or not all(_INDEX.fullmatch(i) for i in indexes):
        raise NotFound(f"no bulk data {text[:40]!a}")
    numbers = [int(t, 16) for t in tags]
    return BulkPath(tuple(zip(numbers[:-1], map(int, indexes), strict=True)), numbers[-1])


def nested_value(ds: Dataset, path: BulkPath) -> bytes:
    """The binary value ``path`` leads to in a parsed data set; NotFound when there is
    none (no such sequence, item or element, or not a binary value)."""
    current = ds
    for sequence, index in path.steps:
        element = current.get(sequence)
        if element is None or element.VR != "SQ" or index >= len(element.value):
            raise NotFound(f"no item {index} in ({sequence >> 16:04X},{sequence & 0xFFFF:04X})")
        current = element.value[index]
    element = current.get(path.tag)
    if element is None or element.VR not in BULK_VRS or not isinstance(element.value, bytes):
        raise NotFound(f"no bulk data ({path.tag >> 16:04X},{path.tag & 0xFFFF:04X}) there")
    return element.value


def read_nested_value(file_path: str, path: BulkPath) -> bytes:
    """``nested_value`` in a stored file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(file_path, stop_before_pixels=True, force=True)
    return nested_value(ds, path)
