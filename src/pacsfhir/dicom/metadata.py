"""DICOM JSON (PS3.18 F.2) of an instance's header, made from the blob the first time it
is asked for (WADO-RS metadata, QIDO-RS ``includefield``) and cached beside the blob.

It is not made at ingest: converting every element of a header costs several times what
indexing it does, and most instances are never asked for their metadata.

Large binary values (and Pixel Data) are not inlined: they carry a ``BulkDataURI`` that
starts with ``BULK_PLACEHOLDER``; the DICOMweb layer replaces it with the instance's URL
when serving, so the stored JSON does not depend on the base URL or patient scope.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from pacsfhir.dicom.frames import PixelDataFile
from pacsfhir.dicom.storage import BlobStore

BULK_PLACEHOLDER = "pacsfhir:instance/"
BULK_THRESHOLD = 1024
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_INLINE = 2**62  # no bulk data below the top level: nested values are inlined
PIXEL_DATA = 0x7FE00010


def _element_json(element: DataElement) -> dict[str, Any]:
    value = element.value
    if element.VR in _BULK_VRS and isinstance(value, bytes) and len(value) > BULK_THRESHOLD:
        return {"vr": element.VR, "BulkDataURI": f"{BULK_PLACEHOLDER}bulkdata/{element.tag:08X}"}
    try:
        encoded: dict[str, Any] = element.to_json_dict(None, _INLINE)
    except Exception:  # a value pydicom cannot encode: keep the attribute, drop its value
        encoded = {"vr": element.VR}
    return encoded


def instance_metadata(ds: Dataset, pixel_data_vr: str | None) -> dict[str, Any]:
    """The DICOM JSON object of a dataset read with ``stop_before_pixels``."""
    result: dict[str, Any] = {}
    with warnings.catch_warnings():  # values are served as stored, oddities and all
        warnings.simplefilter("ignore")
        for element in ds:
            if element.tag == 0x00080005:  # the JSON is UTF-8, whatever the file used
                result["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
                continue
            result[f"{element.tag:08X}"] = _element_json(element)
    if pixel_data_vr is not None:
        result[f"{PIXEL_DATA:08X}"] = {
            "vr": pixel_data_vr,
            "BulkDataURI": f"{BULK_PLACEHOLDER}bulkdata/{PIXEL_DATA:08X}",
        }
    return result


def encode(metadata: dict[str, Any]) -> bytes:
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode()


def metadata_of(blobs: BlobStore, relative: str) -> bytes:
    """The DICOM JSON of a stored instance: the cached sidecar, else made and cached."""
    try:
        return blobs.read_metadata(relative)
    except FileNotFoundError:
        pass
    with PixelDataFile(blobs.absolute(relative)) as source:
        data = encode(instance_metadata(source.header, source.vr or None))
    blobs.write_metadata(relative, data)
    return data
