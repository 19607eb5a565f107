"""What each route needs of a token, and what a token's grant makes of a request (pure).

``NEEDS`` names, for every route (surface, method, path template as the router declares
it), the resource type and SMART permission it exercises; a route missing from it is
refused (fail closed), and a test checks that every route of the app is listed.

``decide`` turns a caller's grant and launch patient into an ``Access``: refused (403),
or allowed, narrowed to the token's patient when only patient-level scopes grant the
permission, and to the studies matching a v2 scope's search restriction
(``patient/ImagingStudy.rs?modality=CT``) when only restricted scopes do. ``user/`` and
``system/`` scopes reach every study (the archive keeps no per-user rights). DICOMweb
serves ImagingStudy data: its searches need ``s`` and its retrieves ``r`` on
ImagingStudy, STOW ``c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pacsfhir.auth.scopes import Grant, Level


class Surface(Enum):
    FHIR = "fhir"
    DICOMWEB = "dicomweb"  # /dicom-web and /fhir/Patient/{id}/$wado-rs alike


WADO_URI = "/wado"


def surface_of(path: str) -> Surface:
    """DICOMweb under ``/dicom-web/``, under a patient's ``$wado-rs`` base and at
    WADO-URI's ``/wado``, else FHIR."""
    if path.startswith("/dicom-web/") or "/$wado-rs" in path or path == WADO_URI:
        return Surface.DICOMWEB
    return Surface.FHIR


@dataclass(frozen=True)
class Need:
    resource_type: str
    permission: str  # a letter of scopes.PERMISSIONS


PUBLIC = None  # a route anyone may call: no patient data (capabilities, discovery)
IMAGING_SEARCH = Need("ImagingStudy", "s")
IMAGING_READ = Need("ImagingStudy", "r")

_QIDO = (
    "/studies",
    "/series",
    "/instances",
    "/studies/{study_uid}/series",
    "/studies/{study_uid}/instances",
    "/studies/{study_uid}/series/{series_uid}/instances",
)

NEEDS: dict[tuple[Surface, str, str], Need | None] = {
    (Surface.FHIR, "GET", "/fhir/metadata"): PUBLIC,
    (Surface.FHIR, "GET", "/fhir/.well-known/smart-configuration"): PUBLIC,
    (Surface.FHIR, "GET", "/fhir/ImagingStudy"): IMAGING_SEARCH,
    (Surface.FHIR, "POST", "/fhir/ImagingStudy/_search"): IMAGING_SEARCH,
    (Surface.FHIR, "GET", "/fhir/ImagingStudy/{study_id}"): IMAGING_READ,
    (Surface.FHIR, "GET", "/fhir/Patient/{patient_id}"): Need("Patient", "r"),
    # Linking an EHR patient to DICOM patients decides whose studies a patient token
    # sees: user and system scopes only (see NOT_FOR_PATIENTS).
    (Surface.FHIR, "PUT", "/fhir/Patient/{patient_id}"): Need("Patient", "u"),
    # An Endpoint says where ImagingStudy data is retrieved (a patient's base names them):
    # reading it is reading imaging, whatever an app asked of Endpoint itself.
    (Surface.FHIR, "GET", "/fhir/Endpoint/{endpoint_id}"): IMAGING_READ,
    (Surface.FHIR, "GET", "/fhir/Patient/{patient_id}/ImagingStudy"): IMAGING_SEARCH,
    (Surface.FHIR, "POST", "/fhir/Patient/{patient_id}/ImagingStudy/_search"): IMAGING_SEARCH,
    **{(Surface.DICOMWEB, "GET", path): IMAGING_SEARCH for path in _QIDO},
    (Surface.DICOMWEB, "POST", "/studies"): Need("ImagingStudy", "c"),
    (Surface.DICOMWEB, "POST", "/studies/{study_uid}"): Need("ImagingStudy", "c"),
    # WADO-URI names one instance in its query: a retrieve, like WADO-RS's
    (Surface.DICOMWEB, "GET", WADO_URI): IMAGING_READ,
    (Surface.FHIR, "GET", "/fhir/AuditEvent"): Need("AuditEvent", "s"),
    (Surface.FHIR, "GET", "/fhir/AuditEvent/{event_id}"): Need("AuditEvent", "r"),
}

