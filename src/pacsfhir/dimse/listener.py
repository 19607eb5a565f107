"""pacsfhir as a DICOM Storage SCP: a pynetdicom AE that takes C-ECHO and C-STORE on
``dimse_port`` for associations addressed to ``ae_title``.

Each C-STORE is written, as received (no re-encoding; the file meta information is made
from the presentation context), as a Part 10 file into the blob store's staging, read
by ``dicom.prepare.prepare_staged`` and committed by ``dicom.ingest.commit_batch``: the
path of ``pacsfhir ingest`` and STOW-RS. Success is answered once the instance is
durable; instances from concurrent associations are committed together
(``dimse.group_commit``). DIMSE has no authentication: bind it to a trusted network.
Statuses, SOP classes, transfer syntaxes and limits: docs/conformance.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from pacsfhir.archive import Archive
from pacsfhir.dicom.ingest import Outcome, Result
from pacsfhir.dicom.prepare import Rejected, prepare_staged
from pacsfhir.dicom.storage import BlobStore, StagedFile
from pacsfhir.dimse.group_commit import BatchFailed, GroupCommit

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (PS3.4 B.2.3)
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand
MAX_ASSOCIATIONS = 16  # the default of the dimse_max_associations setting
MAX_PDU = 256 * 1024  # the largest P-DATA PDU we ask peers to send (0 would be unbounded)
STOP_GRACE_SECONDS = 5.0
# Every transfer syntax pydicom knows: the data set is kept as received, so none needs
# a codec here (those pydicom cannot read the header of are refused per instance).
TRANSFER_SYNTAXES = [str(uid) for uid in AllTransferSyntaxes]
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


@dataclass
class _Tally:
    calling_ae: str
    address: str
    started: float
    stored: int = 0
    present: int = 0
    failed: int = 0


class StorageListener:
    """The C-STORE SCP over an archive; ``start`` binds and serves in threads (one per
    association, plus the group committer), ``stop`` ends them."""

    def __init__(
        self,
        archive: Archive,
        host: str,
        port: int,
        ae_title: str,
        *,
        max_associations: int = MAX_ASSOCIATIONS,
        linger: float = 0.0,
    ) -> None:
        self.archive = archive
        self.host = host
        self.port = port
        self.ae_title = ae_title
        self.committer = GroupCommit(
            archive.engine, archive.blobs, archive.settings.dicom_timezone, linger=linger
        )
        self._ae = AE(ae_title=ae_title)
        self._ae.require_called_aet = True
        self._ae.maximum_associations = max_associations
        self._ae.maximum_pdu_size = MAX_PDU
        self._ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            self._ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        self._server: Any = None
        self._tallies: dict[int, _Tally] = {}
        self._lock = threading.Lock()
        # pynetdicom's DEBUG output dumps data sets (PHI): never more than warnings
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)

    def start(self) -> StorageListener:
        self.archive.blobs.ensure()
        self.committer.start()
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_OPEN, self._on_opened),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        try:
            self._server = self._ae.start_server(
                (self.host, self.port), block=False, evt_handlers=handlers
            )
        except BaseException:
            self.committer.close()
            raise
        self.port = int(self._server.server_address[1])
        log.info("C-STORE listener: AE %s on %s:%d", self.ae_title, self.host, self.port)
        return self

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop taking associations, give those open ``grace`` seconds to end, abort the
        rest (an instance already queued is still committed, unanswered), then stop the
        committer once it has committed what is queued."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server = None
        deadline = time.monotonic() + grace
        while self._ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        self._ae.shutdown()
        self.committer.close()
        log.info("C-STORE listener stopped")

    def __enter__(self) -> StorageListener:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- association bookkeeping (one log line each, no PHI) ---------------------------

    def _on_opened(self, event: Event) -> None:
        _tune(event.assoc, socket.TCP_NODELAY)  # our responses go out at once

    def _on_pdu(self, event: Event) -> None:
        # A peer that keeps Nagle's algorithm on holds the last piece of each data set
        # until we acknowledge the previous one, and a delayed ACK then costs ~40 ms an
        # instance. Quick-ack mode (Linux) is renewed on every PDU received: it takes a
        # pynetdicom SCU from 20 to ~150 instances/s (measured); dcmtk's storescu, which
        # splits its PDUs differently, needs TCP_NODELAY=1 in its environment instead.
        if _QUICKACK is not None:
            _tune(event.assoc, _QUICKACK)

    def _on_accepted(self, event: Event) -> None:
        assoc = event.assoc
        address = f"{assoc.requestor.address}:{assoc.requestor.port}"
        with self._lock:
            self._tallies[id(assoc)] = _Tally(_calling_ae(assoc), address, time.monotonic())

    def _on_rejected(self, event: Event) -> None:
        assoc = event.assoc
        log.warning(
            "association from AE %r at %s:%s rejected (called AE title not %r?)",
            _calling_ae(assoc),
            assoc.requestor.address,
            assoc.requestor.port,
            self.ae_title,
        )

    def _on_closed(self, event: Event) -> None:
        with self._lock:
            tally = self._tallies.pop(id(event.assoc), None)
        if tally is None:
            return
        log.info(
            "association from AE %r at %s: %d stored, %d already present, %d failed, %.1f s",
            tally.calling_ae,
            tally.address,
            tally.stored,
            tally.present,
            tally.failed,
            time.monotonic() - tally.started,
        )

    def _count(self, assoc: Association, status: int, outcome: Outcome | None = None) -> None:
        with self._lock:
            tally = self._tallies.get(id(assoc))
            if tally is None:
                return
            if status != SUCCESS:
                tally.failed += 1
            elif outcome is Outcome.ALREADY_PRESENT:
                tally.present += 1
            else:
                tally.stored += 1

    # -- C-STORE -------------------------------------------------------------------

    def _on_store(self, event: Event) -> Dataset:
        answer, outcome = self._store(event)
        self._count(event.assoc, int(answer.Status), outcome)
        return answer

    def _store(self, event: Event) -> tuple[Dataset, Outcome | None]:
        try:
            content = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # no usable file meta from this request
            return _status(CANNOT_UNDERSTAND, f"cannot encode the file meta: {exc}"), None
        expected = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        try:
            result = self._commit(event, content, expected, alone=False)
        except BatchFailed:
            try:
                result = self._commit(event, content, expected, alone=True)
            except _Refused as refused:
                return refused.answer, None
        except _Refused as refused:
            return refused.answer, None
        return _status(SUCCESS), result.outcome

    def _commit(self, event: Event, content: bytes, expected: str, alone: bool) -> Result:
        blobs = self.archive.blobs
        source = f"C-STORE from {_calling_ae(event.assoc)}"
        staged = _stage(blobs, content)
        try:
            prepared = prepare_staged(source, staged, blobs, content)
        except Exception as exc:
            blobs.discard(staged.path)
            log.warning("C-STORE refused, cannot read the data set: %s", type(exc).__name__)
            raise _Refused(CANNOT_UNDERSTAND, "cannot read the data set") from exc
        if isinstance(prepared, Rejected):
            raise _Refused(CANNOT_UNDERSTAND, prepared.reason)  # the detail may quote values
        if expected and prepared.attributes.sop_uid != expected:
            blobs.discard(staged.path)
            raise _Refused(
                CANNOT_UNDERSTAND, "SOP Instance UID differs from Affected SOP Instance UID"
            )
        try:
            return self.committer.submit(prepared, alone).result()
        except BatchFailed:
            raise
        except OSError as exc:
            log.error("C-STORE refused, out of storage: %s", exc.strerror or exc)
            raise _Refused(OUT_OF_RESOURCES, "out of storage") from exc
        except OperationalError as exc:
            log.error(
                "C-STORE refused, index busy or unreachable (write lock timeout?): %s",
                type(exc.orig).__name__ if exc.orig is not None else exc,
            )
            raise _Refused(OUT_OF_RESOURCES, "index busy, try again") from exc
        except SQLAlchemyError as exc:
            log.error("C-STORE refused, index error: %s", type(exc).__name__)
            raise _Refused(CANNOT_UNDERSTAND, "cannot be indexed") from exc
        except RuntimeError as exc:  # the listener is stopping
            blobs.discard(staged.path)
            raise _Refused(OUT_OF_RESOURCES, "shutting down") from exc
        except Exception as exc:  # commit_batch has removed what it staged and placed
            log.error("C-STORE refused, cannot be stored: %s", type(exc).__name__)
            raise _Refused(CANNOT_UNDERSTAND, "cannot be stored") from exc


def _stage(blobs: BlobStore, content: bytes) -> StagedFile:
    """Write a received instance into staging; on failure nothing stays there."""
    target = blobs.incoming / f"{uuid.uuid4().hex}.part"
    try:
        with open(target, "wb") as out:
            out.write(content)
    except OSError as exc:
        blobs.discard(str(target))
        log.error("C-STORE refused, cannot stage (out of storage?): %s", exc.strerror or exc)
        raise _Refused(OUT_OF_RESOURCES, "out of storage") from exc
    return StagedFile(str(target), hashlib.sha256(content).hexdigest(), len(content))


class _Refused(Exception):
    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.answer = _status(status, comment)


def _status(status: int, comment: str = "") -> Dataset:
    answer = Dataset()
    answer.Status = status
    if comment:  # LO: 64 characters of the default repertoire
        answer.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return answer


def _calling_ae(assoc: Association) -> str:
    return str(assoc.requestor.ae_title or "").strip()


def _tune(assoc: Association, option: int) -> None:
    transport = assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):  # closing meanwhile
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)
