"""``pacsfhir check-upstream``: what works with each upstream, step by step.

DICOMweb: a QIDO-RS study query (``limit=1``). DIMSE: C-ECHO, a Study Root C-FIND, and
whether the SCP accepts the retrieve method's presentation context (C-GET or C-MOVE; that
a C-MOVE reaches us needs the SCP to know our AE title, which only a real move shows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from pacsfhir.upstream.config import DicomwebUpstream, DimseUpstream, Upstream
from pacsfhir.upstream.dicomweb import DicomwebUpstreamClient
from pacsfhir.upstream.dimse import DimseUpstreamClient
from pacsfhir.upstream.errors import UpstreamError

# A Study Instance UID no study has (an all-nines root): a C-FIND that must succeed empty.
NO_SUCH_STUDY = "1.2.826.0.1.3680043.10.999999.1"


@dataclass(frozen=True)
class Step:
    upstream: str
    what: str
    ok: bool
    detail: str


def check_upstream(upstream: Upstream) -> list[Step]:
    if isinstance(upstream, DicomwebUpstream):
        return _check_dicomweb(upstream)
    return _check_dimse(upstream)


def _step(name: str, what: str, run: Callable[[], str]) -> Step:
    try:
        return Step(name, what, True, run())
    except UpstreamError as exc:
        return Step(name, what, False, exc.message)


def _check_dicomweb(upstream: DicomwebUpstream) -> list[Step]:
    client = DicomwebUpstreamClient(upstream)

    def qido() -> str:
        found = client.qido("/studies", [("limit", "1")])
        return f"{upstream.base_url}/studies answered ({len(found)} match(es) with limit=1)"

    try:
        return [_step(upstream.name, "QIDO-RS", qido)]
    finally:
        client.close()


def _check_dimse(upstream: DimseUpstream) -> list[Step]:
    client = DimseUpstreamClient(upstream)
    where = f"{upstream.called_ae}@{upstream.host}:{upstream.port} as {upstream.calling_ae}"

    def echo() -> str:
        client.echo()
        return f"{where}: Success"

    def find() -> str:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = NO_SUCH_STUDY
        found = client.find(query)
        return f"Study Root C-FIND answered ({len(found)} match(es) for a UID nobody has)"

    def retrieve() -> str:
        if not client.retrieve_accepted():
            raise UpstreamError(
                f"the SCP refuses the Study Root {upstream.retrieve.upper()} context"
            )
        note = "" if upstream.retrieve == "c-get" else " (it must also know our AE title)"
        return f"{upstream.retrieve.upper()} context accepted{note}"

    steps = [_step(upstream.name, "C-ECHO", echo)]
    if not steps[0].ok:
        return steps  # nothing else can work
    steps.append(_step(upstream.name, "C-FIND", find))
    steps.append(_step(upstream.name, upstream.retrieve.upper(), retrieve))
    return steps
