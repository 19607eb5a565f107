"""OHIF Viewer against pacsfhir, in Debian's headless Chromium.

OHIF's prebuilt app (npm ``@ohif/app``, pinned in ``scripts/fetch-ohif``) is served on
loopback with one DICOMweb data source, pacsfhir's ``/dicom-web`` (QIDO-RS for the study
list and the series, WADO-RS for metadata and frames). The study list must show the
sample studies and the viewer must draw CT_small's image. Screenshots and the list of
DICOMweb requests OHIF made are kept in ``tests/artifacts/``.

Run with ``make e2e`` (fetches OHIF, installs Playwright's Python package; Chromium comes
from Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from tests.conftest import PYDICOM_DATA
from tests.e2e.support import ARTIFACTS, CANVAS_STATS_JS, BrowserLog, Stack, ohif_version

with contextlib.suppress(ImportError):  # without it the fixtures skip (fail under CI)
    from playwright.sync_api import Locator, Page
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    # One backend is enough for the browser; the index tests cover both.
    pytest.mark.parametrize("sample_archive", ["sqlite"], indirect=True),
]

LIST_TIMEOUT_MS = 60_000
RENDER_TIMEOUT_MS = 90_000


@dataclass(frozen=True)
class Sample:
    name: str
    study_uid: str
    patient_id: str
    family: str
    given: str
    date: str  # as OHIF shows it, 19-Jan-2004
    modality: str


def sample(filename: str) -> Sample:
    ds = pydicom.dcmread(PYDICOM_DATA / "test_files" / filename, stop_before_pixels=True)
    return Sample(
        name=filename,
        study_uid=str(ds.StudyInstanceUID),
        patient_id=str(ds.PatientID),
        family=str(ds.PatientName.family_name),
        given=str(ds.PatientName.given_name),
        date=datetime.strptime(ds.StudyDate, "%Y%m%d").strftime("%d-%b-%Y"),
        modality=str(ds.Modality),
    )


CT = sample("CT_small.dcm")
MR = sample("MR_small.dcm")


def shoot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"ohif-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def dump_requests(stack: Stack, name: str, since: int = 0) -> str:
    """The requests pacsfhir answered for the browser, one a line, also kept as an
    artifact."""
    seen = [s for s in stack.pacsfhir.log.since(since) if s.origin == stack.ohif.origin]
    text = "\n".join(s.line() for s in seen) or "(none)"
    path = ARTIFACTS / f"ohif-{name}-requests.txt"
    path.write_text(f"OHIF {ohif_version()}, pacsfhir at {stack.pacsfhir.base_url}\n{text}\n")
    print(f"requests ({len(seen)}), also in {path}:\n{text}")
    return text


def diagnostics(stack: Stack, log: BrowserLog, requests: str) -> str:
    return (
        f"\nOHIF {ohif_version()} at {stack.ohif.origin}, pacsfhir at {stack.pacsfhir.base_url}"
        f"\n--- requests pacsfhir answered ---\n{requests}"
        f"\n--- browser ---\n{log.report()}"
    )


def study_row(page: Page, study: Sample) -> Locator:
    """The study list's row for ``study`` (rows carry no UID: matched by patient name
    as OHIF formats it, "Family, Given", and by study date)."""
    return page.locator("tbody tr", has_text=f"{study.family}, {study.given}").filter(
        has_text=study.date
    )


def study_count(page: Page) -> int:
    """The total in OHIF's pager, "1-25 of 56"."""
    pager = page.get_by_text(re.compile(r"^\d+-\d+ of \d+$")).first
    return int(pager.inner_text().rsplit(" ", 1)[1])


def qido_study_count(stack: Stack) -> int:
    """How many studies pacsfhir itself lists for OHIF's first query (at most its limit)."""
    response = httpx.get(
        stack.pacsfhir.dicomweb_root + "/studies",
        params={"limit": "101"},
        headers={"Accept": "application/dicom+json"},
    )
    response.raise_for_status()
    return len(response.json())


def wait_visible(
    page: Page, stack: Stack, log: BrowserLog, target: Locator, what: str, name: str, since: int
) -> None:
    try:
        target.first.wait_for(state="visible", timeout=LIST_TIMEOUT_MS)
        return
    except PlaywrightTimeout:
        pass
    shoot(page, f"{name}-failed")
    requests = dump_requests(stack, name, since)
    pytest.fail(f"{what} never appeared" + diagnostics(stack, log, requests))


def server_errors(stack: Stack, since: int) -> list[str]:
    return [s.line() for s in stack.pacsfhir.log.since(since) if s.status >= 500]


def test_study_list_shows_the_sample_studies(stack: Stack, page: tuple[Page, BrowserLog]) -> None:
    browser_page, log = page
    mark = stack.pacsfhir.log.mark()

    # The whole list, as a user first sees it but on one page: it shows every study
    # pacsfhir lists, CT_small's and MR_small's among them.
    browser_page.goto(f"{stack.ohif.origin}/?resultsPerPage=200")
    for study in (CT, MR):
        row = study_row(browser_page, study)
        wait_visible(browser_page, stack, log, row, f"{study.name}'s row", "study-list", mark)
        assert study.modality in row.first.inner_text()
    shoot(browser_page, "study-list")
    listed, expected = study_count(browser_page), qido_study_count(stack)

    # Filtered by Patient ID (OHIF's MRN filter, sent as QIDO 00100020): just CT_small's.
    browser_page.goto(f"{stack.ohif.origin}/?mrn={CT.patient_id}")
    row = study_row(browser_page, CT)
    wait_visible(browser_page, stack, log, row, "the filtered list", "study-list", mark)
    filtered = study_count(browser_page)
    shoot(browser_page, "study-list-filtered")

    requests = dump_requests(stack, "study-list", mark)
    assert listed == expected, f"OHIF lists {listed} of {expected} studies" + diagnostics(
        stack, log, requests
    )
    assert filtered == 1, f"{filtered} studies for PatientID {CT.patient_id}"
    assert not server_errors(stack, mark), diagnostics(stack, log, requests)


def canvas_stats(page: Page) -> list[dict[str, Any]]:
    stats: list[dict[str, Any]] = page.evaluate(CANVAS_STATS_JS)
    return stats


def rendered(stats: list[dict[str, Any]]) -> bool:
    """Some canvas shows an image: >2% of it lit, with many grey levels (not a blank,
    a uniform fill or text alone)."""
    return any(s["lit"] > 0.02 * s["total"] and s["levels"] >= 32 for s in stats)


def test_viewer_renders_ct_small(stack: Stack, page: tuple[Page, BrowserLog]) -> None:
    browser_page, log = page
    mark = stack.pacsfhir.log.mark()
    browser_page.goto(f"{stack.ohif.origin}/viewer?StudyInstanceUIDs={CT.study_uid}")

    # Wait until a canvas in the viewport grid holds an image (cornerstone draws it there).
    with contextlib.suppress(PlaywrightTimeout):
        browser_page.wait_for_function(
            f"() => ({CANVAS_STATS_JS})().some(s => s.lit > 0.02 * s.total && s.levels >= 32)",
            timeout=RENDER_TIMEOUT_MS,
            polling=500,
        )
    stats = canvas_stats(browser_page)
    browser_page.wait_for_timeout(1000)  # let overlays and thumbnails settle for the picture
    shoot(browser_page, "viewer-ct-small")
    requests = dump_requests(stack, "viewer", mark)
    assert rendered(stats), f"no image drawn; canvases: {stats}" + diagnostics(stack, log, requests)
    assert not server_errors(stack, mark), diagnostics(stack, log, requests)
