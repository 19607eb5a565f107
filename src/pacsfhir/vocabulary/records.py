"""The plain records the index hands to the mapping (pure data, no behaviour)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

Row = Mapping[str, Any]  # an index row keyed by DICOM keyword (JSON columns decoded)


@dataclass(frozen=True)
class SeriesRows:
    """A series row and its instance rows, as the index reads them for ImagingStudy."""

    series: Row
    instances: Sequence[Row] = field(default_factory=tuple)


@dataclass(frozen=True)
class AuditRecord:
    """One audited request, as the index keeps it."""

    id: str
    recorded: int  # microseconds since the epoch, UTC
    action: str  # C, R, U, D or E
    outcome: int  # 0, 4, 8 (or 12)
    status: int  # the HTTP status answered
    method: str
    route: str  # the route's path template
    subject: str | None = None
    client_id: str | None = None
    fhir_user: str | None = None
    token_patient: str | None = None
    patient: str | None = None
    study_uid: str | None = None
    address: str | None = None
    query_names: tuple[str, ...] = ()


class IdentityKey(NamedTuple):
    """A patient identifier as a DICOM patient row holds one: the Patient ID, the
    identifier system derived from its issuer, and the issuer's name when it has no URI
    ("" otherwise). An EHR patient's identifiers are kept so (``index.links``), read off
    its FHIR resource (``mapping.patient.identity_keys``)."""

    value: str
    system: str
    issuer: str

    @classmethod
    def of_dicom(cls, patient_id: str, system: str, issuer: str) -> IdentityKey:
        """The key of a DICOM patient: its Patient ID, the system derived from its
        issuer, and the Issuer of Patient ID only when no system could be derived."""
        return cls(patient_id, system, "" if system else issuer)
