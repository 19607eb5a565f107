"""Read studies and patients back out of the index as plain rows for the mapping layer."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from pacsfhir.index.schema import instance, patient, series, study
from pacsfhir.mapping.imagingstudy import SeriesRows

_STUDY_JSON = (
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "ReasonForRequestedProcedureCodeSequence",
)
_SERIES_JSON = ("PerformingPhysicianName", "OperatorsName")
_INSTANCE_COLUMNS = (
    instance.c.series_pk,
    instance.c.SOPInstanceUID,
    instance.c.SOPClassUID,
    instance.c.InstanceNumber,
    instance.c.title,
)


@dataclass(frozen=True)
class StudyRows:
    study: dict[str, Any]
    patient: dict[str, Any]
    series: list[SeriesRows]


def _decode(row: Any, json_columns: Sequence[str]) -> dict[str, Any]:
    values = dict(row._mapping)
    for column in json_columns:
        values[column] = json.loads(values[column]) if values[column] else []
    return values


def load_studies(
    conn: Connection, study_pks: Sequence[int], with_instances: bool = True
) -> list[StudyRows]:
    """Studies in the order of ``study_pks``, each with patient, series (and instances)."""
    if not study_pks:
        return []
    study_rows = {
        r.pk: _decode(r, _STUDY_JSON)
        for r in conn.execute(select(study).where(study.c.pk.in_(study_pks)))
    }
    patient_pks = {s["patient_pk"] for s in study_rows.values()}
    patients = {
        r.pk: dict(r._mapping)
        for r in conn.execute(select(patient).where(patient.c.pk.in_(patient_pks)))
    }
    series_by_study: dict[int, list[dict[str, Any]]] = defaultdict(list)
    series_pks = []
    for r in conn.execute(select(series).where(series.c.study_pk.in_(study_pks))):
        values = _decode(r, _SERIES_JSON)
        series_by_study[values["study_pk"]].append(values)
        series_pks.append(values["pk"])
    instances_by_series: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if with_instances and series_pks:
        query = select(*_INSTANCE_COLUMNS).where(instance.c.series_pk.in_(series_pks))
        for r in conn.execute(query):
            instances_by_series[r.series_pk].append(dict(r._mapping))
    result = []
    for pk in study_pks:
        if pk not in study_rows:
            continue
        s = study_rows[pk]
        result.append(
            StudyRows(
                study=s,
                patient=patients[s["patient_pk"]],
                series=[
                    SeriesRows(se, instances_by_series.get(se["pk"], []))
                    for se in series_by_study.get(pk, [])
                ],
            )
        )
    return result


def study_pk_by_uid(conn: Connection, study_uid: str) -> int | None:
    return conn.execute(
        select(study.c.pk).where(study.c.StudyInstanceUID == study_uid)
    ).scalar_one_or_none()


def load_patients(conn: Connection, patient_pks: Sequence[int]) -> list[dict[str, Any]]:
    if not patient_pks:
        return []
    rows = conn.execute(select(patient).where(patient.c.pk.in_(patient_pks)))
    return [dict(r._mapping) for r in rows]


def patient_by_resource_id(conn: Connection, resource_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(patient).where(patient.c.resource_id == resource_id)).first()
    return dict(row._mapping) if row else None
