"""Write instances into the index in one transaction per batch, keeping the derived
columns (counts, modalities, search keys, versions) correct as instances arrive.

Policy for study- and series-level attributes: the newest instance written wins (its
values replace what the index held), and every study a batch touches gets a new
version. A known SOP Instance UID with different content replaces the old instance.

Writers run one at a time: each write transaction starts with ``lock_index``, so that
what it looks up is still true when it commits (two writers of one instance, study or
patient would otherwise both insert it, and one would fail on the unique key).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, text, update

from pacsfhir.dicom.reader import InstanceAttributes
from pacsfhir.index.counts import advance_generation
from pacsfhir.index.links import link_patients
from pacsfhir.index.schema import instance, patient, series, study, study_code
from pacsfhir.vocabulary.codes import coding_system
from pacsfhir.vocabulary.dates import dicom_datetime, fhir_period
from pacsfhir.vocabulary.ids import issuer_display, issuer_system, patient_resource_id
from pacsfhir.vocabulary.names import name_search_keys

_CHUNK = 500  # values per IN (...) list
# PostgreSQL advisory lock of the index's writers: this namespace ("pacs") and a hash of
# the schema, so that archives in different schemas of one database do not wait on
# each other.
WRITE_LOCK_NAMESPACE = 0x70616373
WRITE_LOCK_WAIT_MS = 30_000  # a writer waits this long for another's batch, then gives up


@dataclass(frozen=True)
class IndexRecord:
    """An instance to index: stored here (``blob``, and the file's ``sha256``), or known
    from an upstream's answer only (``upstream`` named, ``blob`` "", size 0, ``sha256``
    the answer's digest: a remote placeholder)."""

    attributes: InstanceAttributes
    blob: str
    size: int
    sha256: str
    upstream: str | None = None


@dataclass(frozen=True)
class ExistingInstance:
    sha256: str
    blob: str


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def lock_index(conn: Connection) -> None:
    """Take the index's write lock until this transaction ends; the transaction's first
    statement. It waits for the writer holding it up to ``WRITE_LOCK_WAIT_MS`` (then
    SQLAlchemy's OperationalError: the API answers 503 with Retry-After), and every
    statement after it sees all that writers committed before.

    SQLite: ``BEGIN IMMEDIATE``, the database's write lock taken up front (a deferred
    transaction that has read cannot always upgrade; readers go on under WAL).
    PostgreSQL: a transaction-level advisory lock; readers take no part in it.
    """
    wait = int(WRITE_LOCK_WAIT_MS)
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {wait}")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait}")
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, hashtext(current_schema()))"),
            {"namespace": WRITE_LOCK_NAMESPACE},
        )


def existing_instances(conn: Connection, sop_uids: Sequence[str]) -> dict[str, ExistingInstance]:
    found: dict[str, ExistingInstance] = {}
    for chunk in _chunks(sorted(set(sop_uids))):
        rows = conn.execute(
            select(instance.c.SOPInstanceUID, instance.c.sha256, instance.c.blob).where(
                instance.c.SOPInstanceUID.in_(chunk)
            )
        )
        for uid, sha, blob in rows:
            found[uid] = ExistingInstance(sha, blob)
    return found


def instance_blobs(conn: Connection) -> Iterator[tuple[str, str, int, str]]:
    """(SOP Instance UID, blob, size, sha256) of every instance stored here (remote
    placeholders have no blob), streamed."""
    rows = conn.execution_options(yield_per=10_000).execute(
        select(
            instance.c.SOPInstanceUID, instance.c.blob, instance.c.size, instance.c.sha256
        ).where(instance.c.blob != "")
    )
    yield from rows


def _pks_by_key(conn: Connection, column: Any, keys: Sequence[str]) -> dict[str, int]:
    table = column.table
    found: dict[str, int] = {}
    for chunk in _chunks(sorted(set(keys))):
        for key, pk in conn.execute(select(column, table.c.pk).where(column.in_(chunk))):
            found[key] = pk
    return found


