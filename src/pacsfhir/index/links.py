"""Patient identity: the EHR's patients and the DICOM patients linked to them.

An EHR patient (``linked_patient``) is written by ``PUT /fhir/Patient/{id}`` or looked up
at the EHR; its identifiers are kept as ``IdentityKey`` rows. A DICOM patient is linked to
the EHR patient one of whose keys equals its own (Patient ID, identifier system derived
from the Issuer of Patient ID, and the issuer's name when it has no URI): the link is kept
in ``patient.linked_to`` and maintained here when an EHR patient is written and when
ingest creates or changes a patient row. One key belongs to one EHR patient at most.

Writers hold the index's write lock (``writer.lock_index``) around every function that
changes rows here; a change of link gives the patient and its studies a new version.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, tuple_, update

from pacsfhir.index.counts import advance_generation
from pacsfhir.index.schema import linked_identifier, linked_patient, patient, study
from pacsfhir.vocabulary.records import IdentityKey


@dataclass(frozen=True)
class LinkedRecord:
    resource_id: str
    resource: dict[str, Any]  # as written, without meta
    source: str  # "fhir" (written here) or "ehr" (looked up at the EHR)
    version_id: int
    last_updated: int
    fetched_at: int


class LinkConflict(Exception):
    """An identifier already belongs to another EHR patient."""

    def __init__(self, key: IdentityKey, owner: str) -> None:
        super().__init__(
            f"identifier {key.system or key.issuer}|{key.value} already belongs to Patient/{owner}"
        )
        self.key = key
        self.owner = owner


SOURCE_FHIR = "fhir"
SOURCE_EHR = "ehr"

_KEY_MATCHES_PATIENT = and_(
    linked_identifier.c.value == patient.c.PatientID,
    linked_identifier.c.system == patient.c.identifier_system,
    or_(
        linked_identifier.c.system != "",
        linked_identifier.c.issuer == patient.c.IssuerOfPatientID,
    ),
)
# The EHR patient a patient row's identity belongs to (correlated with ``patient``).
_OWNER_OF_PATIENT = (
    select(linked_patient.c.resource_id)
    .join(linked_identifier, linked_identifier.c.linked_pk == linked_patient.c.pk)
    .where(_KEY_MATCHES_PATIENT)
    .order_by(linked_patient.c.pk)
    .limit(1)
    .scalar_subquery()
)


def linked_record(conn: Connection, resource_id: str) -> LinkedRecord | None:
    row = conn.execute(
        select(linked_patient).where(linked_patient.c.resource_id == resource_id)
    ).first()
    if row is None:
        return None
    return LinkedRecord(
        resource_id=row.resource_id,
        resource=json.loads(row.resource),
        source=row.source,
        version_id=row.version_id,
        last_updated=row.last_updated,
        fetched_at=row.fetched_at,
    )


def linked_patients_of(conn: Connection, resource_id: str) -> list[str]:
    """The ids of the DICOM patients linked to EHR patient ``resource_id``, sorted."""
    query = select(patient.c.resource_id).where(patient.c.linked_to == resource_id)
    return sorted(conn.scalars(query))


def long_ids(conn: Connection, longer_than: int = 59) -> list[str]:
    """The EHR patient ids longer than ``longer_than`` characters (whose Endpoint ids are
    digests, see ``vocabulary.ids.patient_endpoint_id``)."""
    query = select(linked_patient.c.resource_id).where(
        func.length(linked_patient.c.resource_id) > longer_than
    )
    return list(conn.scalars(query))


def dicom_patient_ids(conn: Connection, patient_ids: Collection[str]) -> list[str]:
    """The DICOM Patient IDs FHIR patients ``patient_ids`` stand for: those of the DICOM
    patients they name or are linked to, and the identifiers of the EHR patients among
    them (what an upstream PACS is asked by), sorted."""
    ids = sorted(set(patient_ids))
    if not ids:
        return []
    found = set(
        conn.scalars(
            select(patient.c.PatientID).where(
                or_(patient.c.resource_id.in_(ids), patient.c.linked_to.in_(ids))
            )
        )
    )
    found.update(
        conn.scalars(
            select(linked_identifier.c.value)
            .join(linked_patient, linked_patient.c.pk == linked_identifier.c.linked_pk)
            .where(linked_patient.c.resource_id.in_(ids))
        )
    )
    return sorted(v for v in found if v)


def owner_of(conn: Connection, key: IdentityKey) -> str | None:
    """The EHR patient whose identifiers hold ``key``, if any."""
    query = (
        select(linked_patient.c.resource_id)
        .join(linked_identifier, linked_identifier.c.linked_pk == linked_patient.c.pk)
        .where(
            linked_identifier.c.value == key.value,
            linked_identifier.c.system == key.system,
            linked_identifier.c.issuer == key.issuer,
        )
    )
    return conn.scalars(query).first()


def save_linked_patient(
    conn: Connection,
    resource_id: str,
    resource: dict[str, Any],
    keys: Sequence[IdentityKey],
    source: str,
    now: int,
) -> tuple[LinkedRecord, bool]:
    """Create or replace EHR patient ``resource_id`` and relink the DICOM patients its
    ``keys`` match; (the record, whether it was created). A new version whenever the
    resource changes (a record written through FHIR gets one at every write). Raises
    ``LinkConflict`` when a key is another EHR patient's. The caller holds the write lock.
    """
    unique_keys = sorted(set(keys))
    for key in unique_keys:
        owner = owner_of(conn, key)
        if owner is not None and owner != resource_id:
            raise LinkConflict(key, owner)
    text = json.dumps(resource, sort_keys=True, separators=(",", ":"))
    previous = conn.execute(
        select(linked_patient.c.pk, linked_patient.c.resource, linked_patient.c.version_id).where(
            linked_patient.c.resource_id == resource_id
        )
    ).first()
    created = previous is None
    if previous is None:
        version = 1
        inserted = conn.execute(
            insert(linked_patient).values(
                resource_id=resource_id,
                resource=text,
                source=source,
                version_id=version,
                last_updated=now,
                fetched_at=now,
            )
        ).inserted_primary_key
        assert inserted is not None
        pk = inserted[0]
    else:
        pk = previous.pk
        changed = source == SOURCE_FHIR or previous.resource != text
        version = previous.version_id + 1 if changed else previous.version_id
        values: dict[str, Any] = {"source": source, "fetched_at": now}
        if changed:
            values |= {"resource": text, "version_id": version, "last_updated": now}
        conn.execute(update(linked_patient).where(linked_patient.c.pk == pk).values(values))
        conn.execute(delete(linked_identifier).where(linked_identifier.c.linked_pk == pk))
    if unique_keys:
        conn.execute(
            insert(linked_identifier),
            [{"linked_pk": pk, **key._asdict()} for key in unique_keys],
        )
    _relink(conn, resource_id, unique_keys, now)
    record = linked_record(conn, resource_id)
    assert record is not None
    return record, created


def link_patients(conn: Connection, patient_pks: Collection[int], now: int) -> None:
    """Set the link of patient rows ingest has just created or changed (their identity
    may have changed); those whose link changes get a new version, with their studies."""
    if not patient_pks:
        return
    if conn.execute(select(linked_identifier.c.pk).limit(1)).first() is None:
        return  # no EHR patient: nothing to link (the common case, one cheap query)
    _update_links(conn, patient_pks, now)


def _relink(conn: Connection, resource_id: str, keys: Sequence[IdentityKey], now: int) -> None:
    """Link the patients ``keys`` match to ``resource_id``; unlink those it held before
    that no longer match."""
    candidates = set(conn.scalars(select(patient.c.pk).where(patient.c.linked_to == resource_id)))
    for start in range(0, len(keys), 200):
        chunk = keys[start : start + 200]
        query = select(patient.c.pk).where(
            tuple_(patient.c.PatientID, patient.c.identifier_system).in_(
                [(value, system) for value, system, _ in chunk]
            )
        )
        candidates.update(conn.scalars(query))
    _update_links(conn, candidates, now)


def _update_links(conn: Connection, patient_pks: Collection[int], now: int) -> None:
    """Recompute ``linked_to`` of patients ``patient_pks``; those whose link changes get a
    new version, and so do their studies (their ``subject`` changes)."""
    pks = sorted(patient_pks)
    for start in range(0, len(pks), 500):
        chunk = pks[start : start + 500]
        changed = list(
            conn.scalars(
                select(patient.c.pk).where(
                    patient.c.pk.in_(chunk),
                    patient.c.linked_to.is_distinct_from(_OWNER_OF_PATIENT),
                )
            )
        )
        if not changed:
            continue
        conn.execute(
            update(patient)
            .where(patient.c.pk.in_(changed))
            .values(
                linked_to=_OWNER_OF_PATIENT,
                version_id=patient.c.version_id + 1,
                last_updated=now,
            )
        )
        conn.execute(
            update(study)
            .where(study.c.patient_pk.in_(changed))
            .values(version_id=study.c.version_id + 1, last_updated=now)
        )
        advance_generation(conn)
