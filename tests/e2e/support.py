"""End-to-end helpers: the OHIF Viewer's prebuilt app on loopback, pacsfhir beside it
with CORS for that origin, and a record of what the browser asked for.

Nothing here reaches beyond 127.0.0.1: OHIF comes from ``scripts/fetch-ohif`` (the npm
package ``@ohif/app``), Chromium from Debian, Playwright's driver from its PyPI wheel.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from pacsfhir.archive import Archive
from tests.conftest import LiveServer

REPO = Path(__file__).resolve().parents[2]
OHIF_DIR = Path(os.environ.get("PACSFHIR_OHIF_DIR") or REPO / ".cache" / "ohif")
OHIF_DIST = OHIF_DIR / "dist"
ARTIFACTS = REPO / "tests" / "artifacts"

# Debian's chromium, run headless and kept off the network: without these it calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--enable-unsafe-swiftshader",  # WebGL in software, which cornerstone renders with
]


def chromium_path() -> str | None:
    """PACSFHIR_CHROMIUM, else Debian's ``chromium`` on PATH."""
    configured = os.environ.get("PACSFHIR_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    return shutil.which("chromium")


def ohif_problem() -> str | None:
    if not (OHIF_DIST / "index.html").is_file():
        return f"OHIF Viewer not fetched: no {OHIF_DIST / 'index.html'} (run scripts/fetch-ohif)"
    return None


def browser_problem() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (make e2e installs it)"
    if chromium_path() is None:
        return "Chromium not found (apt-get install chromium, or set PACSFHIR_CHROMIUM)"
    return None


def ohif_version() -> str:
    stamp = OHIF_DIR / ".source"
    return stamp.read_text().split()[0] if stamp.is_file() else "unknown"


def app_config_js(dicomweb_root: str) -> str:
    """OHIF's ``app-config.js`` with one DICOMweb data source: pacsfhir's /dicom-web.

    The shape is that of the pinned version's own ``dist/app-config.js``."""
    data_source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "pacsfhir",
        "configuration": {
            "friendlyName": "pacsfhir",
            "name": "pacsfhir",
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "wadoUriRoot": dicomweb_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": False,
            "dicomUploadEnabled": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "name": "pacsfhir e2e",
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": "pacsfhir",
        "dataSources": [data_source],
    }
    return "/** Written by tests/e2e. */\nwindow.config = " + json.dumps(config, indent=2) + ";\n"


CONTENT_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
}


class _OhifHandler(SimpleHTTPRequestHandler):
    """Static files from dist/; our app-config.js; any other path is the SPA's index."""

    app_config: ClassVar[bytes] = b""

    def guess_type(self, path: str | os.PathLike[str]) -> str:
        return CONTENT_TYPES.get(Path(path).suffix) or super().guess_type(path)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(self.app_config)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(self.app_config)
            return
        if not Path(self.translate_path(path)).is_file():
            self.path = "/index.html"  # client-side routes: /, /viewer?..., ...
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class OhifServer:
    """OHIF's dist/ on a free loopback port, in a thread."""

    def __init__(self, dist: Path) -> None:
        class Handler(_OhifHandler):  # its own app_config per server
            pass

        self._handler: type[_OhifHandler] = Handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(dist)))
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.origin = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def configure(self, app_config: str) -> None:
        self._handler.app_config = app_config.encode()

    def __enter__(self) -> OhifServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@dataclass(frozen=True)
class Seen:
    """One HTTP request pacsfhir answered."""

    method: str
    path: str
    query: str
    accept: str
    origin: str
    status: int

    def line(self) -> str:
        target = self.path + ("?" + self.query if self.query else "")
        return f"{self.status} {self.method} {target}  Accept: {self.accept or '-'}"


