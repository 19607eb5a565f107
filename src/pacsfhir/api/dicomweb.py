"""The DICOMweb surface (PS3.18), mounted twice: at ``/dicom-web`` over the whole archive
and at ``/fhir/Patient/{patient_id}/$wado-rs`` over one patient's studies only.

Handlers get their ``Scope`` from ``api.dicomweb_context.scope_of``.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from pacsfhir.api import qido, rendered, stow, wado
from pacsfhir.api.dicomweb_context import DICOMWEB_PREFIX, PATIENT_PREFIX

# In this order, as they were when WADO-RS was one router: rendered after the rest of WADO-RS.
ROUTERS: tuple[APIRouter, ...] = (qido.router, wado.router, rendered.router, stow.router)


def mount(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router, prefix=DICOMWEB_PREFIX)
        app.include_router(router, prefix=PATIENT_PREFIX)
