"""XML answers of the DICOMweb routes: which Accept ranges ask for the Native DICOM Model
(PS3.19 A.1, ``dicom.native_xml``) and the ``multipart/related;
type="application/dicom+xml"`` bodies that carry it, one part per instance (WADO-RS
metadata, PS3.18 10.4.4) or per match (QIDO-RS, PS3.18 10.6).

DICOM JSON stays the default of both (PS3.18 Table 10.4.4-1); XML is chosen when the
first acceptable range, highest quality first, asks for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import Enum
from typing import Any

from pacsfhir.dicom import multipart
from pacsfhir.dicom.multipart import MediaRange, Part, media_matches
from pacsfhir.dicom.native_xml import DICOM_XML, native_xml

DICOM_JSON = "application/dicom+json"
PLAIN_JSON = "application/json"


class Answer(Enum):
    """The forms a DICOMweb metadata or search answer can take."""

    DICOM_JSON = DICOM_JSON
    PLAIN_JSON = PLAIN_JSON  # the same JSON, labelled application/json
    MULTIPART_XML = f'multipart/related; type="{DICOM_XML}"'
    SINGLE_XML = DICOM_XML  # one document as the whole body


def _answer(r: MediaRange, single_ok: bool) -> Answer | None:
    if r.is_multipart:
        return Answer.MULTIPART_XML if media_matches(r.part_type or DICOM_XML, DICOM_XML) else None
    if r.media_type == DICOM_XML:
        return Answer.SINGLE_XML if single_ok else None
    if media_matches(r.media_type, DICOM_JSON):
        return Answer.DICOM_JSON
    if r.media_type == PLAIN_JSON:
        return Answer.PLAIN_JSON
    return None


def choose(ranges: Sequence[MediaRange], single_ok: bool) -> Answer | None:
    """The answer for these ranges (``multipart.parse_accept``, highest quality first),
    or None (406). ``*/*`` and ``application/*`` mean the default, DICOM JSON;
    ``multipart/related`` with no ``type`` means XML, the only multipart form there is;
    a bare ``application/dicom+xml`` only where the answer is one document
    (``single_ok``: PS3.18 10.4.4 lets single part media types serve a single item).
    Between equally acceptable ranges DICOM JSON is preferred to plain JSON."""
    best = None
    for r in ranges:
        found = _answer(r, single_ok)
        if found is None:
            continue
        if found is Answer.PLAIN_JSON:
            best = best or found
            continue
        if best is Answer.PLAIN_JSON and found is not Answer.DICOM_JSON:
            return best
        return found
    return best


def xml_parts(datasets: Iterable[Mapping[str, Any]]) -> Iterator[Part]:
    """One ``application/dicom+xml`` part per DICOM JSON object, made as it is sent."""
    for dataset in datasets:
        document = native_xml(dataset)
        yield Part(DICOM_XML, (document,), len(document))


def multipart_xml(datasets: Iterable[Mapping[str, Any]]) -> tuple[bytes, str]:
    """A whole ``multipart/related; type="application/dicom+xml"`` body, with its
    Content-Type."""
    boundary = multipart.new_boundary()
    body = b"".join(multipart.stream(xml_parts(datasets), boundary))
    return body, multipart.content_type(DICOM_XML, boundary)