@dataclass
class RequestLog:
    """What pacsfhir was asked, as its ASGI app saw it (preflights included)."""

    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seen: Seen) -> None:
        with self.lock:
            self.seen.append(seen)

    def snapshot(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    def mark(self) -> int:
        with self.lock:
            return len(self.seen)

    def since(self, mark: int) -> list[Seen]:
        with self.lock:
            return list(self.seen[mark:])


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def recording(app: ASGIApp, log: RequestLog) -> ASGIApp:
    """Wrap an ASGI app so every HTTP request and its status land in ``log``."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await app(scope, receive, send_and_note)
        finally:
            log.add(
                Seen(
                    method=str(scope["method"]),
                    path=str(scope["path"]),
                    query=bytes(scope.get("query_string", b"")).decode("latin-1"),
                    accept=headers.get("accept", ""),
                    origin=headers.get("origin", ""),
                    status=status,
                )
            )

    return wrapped


class CorsLiveServer(LiveServer):
    """pacsfhir under a real uvicorn on a free loopback port, allowing ``origin`` (CORS),
    over an existing archive's index and blobs, recording every request it answers."""

    def __init__(self, archive: Archive, origin: str) -> None:
        self.log = RequestLog()
        super().__init__(archive, lambda app: recording(app, self.log), cors_origins=origin)

    @property
    def dicomweb_root(self) -> str:
        return self.settings.dicomweb_base_url

    def __enter__(self) -> CorsLiveServer:
        super().__enter__()
        return self


@dataclass(frozen=True)
class Stack:
    """OHIF and the pacsfhir it reads from."""

    ohif: OhifServer
    pacsfhir: CorsLiveServer


@dataclass
class BrowserLog:
    """What went wrong in the page: console errors, uncaught exceptions, failed or
    non-2xx requests."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    bad_responses: list[str] = field(default_factory=list)

    def report(self) -> str:
        parts = []
        for title, items in (
            ("console errors", self.console_errors),
            ("page errors", self.page_errors),
            ("failed requests", self.failed_requests),
            ("HTTP error responses", self.bad_responses),
        ):
            if items:
                parts.append(f"{title} ({len(items)}):\n  " + "\n  ".join(items[:50]))
        return "\n".join(parts) or "(no browser errors)"


# Canvas pixel statistics of every visible canvas in the viewport grid: a rendered
# image has many non-black pixels and many distinct grey levels.
CANVAS_STATS_JS = """
() => {
  const root = document.querySelector('[data-cy="viewport-grid"]') || document;
  const out = [];
  for (const canvas of root.querySelectorAll('canvas')) {
    const w = canvas.width, h = canvas.height;
    if (!w || !h || canvas.offsetParent === null) continue;
    const copy = document.createElement('canvas');
    copy.width = w; copy.height = h;
    const ctx = copy.getContext('2d', {willReadFrequently: true});
    try { ctx.drawImage(canvas, 0, 0); } catch (e) { continue; }
    const data = ctx.getImageData(0, 0, w, h).data;
    let lit = 0;
    const levels = new Set();
    for (let i = 0; i < data.length; i += 4) {
      const v = data[i] + data[i + 1] + data[i + 2];
      if (v > 24) lit++;
      levels.add(v);
    }
    out.push({cls: canvas.className, w, h, lit, total: w * h, levels: levels.size});
  }
  return out;
}
"""


# -- SMART standalone launch (test_smart_launch.py) ------------------------------------


class _CallbackHandler(BaseHTTPRequestHandler):
    """The app's redirect URI: remembers each URL it was sent to, answers a small page
    (any other path, 404)."""

    owner: ClassVar[CallbackServer]

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != CallbackServer.PATH:  # the browser's favicon...
            self.send_error(404)
            return
        self.owner.arrived(self.owner.origin + self.path)
        body = b"<!doctype html><title>Signed in</title><p id='done'>Back in the app.</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class CallbackServer:
    """A SMART app's redirect URI on a free loopback port (``redirect_uri``): the
    authorization server's redirect really lands here, and ``urls`` are what arrived."""

    PATH = "/smart-callback"

    def __init__(self) -> None:
        class Handler(_CallbackHandler):
            owner = self

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.origin = f"http://127.0.0.1:{int(self.httpd.server_address[1])}"
        self.redirect_uri = self.origin + self.PATH
        self.urls: list[str] = []
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def arrived(self, url: str) -> None:
        with self._lock:
            self.urls.append(url)

    def received(self) -> list[str]:
        with self._lock:
            return list(self.urls)

    def __enter__(self) -> CallbackServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def multipart_parts(content_type: str, body: bytes) -> list[email.message.Message]:
    """The body parts of a ``multipart/related`` response, read by the standard
    library's MIME parser."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    if message.get_content_type() != "multipart/related":
        raise ValueError(f"not multipart/related: {content_type}")
    return list(message.iter_parts())