def patient_key(attrs: InstanceAttributes) -> str:
    p = attrs.patient
    return patient_resource_id(p["IssuerOfPatientID"], p["PatientID"], attrs.study_uid)


def patient_row(attrs: InstanceAttributes) -> dict[str, Any]:
    p = attrs.patient
    qualifiers = p["IssuerOfPatientIDQualifiers"]
    birth_date = dicom_datetime(p["PatientBirthDate"], "", "")
    birth = fhir_period(birth_date) if birth_date else None
    return {
        "resource_id": patient_key(attrs),
        "PatientID": p["PatientID"],
        "IssuerOfPatientID": issuer_display(p["IssuerOfPatientID"], qualifiers),
        "identifier_system": issuer_system(p["IssuerOfPatientID"], qualifiers),
        "PatientName": p["PatientName"],
        "PatientBirthDate": p["PatientBirthDate"],
        "PatientSex": p["PatientSex"],
        **name_search_keys(p["PatientName"]),
        "birth_low": birth.low if birth else None,
        "birth_high": birth.high if birth else None,
    }


def study_row(attrs: InstanceAttributes, timezone: str) -> dict[str, Any]:
    s = attrs.study
    started = dicom_datetime(s["StudyDate"], s["StudyTime"], s["TimezoneOffsetFromUTC"], timezone)
    period = fhir_period(started) if started else None
    issuer = s["IssuerOfAccessionNumber"]
    return {
        "StudyInstanceUID": s["StudyInstanceUID"],
        "StudyDate": s["StudyDate"],
        "StudyTime": s["StudyTime"],
        "TimezoneOffsetFromUTC": s["TimezoneOffsetFromUTC"],
        "AccessionNumber": s["AccessionNumber"],
        "accession_system": issuer_system("", issuer),
        "accession_issuer": issuer_display("", issuer),
        "StudyID": s["StudyID"],
        "StudyDescription": s["StudyDescription"],
        "ReferringPhysicianName": s["ReferringPhysicianName"],
        "NameOfPhysiciansReadingStudy": json.dumps(s["NameOfPhysiciansReadingStudy"]),
        "ProcedureCodeSequence": json.dumps(s["ProcedureCodeSequence"]),
        "ReasonForTheRequestedProcedure": s["ReasonForTheRequestedProcedure"],
        "ReasonForRequestedProcedureCodeSequence": json.dumps(
            s["ReasonForRequestedProcedureCodeSequence"]
        ),
        "started_low": period.low if period else None,
        "started_high": period.high if period else None,
    }


def series_row(attrs: InstanceAttributes) -> dict[str, Any]:
    s = attrs.series
    return {
        **{k: s[k] for k in s if k not in ("PerformingPhysicianName", "OperatorsName")},
        "PerformingPhysicianName": json.dumps(s["PerformingPhysicianName"]),
        "OperatorsName": json.dumps(s["OperatorsName"]),
    }


def _upsert(
    conn: Connection,
    table: Any,
    key: str,
    rows: dict[str, dict[str, Any]],
    insert_defaults: dict[str, Any],
    versioned: bool = False,
    known: dict[str, int] | None = None,
) -> dict[str, int]:
    """Insert rows whose key is new, update the others; return key -> pk.

    ``versioned``: rows whose values did not change are left alone, changed ones get
    ``version_id + 1`` (``last_updated`` is then expected among the row's values).
    ``known``: key -> pk of the rows already there, when the caller has looked them up.
    """
    key_column = table.c[key]
    if known is None:
        known = _pks_by_key(conn, key_column, list(rows))
    new = [{**insert_defaults, **row} for k, row in rows.items() if k not in known]
    if new:
        conn.execute(table.insert(), new)
    old = [{"_pk": known[k], **row} for k, row in rows.items() if k in known]
    if old and versioned:
        old = _changed_rows(conn, table, old)
    if old:
        columns = [c for c in old[0] if c != "_pk"]
        values: dict[str, Any] = {c: bindparam(c) for c in columns}
        if versioned:
            values["version_id"] = table.c.version_id + 1
        statement = update(table).where(table.c.pk == bindparam("_pk")).values(values)
        conn.execute(statement, old)
    return known | _pks_by_key(conn, key_column, [k for k in rows if k not in known])


