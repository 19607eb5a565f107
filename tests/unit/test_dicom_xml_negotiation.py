"""Which Accept asks for the Native DICOM Model (``api.dicom_xml.choose``): a table of
Accept -> answer, for a single item (instance metadata) and for several (a study's
metadata, search results). JSON is the default (PS3.18 Table 10.4.4-1)."""

from __future__ import annotations

import pytest

from pacsfhir.api.dicom_xml import Answer, choose
from pacsfhir.dicom.multipart import parse_accept

XML = 'multipart/related; type="application/dicom+xml"'

CHOICES = [
    # Accept, answer for one item, answer for several
    ("", Answer.DICOM_JSON, Answer.DICOM_JSON),
    ("*/*", Answer.DICOM_JSON, Answer.DICOM_JSON),
    ("application/*", Answer.DICOM_JSON, Answer.DICOM_JSON),
    ("application/dicom+json", Answer.DICOM_JSON, Answer.DICOM_JSON),
    ("application/json", Answer.PLAIN_JSON, Answer.PLAIN_JSON),
    ("application/json, application/dicom+json", Answer.DICOM_JSON, Answer.DICOM_JSON),
    (XML, Answer.MULTIPART_XML, Answer.MULTIPART_XML),
    ("multipart/related; type=application/dicom+xml", Answer.MULTIPART_XML, Answer.MULTIPART_XML),
    ('MULTIPART/RELATED; TYPE="APPLICATION/DICOM+XML"', Answer.MULTIPART_XML, Answer.MULTIPART_XML),
    ("multipart/related", Answer.MULTIPART_XML, Answer.MULTIPART_XML),
    ('multipart/*; type="application/*"', Answer.MULTIPART_XML, Answer.MULTIPART_XML),
    (f"{XML}; q=0.5, application/dicom+json", Answer.DICOM_JSON, Answer.DICOM_JSON),
    (f"application/dicom+json; q=0.5, {XML}", Answer.MULTIPART_XML, Answer.MULTIPART_XML),
    (f"application/json, {XML}", Answer.PLAIN_JSON, Answer.PLAIN_JSON),
    (f"{XML}, application/json", Answer.MULTIPART_XML, Answer.MULTIPART_XML),
    ("application/dicom+xml", Answer.SINGLE_XML, None),
    ("application/dicom+xml, application/json;q=0.2", Answer.SINGLE_XML, Answer.PLAIN_JSON),
    (f"{XML}; q=0", None, None),
    ('multipart/related; type="application/dicom"', None, None),
    ("application/xml", None, None),
    ("text/xml, text/html", None, None),
]


@pytest.mark.parametrize(("accept", "single", "several"), CHOICES)
def test_choose(accept: str, single: Answer | None, several: Answer | None) -> None:
    assert choose(parse_accept(accept), single_ok=True) is single
    assert choose(parse_accept(accept), single_ok=False) is several
