"""Resource ids and identifier systems derived from DICOM values (pure)."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable

# A fixed namespace so a (issuer, Patient ID) pair always yields the same Patient id.
_PATIENT_NAMESPACE = uuid.UUID("5d8a3e2c-6f0b-4f43-9d39-3a4b6f4f6b10")
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")

ENDPOINT_ID = "dicomweb"  # the archive-wide DICOMweb base
_PATIENT_ENDPOINT = "wado-"  # + patient id: that patient's $wado-rs base
DICOM_UID_SYSTEM = "urn:dicom:uid"


def patient_resource_id(issuer: str, patient_id: str, study_uid: str) -> str:
    """FHIR id of the Patient for (Issuer of Patient ID, Patient ID).

    An empty Patient ID identifies nobody: such a study gets a patient of its own
    (derived from its Study Instance UID) rather than being merged with strangers.
    """
    parts = [issuer, patient_id] if patient_id else ["", "", study_uid]
    return str(uuid.uuid5(_PATIENT_NAMESPACE, json.dumps(parts)))


def issuer_system(issuer: str, qualifiers: dict[str, str]) -> str:
    """The FHIR identifier system for a DICOM issuer ("" when none can be stated).

    Universal Entity ID of type ISO -> urn:oid:, UUID -> urn:uuid:, URI -> itself; an
    issuer that is itself an OID -> urn:oid:. A local issuer name is not a URI; it is
    kept as the identifier's assigner display instead.
    """
    universal = qualifiers.get("UniversalEntityID", "")
    kind = qualifiers.get("UniversalEntityIDType", "").upper()
    if universal:
        if kind == "ISO" and _OID.fullmatch(universal):
            return f"urn:oid:{universal}"
        if kind == "UUID":
            return f"urn:uuid:{universal.lower()}"
        if kind in ("URI", "URL") and ":" in universal:
            return universal
    if _OID.fullmatch(issuer):
        return f"urn:oid:{issuer}"
    return ""


def issuer_display(issuer: str, qualifiers: dict[str, str]) -> str:
    return issuer or qualifiers.get("LocalNamespaceEntityID", "")


def uid_urn(uid: str) -> str:
    return f"urn:oid:{uid}"


_HASHED_ENDPOINT = "wadoh-"  # + a digest of a patient id too long to follow "wado-"
MAX_ID = 64


def patient_endpoint_id(patient_id: str) -> str:
    """The Endpoint id of a patient's scoped DICOMweb base, within FHIR's 64 characters:
    ``wado-{id}``, or for an id longer than 59 characters (an EHR's may be 64) ``wadoh-``
    and 58 hex digits of its SHA-256."""
    if len(_PATIENT_ENDPOINT) + len(patient_id) <= MAX_ID:
        return _PATIENT_ENDPOINT + patient_id
    digest = hashlib.sha256(patient_id.encode("utf-8")).hexdigest()
    return _HASHED_ENDPOINT + digest[: MAX_ID - len(_HASHED_ENDPOINT)]


def endpoint_patient(endpoint_id: str, candidates: Iterable[str] = ()) -> str | None:
    """The patient of a patient-scoped Endpoint id, else None; a digest form names the
    one of ``candidates`` (the long patient ids that may be meant) it was made from."""
    if endpoint_id.startswith(_PATIENT_ENDPOINT):
        return endpoint_id[len(_PATIENT_ENDPOINT) :]
    if endpoint_id.startswith(_HASHED_ENDPOINT):
        return next((c for c in candidates if patient_endpoint_id(c) == endpoint_id), None)
    return None