# What no patient-level scope reaches: the audit log (about every patient), and writing a
# Patient (its identifiers link DICOM patients to it: a patient's app could claim
# another's studies).
NOT_FOR_PATIENTS = frozenset(
    {
        *(Need("AuditEvent", p) for p in "cruds"),
        *(Need("Patient", p) for p in "cud"),
    }
)


def need_of(surface: Surface, method: str, template: str) -> Need | None:
    """What a route needs. Every other DICOMweb GET is a WADO-RS retrieve (ImagingStudy
    read); an unknown FHIR route raises KeyError (refused by the caller)."""
    key = (surface, method, template)
    if key in NEEDS:
        return NEEDS[key]
    if surface is Surface.DICOMWEB and method == "GET" and template.startswith("/studies/"):
        return IMAGING_READ
    raise KeyError(key)


# A scope's search restriction: (parameter, value) pairs that must all hold; a request
# granted through restricted scopes sees the studies matching any one of its alternatives.
Restriction = tuple[tuple[str, str], ...]

# The needs a restriction can be honoured on: the restriction is a FHIR ImagingStudy
# search, which selects studies to read or search among. A restricted write (what would
# the restriction say of a study not stored yet?), Patient or AuditEvent stays refused.
RESTRICTABLE = frozenset({IMAGING_READ, IMAGING_SEARCH})


@dataclass(frozen=True)
class Access:
    allowed: bool
    patient: str | None = None  # the only patient visible (None: no narrowing)
    reason: str = ""
    # the search restrictions one of which every visible study matches (None: none)
    restrictions: tuple[Restriction, ...] | None = None


def decide(grant: Grant, launch_patient: str | None, need: Need) -> Access:
    """Whether ``grant`` allows ``need``, within which patient and which restrictions.

    The first level (system, user, patient) granting ``need`` without restriction wins;
    failing that, the first level granting it through search-restricted scopes, with
    their restrictions (any one suffices), and only on ``RESTRICTABLE`` needs. One level
    is chosen, never a union of two: a restricted broad scope beside an unrestricted
    narrow one (``user/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs``) gives the
    patient's every study but not other patients' CTs. The choice may under-grant; it
    never over-grants."""
    levels = grant.levels(need.resource_type, need.permission)
    restricted: tuple[Level, tuple[Restriction, ...]] | None = None
    refusal = ""
    for level in (Level.SYSTEM, Level.USER, Level.PATIENT):
        if level not in levels or (level is Level.PATIENT and need in NOT_FOR_PATIENTS):
            continue
        restrictions = grant.restrictions(need.resource_type, need.permission, level)
        if restrictions is not None:
            restricted = restricted or (level, restrictions)
            continue
        if level is not Level.PATIENT:
            return Access(True)
        if launch_patient is not None:
            return Access(True, patient=launch_patient)
        refusal = "patient-level scope without a patient in the token"
    if restricted is not None:
        return _restricted(need, launch_patient, *restricted)
    if refusal:
        return Access(False, reason=refusal)
    return Access(
        False,
        reason=f"no scope grants {need.resource_type}.{need.permission} "
        f"(e.g. {'user' if need in NOT_FOR_PATIENTS else 'patient'}/"
        f"{need.resource_type}.{'rs' if need.permission in 'rs' else 'cud'})",
    )


def _restricted(
    need: Need, launch_patient: str | None, level: Level, restrictions: tuple[Restriction, ...]
) -> Access:
    if need not in RESTRICTABLE or not restrictions:
        return Access(
            False,
            reason=f"only search-restricted scopes grant {need.resource_type}."
            f"{need.permission}; restrictions are honoured on ImagingStudy read and search "
            "only",
        )
    if level is not Level.PATIENT:
        return Access(True, restrictions=restrictions)
    if launch_patient is None:
        return Access(False, reason="patient-level scope without a patient in the token")
    return Access(True, patient=launch_patient, restrictions=restrictions)
