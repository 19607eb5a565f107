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


def _decode_json(values: dict[str, Any], json_columns: Sequence[str]) -> dict[str, Any]:
    for column in json_columns:
        values[column] = json.loads(values[column]) if values[column] else []
    return values


_PATIENT_PREFIX = "patient__"
_INSTANCE_PREFIX = "instance__"


def _split(row: Any, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A joined row's own columns, and those labelled with ``prefix`` (prefix removed)."""
    own: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for key, value in row._mapping.items():
        if key.startswith(prefix):
            other[key[len(prefix) :]] = value
        else:
            own[key] = value
    return own, other


def load_studies(
    conn: Connection,
    study_pks: Sequence[int] = (),
    with_instances: bool = True,
    study_uid: str | None = None,
) -> list[StudyRows]:
    """Studies (by pk, in that order; or the one with ``study_uid``), each with its
    patient, series (and instances): two queries, however many studies."""
    studies_with_patient = select(
        study, *(c.label(_PATIENT_PREFIX + c.name) for c in patient.c)
    ).join(patient, patient.c.pk == study.c.patient_pk)
    if study_uid is not None:
        studies_with_patient = studies_with_patient.where(study.c.StudyInstanceUID == study_uid)
    elif study_pks:
        studies_with_patient = studies_with_patient.where(study.c.pk.in_(study_pks))
    else:
        return []
    studies: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    for row in conn.execute(studies_with_patient):
        study_values, patient_values = _split(row, _PATIENT_PREFIX)
        studies[study_values["pk"]] = (_decode_json(study_values, _STUDY_JSON), patient_values)
    if not studies:
        return []
    series_query = select(series).where(series.c.study_pk.in_(list(studies)))
    if with_instances:
        series_query = select(
            series, *(c.label(_INSTANCE_PREFIX + c.name) for c in _INSTANCE_COLUMNS)
        ).join(instance, instance.c.series_pk == series.c.pk)
        series_query = series_query.where(series.c.study_pk.in_(list(studies)))
    series_by_study: dict[int, dict[int, SeriesRows]] = defaultdict(dict)
    for row in conn.execute(series_query):
        series_values, instance_values = _split(row, _INSTANCE_PREFIX)
        by_pk = series_by_study[series_values["study_pk"]]
        if series_values["pk"] not in by_pk:
            by_pk[series_values["pk"]] = SeriesRows(_decode_json(series_values, _SERIES_JSON), [])
        if instance_values:
            instances = by_pk[series_values["pk"]].instances
            assert isinstance(instances, list)
            instances.append(instance_values)
    order = list(studies) if study_uid is not None else study_pks
    return [
        StudyRows(
            study=studies[pk][0],
            patient=studies[pk][1],
            series=list(series_by_study[pk].values()),
        )
        for pk in order
        if pk in studies
    ]


def load_patients(conn: Connection, patient_pks: Sequence[int]) -> list[dict[str, Any]]:
    if not patient_pks:
        return []
    rows = conn.execute(select(patient).where(patient.c.pk.in_(patient_pks)))
    return [dict(r._mapping) for r in rows]


def patient_by_resource_id(conn: Connection, resource_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(patient).where(patient.c.resource_id == resource_id)).first()
    return dict(row._mapping) if row else None
