"""The gateway as a ``Store``: the local archive, with what upstream PACS hold brought in
on demand (``upstream.fetch`` then ``upstream.landing``) before the archive answers.

A search that must reach upstream names a patient or a study: a Patient ID, a Study
Instance UID or an Accession Number (QIDO-RS), or ``patient``/``subject``,
``patient.identifier``, ``identifier`` or ``_id`` (FHIR), or comes from a token or path
narrowed to a patient (whose Patient IDs the index knows: ``index.links``). Anything
else is open-ended: 400 explaining why (``upstream_open_searches = "refuse"``), or
answered from what the index already holds (``"local"``). The series and instances of a
study named in the path bring that study in.

Each bringing-in is a job per upstream and per query (``upstream.jobs``): identical
requests share it, its result holds for the upstream's ``cache_seconds`` (a repeated
search is served from the index; a changed upstream is seen once it expires), and a
request that waits longer than ``upstream_wait_seconds`` is 503 + Retry-After. Stored
copies are served first; STOW-RS (and the C-STORE listener) store here, the upstream staying
the source of what it holds. A DICOM retrieve that one DICOMweb upstream holds whole is
streamed straight through (``pass_through``); any other WADO-RS request for instances
known only from an upstream's answer retrieves their study into the archive first (a job:
WADO-RS from a DICOMweb upstream streamed into staging, or C-GET from a DIMSE one, through
the ingest path; or C-MOVE to pacsfhir's C-STORE listener, which stores through the same
path), then serves it as any stored study.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pacsfhir.archive import Archive
from pacsfhir.dicom.upload import ReceivedPart, UploadLimits, related_boundary, stage_parts
from pacsfhir.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    PayloadTooLarge,
    TooCostly,
    UnsupportedMediaType,
)
from pacsfhir.index import links
from pacsfhir.index.engine import read_connection
from pacsfhir.index.scope import Scope
from pacsfhir.search.model import Criterion, Reference, SearchRequest, Token
from pacsfhir.search.qido import Match, QidoQuery, ValueMatch
from pacsfhir.store.base import (
    PassedThrough,
    QidoAnswer,
    Relay,
    StoredInstance,
    StudyPage,
)
from pacsfhir.store.local import LocalStore
from pacsfhir.upstream.config import DicomwebUpstream, Upstream
from pacsfhir.upstream.dicomweb import DicomwebUpstreamClient
from pacsfhir.upstream.errors import UpstreamError
from pacsfhir.upstream.fetch import fetch_studies
from pacsfhir.upstream.jobs import Jobs
from pacsfhir.upstream.landing import land
from pacsfhir.upstream.query import (
    NotExpressible,
    cfind_identifiers,
    qido_requests,
    study_query_from_json,
    study_query_json,
)
from pacsfhir.vocabulary.ids import DICOM_UID_SYSTEM
from pacsfhir.vocabulary.levels import Level

if TYPE_CHECKING:  # pynetdicom is loaded only when a DIMSE upstream is configured
    from pacsfhir.upstream.dimse import DimseUpstreamClient

    Client = DicomwebUpstreamClient | DimseUpstreamClient

FIND = "find"
RETRIEVE = "retrieve"
WHOLE_STUDY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_NAMING_KEYS = ("PatientID", "StudyInstanceUID", "AccessionNumber")
_WILDCARDS = ("*", "?")
OPEN_SEARCH = (
    "this search would have to ask the upstream PACS for everything it holds: name a "
    "patient (patient, patient.identifier, PatientID) or a study (identifier, "
    "StudyInstanceUID, AccessionNumber)"
)


def _client(upstream: Upstream) -> Client:
    if isinstance(upstream, DicomwebUpstream):
        return DicomwebUpstreamClient(upstream)
    from pacsfhir.upstream.dimse import DimseUpstreamClient

    return DimseUpstreamClient(upstream)


def _now() -> int:
    return time.time_ns() // 1000


class GatewayStore(LocalStore):
    """The archive's store, which it extends: every read of the archive is preceded by
    bringing in what the upstreams hold of it (see the module)."""

    def __init__(
        self,
        archive: Archive,
        upstreams: Sequence[Upstream],
        *,
        wait_seconds: float = 2.0,
        open_searches: str = "refuse",
        workers: int = 2,
    ) -> None:
        super().__init__(archive)
        self.upstreams = {u.name: u for u in upstreams}
        self.clients: dict[str, Client] = {u.name: _client(u) for u in upstreams}
        self.open_searches = open_searches
        self.jobs = Jobs(
            self.archive.engine,
            {FIND: self._find, RETRIEVE: self._retrieve},
            workers=workers,
            wait_seconds=wait_seconds,
        )

    def start(self) -> None:
        self.jobs.start()

    def close(self) -> None:
        self.jobs.close()
        for client in self.clients.values():
            if isinstance(client, DicomwebUpstreamClient):
                client.close()

    # -- bringing studies in -------------------------------------------------------------

    def _find(self, payload: dict[str, Any]) -> dict[str, int]:
        """A job: ask one upstream, land its answers."""
        name = payload["upstream"]
        query = study_query_from_json(payload["query"])
        answers = fetch_studies(self.clients[name], query)
        timezone = self.archive.settings.dicom_timezone
        written = land(self.archive.engine, answers, name, _now(), timezone)
        return {"studies": len(answers), "instances": written}

    def _bring_in(self, query: QidoQuery) -> None:
        """Run the study-level ``query`` on every upstream (a job each), answers landed.
        A query no upstream query can carry is the client's to narrow (400), checked here
        before any job: a job's failure would read as the upstream's (502)."""
        try:
            qido_requests(query)
            cfind_identifiers(query)
        except NotExpressible as exc:
            raise TooCostly(f"{exc}: narrow the search") from exc
        selection = study_query_json(query)
        for name, upstream in self.upstreams.items():
            key = f"{FIND}:{name}:{_digest(selection)}"
            payload = {
                "upstream": name,
                "query": selection,
                "cache_seconds": upstream.cache_seconds,
            }
            self.jobs.run(key, FIND, payload)

    def _retrieve(self, payload: dict[str, Any]) -> dict[str, int]:
        """A job: retrieve one study from one upstream into the archive, through the
        ingest path every stored instance takes (WADO-RS with the bytes as the upstream
        holds them, or C-GET)."""
        name, study_uid = payload["upstream"], payload["study"]
        client = self.clients[name]
        if isinstance(client, DicomwebUpstreamClient):
            parts = self._wado_parts(client, study_uid)
        elif client.upstream.retrieve == "c-move":
            # the upstream sends the study to our C-STORE listener, which stores it through
            # the ingest path before it answers each C-STORE: done when the C-MOVE is
            return {"stored": client.move_study(study_uid, self.archive.settings.ae_title)}
        else:
            parts = self._c_get_parts(client, study_uid)
        outcome = LocalStore.store(self, parts, study_uid, Scope())
        return {"stored": len(outcome.stored), "failed": len(outcome.failures)}

    def _wado_parts(self, client: DicomwebUpstreamClient, study_uid: str) -> list[ReceivedPart]:
        name = client.upstream.name
        limits = UploadLimits.of(self.archive.settings)
        with client.retrieve(f"/studies/{study_uid}", WHOLE_STUDY) as answer:
            if answer.status != 200:
                raise UpstreamError(
                    f"{name}: WADO-RS of study {study_uid} answered {answer.status}"
                )
            try:
                boundary = related_boundary(answer.content_type, "application/dicom")
                return stage_parts(answer.chunks, boundary, self.staging, limits)
            except (BadRequest, UnsupportedMediaType, PayloadTooLarge) as exc:
                raise UpstreamError(f"{name}: WADO-RS of study {study_uid}: {exc.message}") from exc

    def _c_get_parts(self, client: DimseUpstreamClient, study_uid: str) -> list[ReceivedPart]:
        parts: list[ReceivedPart] = []

        def keep(data: bytes) -> None:
            parts.append(ReceivedPart("application/dicom", self.staging.stage_chunks(iter([data]))))

        try:
            client.get_study(study_uid, keep)
        except BaseException:
            self.discard(parts)  # a transfer cut short leaves nothing staged
            raise
        return parts

    def _fetch_missing(self, found: list[StoredInstance]) -> bool:
        """Retrieve the studies of the remote placeholders in ``found`` (a job per
        upstream and study); whether there were any."""
        wanted = sorted({(s.upstream, s.study_uid) for s in found if not s.blob and s.upstream})
        for name, study_uid in wanted:
            if name not in self.clients:
                raise BadGateway(
                    f"instances of study {study_uid} are held by {name!r}, an "
                    "upstream no longer configured"
                )
            key = f"{RETRIEVE}:{name}:{study_uid}"
            payload = {"upstream": name, "study": study_uid, "cache_seconds": 0}
            self.jobs.run(key, RETRIEVE, payload)
        return bool(wanted)

    def _patient_ids(self, fhir_ids: Sequence[str]) -> list[str]:
        with read_connection(self.archive.engine) as conn:
            return links.dicom_patient_ids(conn, fhir_ids)

    def _reach(self, matches: list[Match], scope: Scope, named: bool = False) -> bool:
        """Bring in the studies ``matches`` select, narrowed to the scope's patients;
        False when they name neither a patient nor a study (open-ended). ``named``: the
        request named a patient or study that no upstream query can name (nothing to
        bring, but not open-ended)."""
        if scope.patients:
            patient_ids = self._patient_ids(scope.patients)
            if not patient_ids:
                return True  # a patient no upstream query can name: nothing to bring
            matches = [m for m in matches if m.keyword != "PatientID"]
            matches.append(ValueMatch("PatientID", "LO", tuple(patient_ids)))
        if not any(_names(m) for m in matches):
            return named
        self._bring_in(QidoQuery(Level.STUDY, matches=tuple(matches)))
        return True

    def _refuse_open(self) -> None:
        if self.open_searches == "refuse":
            raise BadRequest(OPEN_SEARCH)

    # -- the Store -------------------------------------------------------------------------

    def qido(self, query: QidoQuery, scope: Scope, details: bool) -> QidoAnswer:
        if query.study_uid is not None:
            study = ValueMatch("StudyInstanceUID", "UI", (query.study_uid,))
            self._reach([study], scope)
        else:
            selecting = [m for m in query.matches if _study_level(m)]
            if not self._reach(selecting, scope):
                self._refuse_open()
        return super().qido(query, scope, details)

    def search_studies(
        self, search: SearchRequest, scope: Scope, endpoint_id: str, with_instances: bool
    ) -> StudyPage:
        matches, named = self._fhir_selection(search)
        if not self._reach(matches, scope, named):
            self._refuse_open()
        return super().search_studies(search, scope, endpoint_id, with_instances)

    def study(self, study_uid: str, scope: Scope) -> Any:
        self._reach([ValueMatch("StudyInstanceUID", "UI", (study_uid,))], scope)
        return super().study(study_uid, scope)

    def instances(
        self,
        scope: Scope,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> list[StoredInstance]:
        """The instances a WADO-RS path names; those known only upstream are retrieved
        into the archive first (503 + Retry-After while that runs)."""
        found = super().instances(scope, study_uid, series_uid, sop_uid)
        if self._fetch_missing(found):
            found = super().instances(scope, study_uid, series_uid, sop_uid)
            missing = [s.sop_uid for s in found if not s.blob]
            if missing:
                raise BadGateway(
                    f"the upstream PACS did not deliver {len(missing)} of the "
                    f"{len(found)} instances asked for (first: {missing[0]})"
                )
        return found

    def pass_through(
        self,
        scope: Scope,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> Relay | None:
        """Streamed from a DICOMweb upstream when it holds every instance asked for and
        none is here: nothing buffered, nothing stored (a later request for frames,
        metadata or renderings retrieves the study into the archive)."""
        found = LocalStore.instances(self, scope, study_uid, series_uid, sop_uid)
        holders = {s.upstream for s in found}
        if not found or any(s.blob for s in found) or len(holders) != 1:
            return None
        name = holders.pop()
        client = self.clients.get(name or "")
        if not isinstance(client, DicomwebUpstreamClient):
            return None
        path = f"/studies/{study_uid}"
        if series_uid is not None:
            path += f"/series/{series_uid}"
            if sop_uid is not None:
                path += f"/instances/{sop_uid}"
        return Relay(name or "", path, lambda accept: _passed_through(client, path, accept))

    def instance_path(self, stored: StoredInstance) -> str:
        if not stored.blob:  # instances() retrieves before any path is asked for
            raise BadGateway(f"instance {stored.sop_uid} is not here yet")
        return super().instance_path(stored)

    # -- FHIR search -> what selects studies upstream ------------------------------------

    def _fhir_selection(self, search: SearchRequest) -> tuple[list[Match], bool]:
        """The matches that select the search's studies upstream, and whether the search
        names a patient or study at all (one unknown here selects nothing upstream)."""
        matches: list[Match] = []
        named = False
        for criterion in search.criteria:
            if criterion.modifier or criterion.missing is not None:
                continue  # :not, :missing... select nothing that can be asked upstream
            named |= _names_something(criterion)
            matches += self._criterion_matches(criterion)
        return matches, named

    def _criterion_matches(self, criterion: Criterion) -> list[Match]:
        if criterion.chain is not None:
            chain = criterion.chain
            if chain.param != "identifier" or chain.modifier or chain.missing is not None:
                return []
            codes = [v.code for v in chain.values if isinstance(v, Token) and v.code]
            return [ValueMatch("PatientID", "LO", tuple(codes))] if codes else []
        if criterion.param in ("patient", "subject"):
            ids = [v.resource_id for v in criterion.values if isinstance(v, Reference)]
            patient_ids = self._patient_ids(ids) if ids else []
            return [ValueMatch("PatientID", "LO", tuple(patient_ids))] if patient_ids else []
        if criterion.param in ("identifier", "_id"):
            uids, accessions = [], []
            for value in criterion.values:
                if not isinstance(value, Token) or not value.code:
                    continue
                if criterion.param == "_id":
                    uids.append(value.code)
                elif value.system == DICOM_UID_SYSTEM:
                    uids.append(value.code.removeprefix("urn:oid:"))
                else:
                    accessions.append(value.code)
            if uids and accessions:  # either may match: the accessions are asked apart
                accession = ValueMatch("AccessionNumber", "SH", tuple(accessions))
                self._bring_in(QidoQuery(Level.STUDY, matches=(accession,)))
                accessions = []
            if uids:
                return [ValueMatch("StudyInstanceUID", "UI", tuple(uids))]
            if accessions:
                return [ValueMatch("AccessionNumber", "SH", tuple(accessions))]
            return []
        return []


def _passed_through(client: DicomwebUpstreamClient, path: str, accept: str) -> PassedThrough:
    """The upstream's answer, open until its body has been read or closed."""
    opened = client.retrieve(path, accept)
    try:
        answer = opened.__enter__()
    except UpstreamError as exc:
        raise (GatewayTimeout if exc.timed_out else BadGateway)(exc.message) from exc

    def body() -> Iterator[bytes | memoryview]:
        try:
            yield from answer.chunks
        finally:
            opened.__exit__(None, None, None)

    return PassedThrough(answer.status, answer.content_type, body())


def _names(match: Match) -> bool:
    """Whether a match names patients or studies (not a wildcard over them all)."""
    if match.keyword not in _NAMING_KEYS or not isinstance(match, ValueMatch):
        return False
    return bool(match.values) and not any(w in v for v in match.values for w in _WILDCARDS)


def _names_something(criterion: Criterion) -> bool:
    if criterion.chain is not None:
        return criterion.chain.param == "identifier"
    return criterion.param in ("patient", "subject", "identifier", "_id")


def _study_level(match: Match) -> bool:
    return match.keyword in _NAMING_KEYS


def _digest(selection: dict[str, Any]) -> str:
    text = json.dumps(selection, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:40]
