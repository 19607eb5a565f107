"""Index look-ups for the DICOMweb surface, always within a scope: the whole archive, or
one patient's studies (the patient-scoped ``$wado-rs`` base), where anything else does
not exist."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select

from pacsfhir.index.schema import instance, series, study
from pacsfhir.index.scope import Scope


@dataclass(frozen=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number_of_frames: int
    blob: str  # "": a remote placeholder, held by ``upstream``
    size: int
    upstream: str | None = None


def stored_instances(
    conn: Connection,
    scope: Scope,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> list[StoredInstance]:
    """The stored instances of a study, series or instance in ``scope``, in Series Number
    then Instance Number order (ties by UID); empty when nothing matches (or it is out of
    scope)."""
    query = (
        select(
            study.c.StudyInstanceUID,
            series.c.SeriesInstanceUID,
            instance.c.SOPInstanceUID,
            instance.c.SOPClassUID,
            instance.c.TransferSyntaxUID,
            instance.c.NumberOfFrames,
            instance.c.blob,
            instance.c.size,
            instance.c.upstream,
        )
        .select_from(study.join(series).join(instance))
        .where(study.c.StudyInstanceUID == study_uid, scope.clause())
    )
    if series_uid is not None:
        query = query.where(series.c.SeriesInstanceUID == series_uid)
    if sop_uid is not None:
        query = query.where(instance.c.SOPInstanceUID == sop_uid)
    query = query.add_columns(series.c.SeriesNumber, instance.c.InstanceNumber)
    rows = conn.execute(query).all()
    ordered = sorted(
        rows,
        key=lambda r: (
            _number(r.SeriesNumber),
            r.SeriesInstanceUID,
            _number(r.InstanceNumber),
            r.SOPInstanceUID,
        ),
    )
    return [StoredInstance(*row[:9]) for row in ordered]


def _number(text: str) -> tuple[int, float, str]:
    """Sort key of an IS/DS-like value: numbers in numeric order, then the rest as text."""
    try:
        return (0, float(text), "")
    except (TypeError, ValueError):
        return (1, 0.0, text or "")
