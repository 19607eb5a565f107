"""What a DICOMweb request may see and how it addresses things: its scope (the whole
archive, or one patient under ``/fhir/Patient/{id}/$wado-rs``) and its public base URL.
This is the one place that decides the scope of a DICOMweb request."""

from __future__ import annotations

from fastapi import Request

from pacsfhir.archive import Archive
from pacsfhir.index.dicomweb import Scope

DICOMWEB_PREFIX = "/dicom-web"
PATIENT_PREFIX = "/fhir/Patient/{patient_id}/$wado-rs"


def archive_of(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def scope_of(request: Request) -> Scope:
    return Scope(request.path_params.get("patient_id"))


def base_url_of(request: Request) -> str:
    """The DICOMweb base this request came through (public URL, with patient scope)."""
    settings = archive_of(request).settings
    patient_id = request.path_params.get("patient_id")
    if patient_id is None:
        return settings.dicomweb_base_url
    return f"{settings.fhir_base_url}/Patient/{patient_id}/$wado-rs"


def is_dicomweb(request: Request) -> bool:
    path = request.url.path
    return path.startswith(DICOMWEB_PREFIX + "/") or "/$wado-rs" in path
