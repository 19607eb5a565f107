"""The store interface: where the API's studies come from, whatever holds them.

Every FHIR and DICOMweb handler reaches studies through a ``Store`` (the request
context's ``store``): FHIR search and reads, QIDO-RS at each level, the instances a
WADO-RS path names and their files and metadata, and STOW-RS. The local archive
(``store.local.LocalStore``: the index and the blob store) is the first implementation;
an upstream PACS behind the gateway is the second. Every method takes the request's
``Scope`` and sees nothing outside it: another patient's study is simply not there.

Values cross the interface as plain records the mapping layer reads (index rows keyed by
DICOM keyword, ``StudyRows``), never connections or SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pacsfhir.dicom.prepare import Prepared
from pacsfhir.dicom.storage import BlobStore
from pacsfhir.dicom.upload import ReceivedPart
from pacsfhir.index.dicomweb import StoredInstance
from pacsfhir.index.queries import StudyRows
from pacsfhir.index.scope import Scope
from pacsfhir.search.model import Cursor, SearchRequest
from pacsfhir.search.qido import QidoQuery

__all__ = [
    "Failure",
    "QidoAnswer",
    "Store",
    "StoreOutcome",
    "StoredInstance",
    "StudyPage",
    "StudyRows",
]


@dataclass(frozen=True)
class StudyPage:
    """One page of a FHIR search: the studies (with patient, series and, when asked,
    instances), the total when asked for, and where the next page starts."""

    studies: list[StudyRows]
    total: int | None
    next_cursor: Cursor | None


@dataclass(frozen=True)
class QidoAnswer:
    """QIDO-RS matches: each an index row keyed by DICOM keyword with, when details
    beyond the index were asked for, the DICOM JSON of a representative instance."""

    rows: list[tuple[dict[str, Any], dict[str, Any] | None]]
    remaining: int  # matches after this page


@dataclass(frozen=True)
class PassedThrough:
    """An upstream's answer to a retrieve, passed on as it arrives: its status, content
    type and body (iterating it to the end, or closing it, ends the upstream call)."""

    status: int
    content_type: str
    body: Iterator[bytes | memoryview]


@dataclass(frozen=True)
class Relay:
    """A retrieve that the upstream ``upstream`` answers whole, at ``path`` under its base
    URL (``/studies/{uid}[/series/{uid}[/instances/{uid}]]``): ``open(accept)`` asks it
    with the client's Accept and passes the answer on as it arrives (``api.wado`` may
    instead leave the transfer to the reverse proxy in front: ``api.offload``)."""

    upstream: str
    path: str
    open: Callable[[str], PassedThrough]


@dataclass(frozen=True)
class Failure:
    """An instance STOW-RS did not store: its SOP Class and Instance UIDs (empty when
    unreadable) and a Failure Reason (PS3.18 Table I.2-2 or ours)."""

    sop_class_uid: str
    sop_uid: str
    reason: int


@dataclass(frozen=True)
class StoreOutcome:
    stored: list[Prepared]
    failures: list[Failure]


class Store(Protocol):
    def start(self) -> None:
        """Begin background work (the gateway's job workers), when the app starts."""
        ...

    def close(self) -> None:
        """End it, when the app stops."""
        ...

    # -- FHIR ------------------------------------------------------------------------

    def search_studies(
        self, search: SearchRequest, scope: Scope, endpoint_id: str, with_instances: bool
    ) -> StudyPage:
        """A FHIR ImagingStudy search (``endpoint_id``: the Endpoint the studies will
        reference, which ``endpoint=`` matches)."""
        ...

    def study(self, study_uid: str, scope: Scope) -> StudyRows | None: ...

    def patient(self, patient_id: str, scope: Scope) -> dict[str, Any] | None:
        """The Patient resource ``patient_id`` names, if ``scope`` sees it."""
        ...

    def subjects(self, studies: Sequence[StudyRows], scope: Scope) -> list[dict[str, Any]]:
        """The Patient each study's subject names, once each (``_include``)."""
        ...

    def patient_visible(self, patient_id: str, scope: Scope) -> bool:
        """Whether the patient exists and ``scope`` sees one of their studies or, with no
        search restriction, the patient itself (an Endpoint must confirm no more)."""
        ...

    def long_patient_ids(self) -> list[str]:
        """Patient ids too long to follow ``wado-`` in an Endpoint id."""
        ...

    # -- DICOMweb --------------------------------------------------------------------

    def qido(self, query: QidoQuery, scope: Scope, details: bool) -> QidoAnswer:
        """QIDO-RS matches; NotFound when the study or series of the path is not there.
        ``details``: attach each match's DICOM JSON (tags the index does not hold)."""
        ...

    def instances(
        self,
        scope: Scope,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> list[StoredInstance]:
        """The instances of a study, series or instance, in Series Number then Instance
        Number order; empty when none is there."""
        ...

    def pass_through(
        self,
        scope: Scope,
        study_uid: str,
        series_uid: str | None = None,
        sop_uid: str | None = None,
    ) -> Relay | None:
        """A DICOM retrieve answered by the upstream that holds every instance it names,
        streamed straight through; None when the store answers it itself."""
        ...

    def instance_path(self, stored: StoredInstance) -> str:
        """A local file holding the instance (a Part 10 file)."""
        ...

    def metadata(self, stored: StoredInstance) -> bytes:
        """The instance's DICOM JSON, bulk data left as placeholders (dicom.metadata)."""
        ...

    @property
    def staging(self) -> BlobStore:
        """Where an upload's parts are staged before ``store``."""
        ...

    def store(
        self, parts: Sequence[ReceivedPart], study_uid: str | None, scope: Scope
    ) -> StoreOutcome:
        """Read, check and commit staged parts (the ingest path of the CLI and STOW)."""
        ...

    def discard(self, parts: Sequence[ReceivedPart]) -> None:
        """Drop what is left staged of ``parts`` (an upload that failed)."""
        ...
