"""The EHR look-up of a patient id (``PACSFHIR_EHR_FHIR_URL``): before a request narrowed
to an EHR patient id runs, that patient's identifiers are read at the EHR (SMART Backend
Services, ``auth.ehr``) and cross-mapped to the DICOM patients they match
(``index.links``), then trusted for ``ehr_refresh_seconds``.

Rules: a patient written here through ``PUT /fhir/Patient/{id}`` is never looked up (the
writer is authoritative); an id that names a DICOM patient needs no look-up; the EHR not
knowing the id (404/410) is remembered briefly and unlinks what an earlier look-up linked;
an EHR that cannot be asked leaves an earlier look-up in force (stale, logged) or, with
none, refuses the request with 503 and Retry-After (the patient may well have studies).
An identifier the EHR gives that another EHR patient already holds is not linked (logged).
Identical concurrent look-ups share one call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from pacsfhir.archive import Archive
from pacsfhir.auth.claims import RETRY_AFTER_SECONDS
from pacsfhir.auth.ehr import EhrPatients, EhrUnavailable
from pacsfhir.dicom.ingest import to_micros_now
from pacsfhir.errors import ServiceUnavailable
from pacsfhir.index import links, queries
from pacsfhir.index.engine import read_connection
from pacsfhir.index.writer import lock_index
from pacsfhir.mapping.patient import ResourceProblem, check_linked_patient, identity_keys

log = logging.getLogger(__name__)
UNKNOWN_SECONDS = 60.0  # an id the EHR does not know is not asked about again for this long
MAX_SETTLED = 10_000  # ids remembered as needing no look-up (the oldest go first)


class EhrLinker:
    def __init__(self, archive: Archive, ehr: EhrPatients, refresh_seconds: int) -> None:
        self._archive = archive
        self._ehr = ehr
        self._refresh_seconds = max(0, refresh_seconds)
        # id -> monotonic time until which it needs no look-up: a request with a patient
        # token then costs no index query here (the hot path)
        self._settled: OrderedDict[str, float] = OrderedDict()
        self._flights: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def close(self) -> None:
        self._ehr.close()

    def ensure(self, patient_id: str) -> None:
        """Make the links of ``patient_id`` current (see the module); blocking."""
        if not self._needs_lookup(patient_id):
            return
        with self._guard:
            flight = self._flights.setdefault(patient_id, threading.Lock())
        with flight:  # one look-up per id at a time; the others then find it done
            try:
                if self._needs_lookup(patient_id):
                    self._look_up(patient_id)
            finally:
                with self._guard:
                    self._flights.pop(patient_id, None)

    def _needs_lookup(self, patient_id: str) -> bool:
        with self._guard:
            until = self._settled.get(patient_id)
        if until is not None and time.monotonic() < until:
            return False
        with read_connection(self._archive.engine) as conn:
            record = links.linked_record(conn, patient_id)
            derived = record is None and queries.patient_by_resource_id(conn, patient_id)
        if derived or (record is not None and record.source == links.SOURCE_FHIR):
            self._settle(patient_id, self._refresh_seconds)  # never looked up: re-checked
            return False
        if record is None:
            return True
        left = self._refresh_seconds - (to_micros_now() - record.fetched_at) / 1e6
        if left > 0:
            self._settle(patient_id, left)
            return False
        return True

    def _look_up(self, patient_id: str) -> None:
        with read_connection(self._archive.engine) as conn:
            known = links.linked_record(conn, patient_id) is not None
        try:
            resource = self._ehr.fetch(patient_id)
            checked = None if resource is None else check_linked_patient(resource, patient_id)
        except (EhrUnavailable, ResourceProblem) as exc:
            if known:
                log.warning(
                    "EHR patient look-up failed (%s); earlier links kept", type(exc).__name__
                )
                return
            raise ServiceUnavailable(
                "the EHR cannot be asked who this patient is; try again shortly",
                RETRY_AFTER_SECONDS,
            ) from exc
        if checked is None:
            self._settle(patient_id, UNKNOWN_SECONDS)
            if known:
                self._save(patient_id, None)
            return
        self._save(patient_id, checked)
        self._settle(patient_id, self._refresh_seconds)

    def _save(self, patient_id: str, resource: dict[str, Any] | None) -> None:
        """Store the EHR's answer (None: it no longer knows the patient) and relink."""
        now = to_micros_now()
        with self._archive.engine.begin() as conn:
            lock_index(conn)
            current = links.linked_record(conn, patient_id)
            if current is not None and current.source == links.SOURCE_FHIR:
                return  # written here meanwhile: that wins
            if resource is None:
                if current is not None:
                    links.save_linked_patient(
                        conn, patient_id, current.resource, [], links.SOURCE_EHR, now
                    )
                return
            keys = []
            for key in identity_keys(resource):
                owner = links.owner_of(conn, key)
                if owner is None or owner == patient_id:
                    keys.append(key)
                else:
                    log.warning("an identifier the EHR gives is already another patient's")
            links.save_linked_patient(conn, patient_id, resource, keys, links.SOURCE_EHR, now)

    def _settle(self, patient_id: str, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._guard:
            self._settled[patient_id] = time.monotonic() + seconds
            self._settled.move_to_end(patient_id)
            while len(self._settled) > MAX_SETTLED:
                self._settled.popitem(last=False)
