"""Fixtures for the browser tests: OHIF + pacsfhir on loopback, Debian's Chromium."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from pacsfhir.archive import Archive
from tests.conftest import skip_or_fail
from tests.e2e.support import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    OHIF_DIST,
    BrowserLog,
    CorsLiveServer,
    OhifServer,
    Stack,
    app_config_js,
    browser_problem,
    chromium_path,
    ohif_problem,
)

with contextlib.suppress(ImportError):  # without it every test skips (fails under CI)
    from playwright.sync_api import Browser, Page, sync_playwright


@pytest.fixture(scope="session")
def e2e_ready() -> None:
    """Checked before anything is ingested or started."""
    problem = ohif_problem() or browser_problem()
    if problem:
        skip_or_fail(problem)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for stale in ARTIFACTS.glob("ohif-*"):  # a passing run leaves no old failure pictures
        stale.unlink()


@pytest.fixture(scope="session")
def stack(e2e_ready: None, sample_archive: Archive) -> Iterator[Stack]:
    """OHIF's dist/ on one loopback port, pacsfhir (CORS for OHIF's origin) on another,
    OHIF's only data source being pacsfhir's /dicom-web."""
    with OhifServer(OHIF_DIST) as ohif, CorsLiveServer(sample_archive, ohif.origin) as server:
        ohif.configure(app_config_js(server.dicomweb_root))
        yield Stack(ohif, server)


@pytest.fixture(scope="session")
def chromium_ready() -> None:
    """Playwright and Chromium, for the tests that need no OHIF."""
    problem = browser_problem()
    if problem:
        skip_or_fail(problem)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def chromium(chromium_ready: None) -> Iterator[Browser]:
    """Debian's Chromium, headless, once per session (Playwright's sync API allows one
    driver at a time, so every browser test shares this one)."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def browser(e2e_ready: None, chromium: Browser) -> Browser:
    """The shared Chromium, once OHIF is there too."""
    return chromium


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, BrowserLog]]:
    """A fresh page whose errors and failed requests are collected."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    # OHIF's onboarding tour would cover the viewport in the screenshots.
    context.add_init_script("localStorage.setItem('shownTours', '[\"basicViewerTour\"]')")
    opened = context.new_page()
    log = BrowserLog()
    opened.on(
        "console",
        lambda msg: (
            log.console_errors.append(f"{msg.text} @ {msg.location.get('url', '')}")
            if msg.type == "error"
            else None
        ),
    )
    opened.on("pageerror", lambda exc: log.page_errors.append(str(exc)))
    opened.on(
        "requestfailed",
        lambda req: log.failed_requests.append(f"{req.method} {req.url}: {req.failure}"),
    )
    opened.on(
        "response",
        lambda resp: (
            log.bad_responses.append(f"{resp.status} {resp.request.method} {resp.url}")
            if resp.status >= 400
            else None
        ),
    )
    try:
        yield opened, log
    finally:
        context.close()
