"""The SOP Class and Instance UIDs of a file that may not be storable, as far as its first
bytes tell: a STOW-RS Failed SOP item names the instance whenever the file can be read
that far (PS3.18 Annex I), even when the rest is truncated or lacks required attributes.

Only the head of the file is parsed (the UIDs are in group 0008, which comes first in a
data set), and only after ``sniff`` finds it plausibly DICOM: pydicom's forced parse
reads anything.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from pacsfhir.dicom.sniff import HEAD_BYTES, not_dicom
from pacsfhir.dicom.uids import is_valid_uid

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018


@dataclass(frozen=True)
class Identity:
    """What a file says it is; "" for what it does not say (or says as no valid UID)."""

    sop_class_uid: str = ""
    sop_uid: str = ""


def _past_sop_instance_uid(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return int(tag) > SOP_INSTANCE_UID


def _uid(ds: Dataset, tag: int, size: int) -> str:
    """The UID at ``tag`` if its whole value is within the ``size`` bytes read (a value
    cut short could still look like a UID, a wrong one)."""
    raw = ds.get_item(tag) if tag in ds else None
    value_tell = getattr(raw, "value_tell", None)
    length = getattr(raw, "length", None)
    if raw is None or value_tell is None or length is None or value_tell + length > size:
        return ""
    value = raw.value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")
    text = text.rstrip("\0 ")
    return text if is_valid_uid(text) else ""


def identify_head(head: bytes, size: int) -> Identity:
    """The UIDs in ``head``, the first bytes of a file of ``size`` bytes (pure)."""
    if not_dicom(head[:HEAD_BYTES], size) is not None:
        return Identity()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_partial(io.BytesIO(head), _past_sop_instance_uid, force=True)
            return Identity(
                _uid(ds, SOP_CLASS_UID, len(head)), _uid(ds, SOP_INSTANCE_UID, len(head))
            )
    except Exception:  # pydicom raises many types on garbage: then nothing is known
        return Identity()


def identify(fp: BinaryIO, size: int) -> Identity:
    """``identify_head`` of an open file, from its start."""
    fp.seek(0)
    return identify_head(fp.read(HEAD_BYTES), size)
