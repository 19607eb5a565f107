"""A DIMSE upstream (pynetdicom): associations to a Query/Retrieve SCP, C-ECHO, C-FIND,
and C-GET of a study (every storage SOP class pynetdicom names, offered in every
transfer syntax, so the instances come as the SCP holds them).

Every call opens its own association (a PACS limits and times out idle ones), with the
upstream's timeout on association, DIMSE messages and the network. What fails says why in
``UpstreamError``: refused association (and the reason the SCP gave), aborted, timed out,
or a failure status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes as ALL_TRANSFER_SYNTAXES
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacsfhir.search.qido import QidoQuery
from pacsfhir.upstream.config import DimseUpstream
from pacsfhir.upstream.errors import UpstreamError
from pacsfhir.upstream.query import UNIQUE_KEYS, cfind_identifiers

log = logging.getLogger(__name__)
FIND = StudyRootQueryRetrieveInformationModelFind
GET = StudyRootQueryRetrieveInformationModelGet
MOVE = StudyRootQueryRetrieveInformationModelMove
# What a C-GET may send back: 120 storage SOP classes (with the C-GET context, under the
# 128 presentation contexts an association may propose).
STORAGE_CLASSES = [str(c.abstract_syntax) for c in StoragePresentationContexts if c.abstract_syntax]
RETRIEVE = {
    "c-get": StudyRootQueryRetrieveInformationModelGet,
    "c-move": StudyRootQueryRetrieveInformationModelMove,
}
_PENDING = (0xFF00, 0xFF01)


class DimseUpstreamClient:
    def __init__(self, upstream: DimseUpstream) -> None:
        self.upstream = upstream

    def _ae(self, contexts: Sequence[str]) -> AE:
        ae = AE(ae_title=self.upstream.calling_ae)
        timeout = self.upstream.timeout
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.connection_timeout = timeout
        for context in contexts:
            ae.add_requested_context(context)
        return ae

    @contextmanager
    def association(self, contexts: Sequence[str]) -> Iterator[Association]:
        """An established association proposing ``contexts``; UpstreamError if not."""
        u = self.upstream
        ae = self._ae(contexts)
        try:
            assoc = ae.associate(u.host, u.port, ae_title=u.called_ae)
        except (OSError, RuntimeError, ValueError) as exc:
            raise UpstreamError(f"{u.name}: cannot open an association: {exc}") from exc
        if not assoc.is_established:
            raise UpstreamError(f"{u.name}: {_why_not(assoc)}", timed_out=_timed_out(assoc))
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()

    def echo(self) -> None:
        """C-ECHO; UpstreamError unless Success."""
        with self.association([Verification]) as assoc:
            status = assoc.send_c_echo()
            _check_status(self.upstream.name, "C-ECHO", status)

    def find(self, identifier: Dataset) -> list[Dataset]:
        """C-FIND (Study Root) with ``identifier``: every match, or UpstreamError."""
        matches: list[Dataset] = []
        started = time.monotonic()
        with self.association([FIND]) as assoc:
            for status, found in assoc.send_c_find(identifier, FIND):
                if not status:
                    raise self._lost(assoc, "C-FIND", time.monotonic() - started)
                code = int(status.Status)
                if code in _PENDING:
                    if found is not None:
                        matches.append(found)
                    continue
                _check_status(self.upstream.name, "C-FIND", status)
        return matches

    def _lost(self, assoc: Association, what: str, seconds: float) -> UpstreamError:
        """Why a DIMSE request got no valid answer: timed out, or refused in a way the
        protocol cannot say (Orthanc answers an unknown calling AE so)."""
        u = self.upstream
        if seconds >= u.timeout * 0.9:
            return UpstreamError(f"{u.name}: {what} got no answer in {u.timeout:g} s", True)
        how = "aborted the association" if assoc.is_aborted else "gave no valid answer"
        return UpstreamError(
            f"{u.name}: the SCP {how} to {what} (does it know our calling AE title "
            f"{u.calling_ae!r}?)"
        )

    def search(self, query: QidoQuery) -> list[dict[str, Any]]:
        """The matches of a parsed QIDO query as DICOM JSON, one per entity of its level
        (the C-FINDs it becomes, ``upstream.query``, may find one twice)."""
        unique = UNIQUE_KEYS[query.level]
        found: dict[str, dict[str, Any]] = {}
        for identifier in cfind_identifiers(query):
            for match in self.find(identifier):
                uid = str(match.get(unique, ""))
                found.setdefault(uid, match.to_json_dict())
        return list(found.values())

    def get_study(self, study_uid: str, keep: Callable[[bytes], None]) -> int:
        """C-GET a whole study (Study Root): each instance received, as Part 10 bytes
        (the data set as it came, with a file meta header), is handed to ``keep`` before
        it is acknowledged; the number kept. UpstreamError when the SCP refuses, stops,
        or reports sub-operations that failed (what was kept stays kept: the caller
        decides)."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        return self._get(identifier, keep, f"study {study_uid}")

    def move_study(self, study_uid: str, destination_ae: str) -> int:
        """C-MOVE a whole study to ``destination_ae`` (our C-STORE listener, which the SCP
        must know by that AE title): the number of instances it reports moved.
        UpstreamError when it refuses, stops, or reports sub-operations that failed."""
        u = self.upstream
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        started = time.monotonic()
        with self.association([MOVE]) as assoc:
            final: Dataset | None = None
            for status, _identifier in assoc.send_c_move(identifier, destination_ae, MOVE):
                if not status:
                    raise self._lost(assoc, "C-MOVE", time.monotonic() - started)
                if int(status.Status) not in _PENDING:
                    final = status
        assert final is not None
        code = int(final.Status)
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        if code == 0xA801:
            raise UpstreamError(
                f"{u.name}: C-MOVE refused: it does not know the destination {destination_ae!r}"
                " (add pacsfhir's AE title, host and listener port to the PACS)"
            )
        if code not in (0x0000, 0xB000) or failed:
            raise UpstreamError(
                f"{u.name}: C-MOVE of study {study_uid} ended with status 0x{code:04X}, "
                f"{failed} instance(s) failed"
            )
        return int(final.get("NumberOfCompletedSuboperations", 0) or 0)

    def header(self, study_uid: str, series_uid: str, sop_uid: str) -> dict[str, Any]:
        """One instance's attributes as DICOM JSON, bulk data left out (by C-GET of the
        instance: DIMSE has no header-only retrieve)."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        identifier.SOPInstanceUID = sop_uid
        received: list[bytes] = []
        self._get(identifier, received.append, f"instance {sop_uid}")
        if not received:
            raise UpstreamError(f"{self.upstream.name}: C-GET of instance {sop_uid} sent nothing")
        ds = dcmread(BytesIO(received[0]), stop_before_pixels=True)
        return dict(ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=_no_bulk))

    def _get(self, identifier: Dataset, keep: Callable[[bytes], None], what: str) -> int:
        u = self.upstream
        kept = 0

        def on_store(event: Any) -> int:
            nonlocal kept
            try:
                keep(event.encoded_dataset(include_meta=True))
            except Exception:
                log.exception("an instance received by C-GET could not be kept")
                return 0xA700  # Out of Resources
            kept += 1
            return 0x0000

        ae = self._ae([GET])
        for sop_class in STORAGE_CLASSES:
            ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
        roles: list[Any] = [build_role(sop_class, scp_role=True) for sop_class in STORAGE_CLASSES]
        started = time.monotonic()
        try:
            assoc = ae.associate(
                u.host,
                u.port,
                ae_title=u.called_ae,
                ext_neg=roles,
                evt_handlers=[(evt.EVT_C_STORE, on_store)],
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise UpstreamError(f"{u.name}: cannot open an association: {exc}") from exc
        if not assoc.is_established:
            ae.shutdown()
            raise UpstreamError(f"{u.name}: {_why_not(assoc)}", timed_out=_timed_out(assoc))
        try:
            final: Dataset | None = None
            for status, _identifier in assoc.send_c_get(identifier, GET):
                if not status:
                    raise self._lost(assoc, "C-GET", time.monotonic() - started)
                if int(status.Status) not in _PENDING:
                    final = status
            assert final is not None
            code = int(final.Status)
            failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
            if code not in (0x0000, 0xB000) or failed:
                raise UpstreamError(
                    f"{u.name}: C-GET of {what} ended with status 0x{code:04X}, "
                    f"{failed} instance(s) failed"
                )
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
        return kept

    def retrieve_accepted(self) -> bool:
        """Whether the SCP accepts our retrieve method's presentation context."""
        method = RETRIEVE[self.upstream.retrieve]
        with self.association([method]) as assoc:
            return any(c.abstract_syntax == method for c in assoc.accepted_contexts)


def _no_bulk(_element: Any) -> str:
    return ""  # a header needs no bulk data: no URI to fetch it by


def _check_status(name: str, what: str, status: Dataset) -> None:
    if not status:
        raise UpstreamError(f"{name}: {what} got no answer", timed_out=True)
    code = int(status.Status)
    if code != 0x0000:
        comment = str(status.get("ErrorComment", ""))
        raise UpstreamError(f"{name}: {what} failed with status 0x{code:04X} {comment}".strip())


def _why_not(assoc: Association) -> str:
    if assoc.is_rejected:
        acse = assoc.acceptor
        return f"association rejected ({getattr(acse, 'reject_reason', '') or 'no reason given'})"
    if assoc.is_aborted:
        return "association aborted by the peer"
    return "no association (nobody listening, or it timed out)"


def _timed_out(assoc: Association) -> bool:
    return not (assoc.is_rejected or assoc.is_aborted)
