"""The app factory: one route table, errors rendered once at the edge."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.responses import RedirectResponse, Response

from pacsfhir import __version__
from pacsfhir.allocator import tune_for_streaming
from pacsfhir.api import audit, dicomweb, fhir, patients
from pacsfhir.api.context import request_context
from pacsfhir.api.devmode import LoopbackOnly, check_auth_mode, warn_development_mode
from pacsfhir.api.forwarded import ForwardedHeaders
from pacsfhir.api.guards import RejectNul
from pacsfhir.api.identity import EhrLinker
from pacsfhir.api.recorder import AuditMiddleware, AuditWriter
from pacsfhir.api.responses import EXCEPTION_HANDLERS
from pacsfhir.archive import Archive
from pacsfhir.auth.ehr import EhrPatients
from pacsfhir.auth.tokens import verifier_from_settings
from pacsfhir.settings import Settings
from pacsfhir.store.local import LocalStore

# The FHIR surface's routers; DICOMweb's are api.dicomweb.ROUTERS. Each route of them takes
# the request context.
FHIR_ROUTERS: tuple[APIRouter, ...] = (fhir.router, patients.router, audit.router)


def _store(settings: Settings, archive: Archive) -> LocalStore:
    """The archive alone, or in front of the configured upstream PACS (the gateway)."""
    if not settings.upstreams:
        return LocalStore(archive)
    from pacsfhir.store.gateway import GatewayStore  # an archive alone never loads it

    return GatewayStore(
        archive,
        settings.upstreams,
        wait_seconds=settings.upstream_wait_seconds,
        open_searches=settings.upstream_open_searches,
    )


def create_app(settings: Settings, archive: Archive | None = None) -> FastAPI:
    """Build the ASGI app. ``archive`` may be passed in (tests); otherwise it is opened
    from ``settings`` and closed when the app shuts down. Refuses (ConfigurationError) an
    unknown authorization mode or its missing settings, and development mode off loopback."""
    check_auth_mode(settings)
    proxies = settings.trusted_proxy_networks  # ConfigurationError when malformed
    if proxies and not settings.base_url and settings.auth != "none":
        logging.getLogger("pacsfhir").warning(
            "PACSFHIR_TRUSTED_PROXIES without PACSFHIR_BASE_URL: URLs follow the proxy, but "
            "tokens are accepted for %s (and PACSFHIR_JWT_AUDIENCE) only",
            settings.fhir_base_url,
        )
    # One token for both surfaces: an app's token names the FHIR base as its audience
    # (SMART's aud), and the same token retrieves from the DICOMweb base it was given.
    audiences = (settings.fhir_base_url, settings.dicomweb_base_url)
    verifier = verifier_from_settings(settings, audiences)
    opened = archive or Archive.open(settings)
    store = _store(settings, opened)
    ehr = EhrPatients.from_settings(settings)
    ehr_linker = EhrLinker(opened, ehr, settings.ehr_refresh_seconds) if ehr else None
    audit_writer = AuditWriter(opened.engine, settings.audit_retention_days)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tune_for_streaming()  # whichever ASGI server runs the app
        audit_writer.start()
        store.start()
        yield
        store.close()
        audit_writer.close()
        if verifier is not None:
            verifier.close()
        if ehr_linker is not None:
            ehr_linker.close()
        if archive is None:
            opened.close()

    app = FastAPI(
        title="pacsfhir",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        exception_handlers=dict(EXCEPTION_HANDLERS),  # type: ignore[arg-type]
    )
    app.state.archive = opened
    app.state.store = store
    app.state.verifier = verifier
    app.state.ehr_linker = ehr_linker
    app.state.audit = audit_writer
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=[
                "ETag",
                "Last-Modified",
                "Location",
                "Warning",
                "Content-Location",
                "WWW-Authenticate",
                "Retry-After",
            ],
        )
    app.add_middleware(
        AuditMiddleware, writer=audit_writer
    )  # reads the matched route from the scope
    app.add_middleware(RejectNul)
    if settings.auth == "none":
        warn_development_mode()
        app.add_middleware(LoopbackOnly)
    app.add_middleware(ForwardedHeaders, networks=proxies)  # outermost: added last
    for router in FHIR_ROUTERS:
        app.include_router(router, dependencies=[Depends(request_context)])
    dicomweb.mount(app)

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/fhir/metadata")

    return app


def app_from_env() -> Any:
    """For ``uvicorn --factory pacsfhir.api.app:app_from_env``."""
    from pacsfhir.settings import load_settings

    return create_app(load_settings())
