"""WADO-RS bulk data inside sequences (``bulkdata/{sequence}/{item}/.../{tag}``): the
values a metadata answer names with a nested BulkDataURI (``dicom.metadata``). The
route is ``api.wado``'s ``retrieve_bulkdata``, which hands nested paths here."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from pacsfhir.api.wado_common import multipart_response, path_of
from pacsfhir.dicom.bulk_path import BulkPath, read_nested_value
from pacsfhir.dicom.multipart import Part
from pacsfhir.errors import PacsFhirError
from pacsfhir.store.base import StoredInstance

OCTET_STREAM = "application/octet-stream"


def nested_bulkdata(
    request: Request, stored: StoredInstance, path: BulkPath, multipart: bool, instance_url: str
) -> Response:
    """The value as ``application/octet-stream``, alone or as the one part of a
    ``multipart/related`` answer (as the Accept header chose), the part's Content-Location
    its bulkdata URL under ``instance_url`` (PS3.18 10.4.3.3.5)."""
    try:
        value = read_nested_value(path_of(request, stored), path)
    except OSError as exc:
        raise PacsFhirError(f"stored file of {stored.sop_uid} is unreadable") from exc
    if not multipart:
        return Response(value, media_type=OCTET_STREAM)
    location = f"{instance_url}/bulkdata/{path}"
    return multipart_response(
        [Part(OCTET_STREAM, iter([value]), len(value), location)], OCTET_STREAM
    )