def _changed_rows(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    compared = [c for c in rows[0] if c not in ("_pk", "last_updated")]
    current: dict[int, tuple[Any, ...]] = {}
    for chunk in _chunks([r["_pk"] for r in rows]):
        query = select(table.c.pk, *(table.c[c] for c in compared)).where(table.c.pk.in_(chunk))
        for pk, *values in conn.execute(query):
            current[pk] = tuple(values)
    return [r for r in rows if current.get(r["_pk"]) != tuple(r[c] for c in compared)]


def write_instances(
    conn: Connection, records: Sequence[IndexRecord], now: int, timezone: str = ""
) -> None:
    """Index a batch of stored instances (one transaction is the caller's)."""
    if not records:
        return
    # The newest instance of each patient, study and series supplies its row (computed once).
    latest_study = {r.attributes.study_uid: r.attributes for r in records}
    latest_series = {r.attributes.series_uid: r.attributes for r in records}
    study_patient = {uid: patient_key(a) for uid, a in latest_study.items()}
    latest_patient = {study_patient[uid]: a for uid, a in latest_study.items()}
    patients = {key: {**patient_row(a), "last_updated": now} for key, a in latest_patient.items()}
    patient_pks = _upsert(conn, patient, "resource_id", patients, {"version_id": 1}, versioned=True)
    studies = {
        uid: {
            **study_row(a, timezone),
            "patient_pk": patient_pks[study_patient[uid]],
            "last_updated": now,
        }
        for uid, a in latest_study.items()
    }
    study_defaults = {
        "number_of_series": 0,
        "number_of_instances": 0,
        "modalities": "",
        "version_id": 0,
    }
    study_pks = _upsert(conn, study, "StudyInstanceUID", studies, study_defaults)
    _replace_reason_codes(conn, study_pks, records)
    series_rows = {
        uid: {**series_row(a), "study_pk": study_pks[a.study_uid]}
        for uid, a in latest_series.items()
    }
    series_pks = _upsert(conn, series, "SeriesInstanceUID", series_rows, {"number_of_instances": 0})
    # One look-up of the instances already indexed: their pks (for the upsert) and the
    # series they were in (whose counts change when an instance moves).
    known_instances: dict[str, int] = {}
    previous_series: set[int] = set()
    for chunk in _chunks(sorted({r.attributes.sop_uid for r in records})):
        query = select(instance.c.SOPInstanceUID, instance.c.pk, instance.c.series_pk)
        for uid, pk, series_pk in conn.execute(query.where(instance.c.SOPInstanceUID.in_(chunk))):
            known_instances[uid] = pk
            previous_series.add(series_pk)
    instance_rows = {}
    for r in records:
        instance_rows[r.attributes.sop_uid] = {
            **r.attributes.instance,
            "series_pk": series_pks[r.attributes.series_uid],
            "blob": r.blob,
            "size": r.size,
            "sha256": r.sha256,
            "stored_at": now,
            "upstream": r.upstream,
        }
    _upsert(conn, instance, "SOPInstanceUID", instance_rows, {}, known=known_instances)
    touched_series = set(series_pks.values()) | previous_series
    touched_studies = set(study_pks.values()) | _studies_of(conn, touched_series)
    _refresh_counts(conn, touched_series, touched_studies, now)
    link_patients(conn, patient_pks.values(), now)  # a new or changed Patient ID may link
    advance_generation(conn)


def _replace_reason_codes(
    conn: Connection, study_pks: dict[str, int], records: Sequence[IndexRecord]
) -> None:
    latest = {r.attributes.study_uid: r.attributes for r in records}
    for chunk in _chunks(sorted(study_pks.values())):
        conn.execute(
            delete(study_code).where(
                study_code.c.study_pk.in_(chunk), study_code.c.param == "reason"
            )
        )
    rows = [
        {
            "study_pk": study_pks[uid],
            "param": "reason",
            "system": coding_system(code["CodingSchemeDesignator"]) or "",
            "code": code["CodeValue"],
        }
        for uid, attrs in latest.items()
        for code in attrs.study["ReasonForRequestedProcedureCodeSequence"]
        if code["CodeValue"]
    ]
    if rows:
        conn.execute(study_code.insert(), rows)


def drop_placeholders(conn: Connection, study_uid: str, keep: Collection[str], now: int) -> int:
    """Remove the remote placeholders of study ``study_uid`` whose SOP Instance UID is not
    in ``keep`` (the upstream no longer has them), and what that empties; how many."""
    rows = conn.execute(
        select(instance.c.pk, instance.c.series_pk, instance.c.SOPInstanceUID)
        .join(series, series.c.pk == instance.c.series_pk)
        .join(study, study.c.pk == series.c.study_pk)
        .where(study.c.StudyInstanceUID == study_uid, instance.c.upstream.is_not(None))
    ).all()
    kept = set(keep)
    gone = [(pk, series_pk) for pk, series_pk, uid in rows if uid not in kept]
    if not gone:
        return 0
    for chunk in _chunks([pk for pk, _ in gone]):
        conn.execute(delete(instance).where(instance.c.pk.in_(chunk)))
    touched_series = {series_pk for _, series_pk in gone}
    _refresh_counts(conn, touched_series, _studies_of(conn, touched_series), now)
    advance_generation(conn)
    return len(gone)


def _studies_of(conn: Connection, series_pks: set[int]) -> set[int]:
    found: set[int] = set()
    for chunk in _chunks(sorted(series_pks)):
        found.update(
            pk for (pk,) in conn.execute(select(series.c.study_pk).where(series.c.pk.in_(chunk)))
        )
    return found


def _refresh_counts(conn: Connection, series_pks: set[int], study_pks: set[int], now: int) -> None:
    instance_count = (
        select(func.count())
        .select_from(instance)
        .where(instance.c.series_pk == series.c.pk)
        .scalar_subquery()
    )
    for chunk in _chunks(sorted(series_pks)):
        conn.execute(
            update(series).where(series.c.pk.in_(chunk)).values(number_of_instances=instance_count)
        )
        conn.execute(
            delete(series).where(series.c.pk.in_(chunk), series.c.number_of_instances == 0)
        )
    for chunk in _chunks(sorted(study_pks)):
        summary: dict[int, tuple[int, int, set[str]]] = {pk: (0, 0, set()) for pk in chunk}
        rows = conn.execute(
            select(series.c.study_pk, series.c.Modality, series.c.number_of_instances).where(
                series.c.study_pk.in_(chunk)
            )
        )
        for study_pk, modality, count in rows:
            n_series, n_instances, modalities = summary[study_pk]
            summary[study_pk] = (n_series + 1, n_instances + count, modalities | {modality})
        conn.execute(
            update(study)
            .where(study.c.pk == bindparam("_pk"))
            .values(
                number_of_series=bindparam("n_series"),
                number_of_instances=bindparam("n_instances"),
                modalities=bindparam("mods"),
                version_id=study.c.version_id + 1,
                last_updated=now,
            ),
            [
                {
                    "_pk": pk,
                    "n_series": n_series,
                    "n_instances": n_instances,
                    "mods": "\\".join(sorted(m for m in modalities if m)),
                }
                for pk, (n_series, n_instances, modalities) in summary.items()
            ],
        )
        conn.execute(delete(study).where(study.c.pk.in_(chunk), study.c.number_of_series == 0))
