"""The DICOMweb surface (PS3.18), mounted twice: at ``/dicom-web`` over the whole archive
and at ``/fhir/Patient/{patient_id}/$wado-rs`` over one patient's studies only. WADO-URI
(``api.wado_uri``) sits at ``/wado``, where other servers put it, and at
``/fhir/Patient/{patient_id}/$wado-rs/wado``.

Handlers get their ``Scope`` from the request context (``api.context``).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI

from pacsfhir.api import qido, rendered, stow, wado, wado_uri
from pacsfhir.api.context import DICOMWEB_PREFIX, PATIENT_PREFIX, request_context

# In this order, as they were when WADO-RS was one router: rendered after the rest of WADO-RS.
ROUTERS: tuple[APIRouter, ...] = (qido.router, wado.router, rendered.router, stow.router)


def mount(app: FastAPI) -> None:
    """Every route at both bases, each taking the request context."""
    context = [Depends(request_context)]
    for router in ROUTERS:
        app.include_router(router, prefix=DICOMWEB_PREFIX, dependencies=context)
        app.include_router(router, prefix=PATIENT_PREFIX, dependencies=context)
    app.include_router(wado_uri.router, dependencies=context)
    app.include_router(wado_uri.router, prefix=PATIENT_PREFIX, dependencies=context)
