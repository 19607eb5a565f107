"""DICOM JSON (PS3.18 F.2) of an instance's header, made from the blob the first time it
is asked for (WADO-RS metadata, QIDO-RS ``includefield``) and cached beside the blob.

It is not made at ingest: converting every element of a header costs several times what
indexing it does, and most instances are never asked for their metadata.

Large binary values (OB, OD, OF, OL, OV, OW, UN over ``BULK_THRESHOLD`` bytes), at the
top level and inside sequences, and Pixel Data are not inlined: they carry a
``BulkDataURI`` that starts with ``BULK_PLACEHOLDER``; the DICOMweb layer replaces it
with the instance's URL when serving, so the stored JSON does not depend on the base URL
or patient scope. A nested value's URI names its path (``bulkdata/{sequence}/{item}/...
/{tag}``, ``dicom.bulk_path``).

Specific Character Set (0008,0005), top level and in items, is kept as the source has
it (PS3.18 F.2.2 note 3): it tells how the file was encoded, not the JSON, which is
UTF-8; text values are decoded from it by pydicom.

A cached sidecar ends with ``FORMAT_MARK`` (JSON allows trailing white space); one
without it was made by an earlier format and is made again.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsfhir.dicom.frames import PixelDataFile
from pacsfhir.dicom.storage import BlobStore

BULK_PLACEHOLDER = "pacsfhir:instance/"
BULK_THRESHOLD = 1024
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_INLINE = 2**62  # pydicom's threshold: what reaches it is inlined
PIXEL_DATA = 0x7FE00010
SPECIFIC_CHARACTER_SET = 0x00080005
FORMAT_MARK = b"\n"

BulkPath = tuple[tuple[int, int], ...]  # (sequence tag, item index) from the top level down


def bulk_uri(path: BulkPath, tag: int) -> str:
    steps = "".join(f"{sequence:08X}/{item}/" for sequence, item in path)
    return f"{BULK_PLACEHOLDER}bulkdata/{steps}{tag:08X}"


def _character_set(element: DataElement) -> dict[str, Any]:
    """(0008,0005) as in the source; an empty value (the default repertoire before ISO
    2022 extensions) as null (PS3.18 F.2.5)."""
    values = element.value if isinstance(element.value, list | MultiValue) else [element.value]
    kept = [str(v).strip() or None for v in values if v is not None]
    return {"vr": "CS", "Value": kept} if any(kept) else {"vr": "CS"}


def _element_json(element: DataElement, path: BulkPath) -> dict[str, Any]:
    value = element.value
    if element.VR == "SQ":
        items = [_dataset_json(item, (*path, (element.tag, n))) for n, item in enumerate(value)]
        return {"vr": "SQ", "Value": items}  # as pydicom (and so earlier sidecars) had it
    if element.VR in _BULK_VRS and isinstance(value, bytes) and len(value) > BULK_THRESHOLD:
        return {"vr": element.VR, "BulkDataURI": bulk_uri(path, element.tag)}
    if element.tag == SPECIFIC_CHARACTER_SET:
        return _character_set(element)
    try:
        encoded: dict[str, Any] = element.to_json_dict(None, _INLINE)
    except Exception:  # a value pydicom cannot encode: keep the attribute, drop its value
        encoded = {"vr": element.VR}
    return encoded


def _dataset_json(ds: Dataset, path: BulkPath) -> dict[str, Any]:
    return {f"{element.tag:08X}": _element_json(element, path) for element in ds}


def instance_metadata(ds: Dataset, pixel_data_vr: str | None) -> dict[str, Any]:
    """The DICOM JSON object of a dataset read with ``stop_before_pixels``."""
    with warnings.catch_warnings():  # values are served as stored, oddities and all
        warnings.simplefilter("ignore")
        result = _dataset_json(ds, ())
    if pixel_data_vr is not None:
        result[f"{PIXEL_DATA:08X}"] = {
            "vr": pixel_data_vr,
            "BulkDataURI": bulk_uri((), PIXEL_DATA),
        }
    return result


def encode(metadata: dict[str, Any]) -> bytes:
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode() + FORMAT_MARK


def metadata_of(blobs: BlobStore, relative: str) -> bytes:
    """The DICOM JSON of a stored instance: the cached sidecar, else made and cached."""
    try:
        cached = blobs.read_metadata(relative)
        if cached.endswith(FORMAT_MARK):
            return cached
    except FileNotFoundError:
        pass
    with PixelDataFile(blobs.absolute(relative)) as source:
        data = encode(instance_metadata(source.header, source.vr or None))
    blobs.write_metadata(relative, data)
    return data
