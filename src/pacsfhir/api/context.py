"""The request context: what every route is given, and the one place that decides what a
request may see.

``request_context`` is a FastAPI dependency that every FHIR and DICOMweb route takes (it
is attached where the routers are included, in ``api.app`` and ``api.dicomweb``, so a new
route cannot miss it). It gathers the archive, the caller, the request's ``Scope`` (the
whole index, or one patient's studies under ``/fhir/Patient/{id}/...``; a token's patient
will narrow it further) and the public base URLs. Handlers read it with ``context_of``
and pass its scope to the index; none decides access by itself.

The context is also the one place that decides the request's public base, which every
absolute URL (Retrieve URLs, BulkDataURIs, Endpoint addresses, Bundle links, Location)
starts with: ``PACSFHIR_BASE_URL`` when set; else what a trusted reverse proxy says the
client asked for (``api.forwarded``; a malformed header from one is 400); else
``http://<host>:<port>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from pacsfhir.api.forwarded import STATE_KEY as FORWARDING_KEY
from pacsfhir.api.forwarded import Forwarding, ForwardingError
from pacsfhir.api.identity import EhrLinker
from pacsfhir.api.recorder import note_caller
from pacsfhir.archive import Archive
from pacsfhir.auth.policy import Need, Surface, decide, need_of, surface_of
from pacsfhir.auth.scopes import Grant, parse_scopes
from pacsfhir.auth.tokens import TokenVerifier
from pacsfhir.errors import BadRequest, Forbidden, Unauthorized
from pacsfhir.index.scope import Scope
from pacsfhir.settings import Settings
from pacsfhir.store.base import Store

DICOMWEB_PREFIX = "/dicom-web"
PATIENT_PREFIX = "/fhir/Patient/{patient_id}/$wado-rs"


@dataclass(frozen=True)
class Caller:
    """Who is asking. ``subject``, ``client_id`` and ``fhir_user`` are kept for the audit;
    ``patient`` is the SMART launch patient (patient-level scopes reach only that patient);
    ``grant`` is what the token's scopes allow."""

    subject: str
    client_id: str | None = None
    patient: str | None = None
    grant: Grant = field(default_factory=Grant)
    fhir_user: str | None = None


DEVELOPER = Caller("development (PACSFHIR_AUTH=none)", grant=parse_scopes("system/*.*"))
PUBLIC_CALLER = Caller("anyone (a public route)")


@dataclass(frozen=True)
class RequestContext:
    archive: Archive
    store: Store  # where studies come from (store.base): handlers read and write through it
    caller: Caller
    scope: Scope
    path_patient: str | None  # the {patient_id} of a /fhir/Patient/{id}/... path
    public_base: str = ""  # scheme://host[:port][/prefix] of this request ("": settings')

    @property
    def settings(self) -> Settings:
        return self.archive.settings

    @property
    def base(self) -> str:
        return self.public_base or self.settings.public_base_url

    @property
    def fhir_base(self) -> str:
        return self.base + "/fhir"

    @property
    def archive_dicomweb_base(self) -> str:
        """The DICOMweb base over the whole archive, whatever path the request took."""
        return self.base + DICOMWEB_PREFIX

    def patient_dicomweb_base(self, patient_id: str) -> str:
        return f"{self.fhir_base}/Patient/{patient_id}/$wado-rs"

    @property
    def dicomweb_base(self) -> str:
        """The DICOMweb base this request came through (public URL, patient-scoped under
        ``/fhir/Patient/{id}/$wado-rs``)."""
        if self.path_patient is None:
            return self.archive_dicomweb_base
        return self.patient_dicomweb_base(self.path_patient)


def public_base(request: Request) -> str:
    """The request's public base (see the module's docstring)."""
    settings: Settings = request.app.state.archive.settings
    if settings.base_url:
        return settings.public_base_url
    forwarding = request.scope.get("state", {}).get(FORWARDING_KEY)
    if isinstance(forwarding, ForwardingError):
        raise BadRequest(f"the proxy's forwarding headers cannot be used: {forwarding}")
    if isinstance(forwarding, Forwarding) and forwarding.origin:
        return forwarding.origin
    return settings.public_base_url


def _need(request: Request) -> Need | None:
    """What the matched route needs of the caller (``auth.policy``); a route the policy
    does not list is refused, whatever the mode: nothing is served by default."""
    template = getattr(request.scope.get("route"), "path", request.url.path)
    try:
        return need_of(surface_of(request.url.path), request.method, template)
    except KeyError:
        raise Forbidden(f"{request.method} {template} is not in the authorization policy") from None


def bearer_token(request: Request) -> str:
    """The token of ``Authorization: Bearer <token>`` (RFC 6750 2.1); 401 without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a bearer token is required (Authorization: Bearer ...)", error=None)
    return token.strip()


def _caller(request: Request) -> Caller:
    """The caller a request's token stands for (the developer when no token is checked)."""
    verifier: TokenVerifier | None = request.app.state.verifier
    if verifier is None:
        return DEVELOPER
    info = verifier.verify(bearer_token(request))
    return Caller(
        subject=info.subject or info.client_id or "unknown",
        client_id=info.client_id,
        patient=info.patient,
        grant=parse_scopes(info.scope),
        fhir_user=info.fhir_user,
    )


def _build(request: Request) -> RequestContext:
    """Runs in a worker thread (a sync dependency): token checks may wait on the network."""
    archive: Archive = request.app.state.archive
    store: Store = request.app.state.store
    need = _need(request)
    path_patient = request.path_params.get("patient_id")
    scope = Scope().narrow(path_patient)
    base = public_base(request)
    if need is None:  # public: capabilities and discovery
        return RequestContext(archive, store, PUBLIC_CALLER, scope, path_patient, base)
    caller = _caller(request)
    note_caller(request, caller)  # the audit log names the caller of a refused request too
    access = decide(caller.grant, caller.patient, need)
    if not access.allowed:
        raise Forbidden(access.reason)
    if need.permission in "rs":  # a write names the patient it writes: no look-up
        _look_up_patients(request, caller.patient, path_patient)
    scope = scope.narrow(access.patient).restrict(access.restrictions)  # 403: none usable
    return RequestContext(archive, store, caller, scope, path_patient, base)


def _look_up_patients(request: Request, *patient_ids: str | None) -> None:
    """With an EHR look-up configured (``api.identity``), make the links of the patients
    this request is narrowed to current before the index is asked."""
    linker: EhrLinker | None = request.app.state.ehr_linker
    if linker is not None:
        for patient_id in dict.fromkeys(p for p in patient_ids if p):
            linker.ensure(patient_id)


def request_context(request: Request) -> RequestContext:
    """The FastAPI dependency: this request's context, built once per request."""
    context = getattr(request.state, "context", None)
    if context is None:
        context = _build(request)
        request.state.context = context
    return context


def context_of(request: Request) -> RequestContext:
    """The context of a request whose route took ``request_context``."""
    return request_context(request)


def is_dicomweb(request: Request) -> bool:
    return surface_of(request.url.path) is Surface.DICOMWEB
