"""The local archive as a ``Store``: the index (SQLite or PostgreSQL) and the blob store.

Reads run on a short-lived read connection each (``index.engine.read_connection``);
STOW-RS goes through the ingest path the CLI uses (``dicom.prepare``, then
``dicom.ingest.commit_batch`` under the index's write lock).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydicom.errors import InvalidDicomError
from sqlalchemy import Connection

from pacsfhir.archive import Archive
from pacsfhir.dicom.identify import identify
from pacsfhir.dicom.ingest import Outcome, commit_batch
from pacsfhir.dicom.metadata import metadata_of
from pacsfhir.dicom.prepare import Prepared, Rejected, prepare_staged
from pacsfhir.dicom.reader import InstanceAttributes
from pacsfhir.dicom.storage import BlobStore
from pacsfhir.dicom.upload import ReceivedPart
from pacsfhir.errors import NotFound
from pacsfhir.index import links, qido, queries
from pacsfhir.index.dicomweb import StoredInstance, stored_instances
from pacsfhir.index.engine import read_connection
from pacsfhir.index.queries import StudyRows
from pacsfhir.index.scope import Scope
from pacsfhir.index.search import search_page
from pacsfhir.index.writer import patient_key, patient_row
from pacsfhir.mapping.patient import linked_patient
from pacsfhir.mapping.patient import patient as derived_patient
from pacsfhir.search.model import SearchRequest
from pacsfhir.search.qido import QidoQuery
from pacsfhir.store.base import Failure, QidoAnswer, Relay, StoreOutcome, StudyPage
from pacsfhir.vocabulary.levels import Level
from pacsfhir.vocabulary.records import IdentityKey

# STOW-RS Failure Reasons (PS3.18 Table I.2-2, and ours: docs/conformance.md)
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000
NOT_DICOM_PART = 0xC001  # ours: a part whose Content-Type is not application/dicom
STUDY_MISMATCH = 0xC409  # ours: the instance is not of the study in the request URL
PATIENT_MISMATCH = 0xC410  # ours: under /Patient/{id}/$wado-rs, another patient's instance
OUT_OF_RESOURCES = 0xA700
FAILURE_REASONS = {
    CANNOT_UNDERSTAND: "not DICOM, truncated, or without valid Study/Series/SOP Instance"
    " UIDs or SOP Class UID",
    NOT_DICOM_PART: "part Content-Type is not application/dicom",
    STUDY_MISMATCH: "Study Instance UID differs from the study in the request URL",
    PATIENT_MISMATCH: "instance belongs to another patient than the scoped one",
    OUT_OF_RESOURCES: "out of storage",
    PROCESSING_FAILURE: "processing failure",
}
# Failures of the request's syntax (a part that is not a readable, complete instance): a
# request whose every part fails so is a 400, one with any other failure a 409 (PS3.18
# Table 10.5.3-1).
SYNTAX_FAILURES = frozenset({CANNOT_UNDERSTAND, NOT_DICOM_PART})


class LocalStore:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def start(self) -> None:
        """Nothing runs in the background of the archive's store."""

    def close(self) -> None:
        """Nothing to end (the archive is closed by whoever opened it)."""

    # -- FHIR ------------------------------------------------------------------------

    def search_studies(
        self, search: SearchRequest, scope: Scope, endpoint_id: str, with_instances: bool
    ) -> StudyPage:
        archive = self.archive
        with read_connection(archive.engine) as conn:
            page = search_page(
                conn, search, scope.clause(), endpoint_id, archive.counts, extra_key=scope.key
            )
            rows = queries.load_studies(conn, page.study_pks, with_instances=with_instances)
        return StudyPage(rows, page.total, page.next_cursor)

    def study(self, study_uid: str, scope: Scope) -> StudyRows | None:
        with read_connection(self.archive.engine) as conn:
            rows = queries.load_studies(conn, study_uid=study_uid)
            if not rows:
                return None
            found = rows[0]
            if not scope.admits(found.patient["resource_id"], found.patient["linked_to"]):
                return None
            # search restrictions are tested in SQL only (a row cannot tell)
            if scope.restricted and not queries.study_where(conn, study_uid, scope.clause()):
                return None
        return found

    def patient(self, patient_id: str, scope: Scope) -> dict[str, Any] | None:
        with read_connection(self.archive.engine) as conn:
            return _visible_patient(conn, patient_id, scope)

    def subjects(self, studies: Sequence[StudyRows], scope: Scope) -> list[dict[str, Any]]:
        """The DICOM patient's own Patient (its row came with the study), or the EHR
        patient it is linked to."""
        found: dict[str, dict[str, Any]] = {}
        with read_connection(self.archive.engine) as conn:
            for row in sorted(studies, key=lambda r: r.patient["pk"]):
                linked_to = row.patient["linked_to"]
                if linked_to is None:
                    found.setdefault(row.patient["resource_id"], derived_patient(row.patient))
                elif linked_to not in found:
                    resource = _visible_patient(conn, linked_to, scope)
                    if resource is not None:
                        found[linked_to] = resource
        return list(found.values())

    def patient_visible(self, patient_id: str, scope: Scope) -> bool:
        with read_connection(self.archive.engine) as conn:
            if scope.restricted:
                return queries.any_study_where(conn, scope.narrow(patient_id).clause())
            return (
                queries.patient_by_resource_id(conn, patient_id) is not None
                or links.linked_record(conn, patient_id) is not None
            )

    def long_patient_ids(self) -> list[str]:
        with read_connection(self.archive.engine) as conn:
            return links.long_ids(conn)

    # -- DICOMweb --------------------------------------------------------------------

    def qido(self, query: QidoQuery, scope: Scope, details: bool) -> QidoAnswer:
        archive = self.archive
        with read_connection(archive.engine) as conn:
            page = qido.search(conn, query, scope, archive.counts)
            if (
                not page.rows
                and query.study_uid is not None
                and not qido.exists(conn, query, scope)
            ):
                what = (
                    f"series {query.series_uid}" if query.series_uid else f"study {query.study_uid}"
                )
                raise NotFound(f"{what} is not known here")
            blobs: dict[int, str] = {}
            if details and query.level is not Level.INSTANCE:
                blobs = qido.representative_blobs(conn, query.level, [r["_pk"] for r in page.rows])
        rows: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for row in page.rows:
            blob = row.get("_blob") if query.level is Level.INSTANCE else blobs.get(row["_pk"])
            wanted = details or _pixel_attributes_not_indexed(row)
            rows.append((row, self._sidecar(blob) if wanted else None))
        return QidoAnswer(rows, page.remaining)

    def _sidecar(self, blob: str | None) -> dict[str, Any] | None:
        """A stored instance's DICOM JSON (made and cached on first use)."""
        if not blob:  # none, or a remote placeholder's
            return None
        try:
            found: dict[str, Any] = json.loads(metadata_of(self.archive.blobs, blob))
        except (OSError, ValueError, InvalidDicomError):
            return None  # a blob that cannot be read: the index's values only
        return found

    def instances(
        self,
        scope: Scope,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> list[StoredInstance]:
        with read_connection(self.archive.engine) as conn:
            return stored_instances(conn, scope, study_uid, series_uid, sop_uid)

    def pass_through(
        self,
        scope: Scope,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> Relay | None:
        return None  # everything is here

    def instance_path(self, stored: StoredInstance) -> str:
        return str(self.archive.blobs.absolute(stored.blob))

    def metadata(self, stored: StoredInstance) -> bytes:
        return metadata_of(self.archive.blobs, stored.blob)

    @property
    def staging(self) -> BlobStore:
        return self.archive.blobs

    def store(
        self, parts: Sequence[ReceivedPart], study_uid: str | None, scope: Scope
    ) -> StoreOutcome:
        """Read, check and commit the parts. ``study_uid``: the study of the request path,
        which every instance must belong to (one that is not a valid UID matches none)."""
        archive = self.archive
        accepted: list[Prepared] = []
        failures: list[Failure] = []
        for number, part in enumerate(parts, start=1):
            if part.content_type != "application/dicom":
                archive.blobs.discard(part.staged.path)
                failures.append(Failure("", "", NOT_DICOM_PART))
                continue
            with open(part.staged.path, "rb") as fp:
                identity = identify(fp, part.staged.size)
            prepared = prepare_staged(f"part {number}", part.staged, archive.blobs)
            if isinstance(prepared, Rejected):
                failures.append(
                    Failure(identity.sop_class_uid, identity.sop_uid, CANNOT_UNDERSTAND)
                )
                continue
            reason = self._check_target(prepared, study_uid, scope)
            if reason is not None:
                archive.blobs.discard(prepared.staged.path)
                attrs = prepared.attributes
                failures.append(Failure(attrs.instance["SOPClassUID"], attrs.sop_uid, reason))
                continue
            accepted.append(prepared)
        try:
            results = commit_batch(
                archive.engine, archive.blobs, accepted, archive.settings.dicom_timezone
            )
        except OSError:
            for item in accepted:
                archive.blobs.discard(item.staged.path)
            failures += [
                Failure(
                    p.attributes.instance["SOPClassUID"], p.attributes.sop_uid, OUT_OF_RESOURCES
                )
                for p in accepted
            ]
            return StoreOutcome([], failures)
        assert all(r.outcome is not Outcome.REJECTED for r in results)
        return StoreOutcome(accepted, failures)

    def _check_target(self, prepared: Prepared, study_uid: str | None, scope: Scope) -> int | None:
        attrs = prepared.attributes
        if study_uid is not None and attrs.study_uid != study_uid:
            return STUDY_MISMATCH
        if not scope.everything and not scope.admits(patient_key(attrs), self._link_of(attrs)):
            return PATIENT_MISMATCH
        return None

    def _link_of(self, attrs: InstanceAttributes) -> str | None:
        """The EHR patient an instance's patient is (or will be) linked to (index.links)."""
        row = patient_row(attrs)
        key = IdentityKey.of_dicom(
            row["PatientID"], row["identifier_system"], row["IssuerOfPatientID"]
        )
        with read_connection(self.archive.engine) as conn:
            return links.owner_of(conn, key)

    def discard(self, parts: Sequence[ReceivedPart]) -> None:
        for part in parts:  # what store has placed or discarded is no longer there
            self.archive.blobs.discard(part.staged.path)


def _pixel_attributes_not_indexed(row: dict[str, Any]) -> bool:
    """An instance row from before index revision 0008, whose Rows, Columns and Bits
    Allocated the index does not hold (NULL): they come from its stored DICOM JSON."""
    return "_blob" in row and any(row.get(k, 0) is None for k in qido.IMAGE_PIXEL_KEYWORDS)


def _visible_patient(conn: Connection, patient_id: str, scope: Scope) -> dict[str, Any] | None:
    """A DICOM patient (its derived resource) or an EHR patient (as written, with links
    to its DICOM patients), if ``scope`` sees it."""
    row = queries.patient_by_resource_id(conn, patient_id)
    if row is not None:
        return derived_patient(row) if scope.admits(patient_id, row["linked_to"]) else None
    record = links.linked_record(conn, patient_id)
    if record is None or not scope.admits(patient_id):
        return None
    linked = links.linked_patients_of(conn, patient_id)
    return linked_patient(record.resource, record.version_id, record.last_updated, linked)
