"""What each route needs of a token, and what a token's grant makes of a request (pure).

``NEEDS`` names, for every route (surface, method, path template as the router declares
it), the resource type and SMART permission it exercises; a route missing from it is
refused (fail closed), and a test checks that every route of the app is listed.

``decide`` turns a caller's grant and launch patient into an ``Access``: refused (403),
or allowed, narrowed to the token's patient when only patient-level scopes grant the
permission. ``user/`` and ``system/`` scopes reach every study (the archive keeps no
per-user rights). DICOMweb serves ImagingStudy data: its searches need ``s`` and its
retrieves ``r`` on ImagingStudy, STOW ``c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pacsfhir.auth.scopes import Grant, Level


class Surface(Enum):
    FHIR = "fhir"
    DICOMWEB = "dicomweb"  # /dicom-web and /fhir/Patient/{id}/$wado-rs alike


def surface_of(path: str) -> Surface:
    """DICOMweb under ``/dicom-web/`` and under a patient's ``$wado-rs`` base, else FHIR."""
    if path.startswith("/dicom-web/") or "/$wado-rs" in path:
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


@dataclass(frozen=True)
class Access:
    allowed: bool
    patient: str | None = None  # the only patient visible (None: no narrowing)
    reason: str = ""


def decide(grant: Grant, launch_patient: str | None, need: Need) -> Access:
    """Whether ``grant`` allows ``need``, and within which patient. A level granted only
    through search-restricted v2 scopes (``?modality=CT``) does not count: restrictions
    are not enforced yet, and a restricted grant must never act as an unrestricted one."""
    levels = grant.levels(need.resource_type, need.permission)
    restricted = False
    for level in (Level.SYSTEM, Level.USER, Level.PATIENT):
        if level not in levels:
            continue
        if grant.restrictions(need.resource_type, need.permission, level) is not None:
            restricted = True
            continue
        if level is not Level.PATIENT:
            return Access(True)
        if need in NOT_FOR_PATIENTS:
            continue
        if launch_patient is None:
            return Access(False, reason="patient-level scope without a patient in the token")
        return Access(True, patient=launch_patient)
    if restricted:
        return Access(
            False,
            reason=f"only search-restricted scopes grant {need.resource_type}."
            f"{need.permission}; this server does not enforce such restrictions yet",
        )
    return Access(
        False,
        reason=f"no scope grants {need.resource_type}.{need.permission} "
        f"(e.g. {'user' if need in NOT_FOR_PATIENTS else 'patient'}/"
        f"{need.resource_type}.{'rs' if need.permission in 'rs' else 'cud'})",
    )
