"""Recording the audit log: an ASGI middleware that sees every request's final status,
and a writer thread that stores the records in batches, off the event loop.

Every request to a route the policy says needs a token (``auth.policy.NEEDS``, not
``PUBLIC``) is recorded, allowed or refused: the caller (from the request context, or the
caller ``note_caller`` kept before a 403; nobody for a 401), the client's address, the
route's action, the patient and study the path named, the status and its outcome, and
the query's parameter NAMES (never values: they may be PHI). ``AuditWriter`` queues the
records and a thread inserts them at least once a second and at shutdown; a crash loses
at most that last second. The same thread deletes events older than
``audit_retention_days`` at start and then hourly. The access log (``pacsfhir.access``)
names each request's route template and status, never its path or query (PHI).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from fastapi import Request
from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacsfhir.auth.policy import WADO_URI, Surface, need_of, surface_of
from pacsfhir.index import audit
from pacsfhir.mapping.audit import outcome_of
from pacsfhir.vocabulary.dates import US_PER_SECOND
from pacsfhir.vocabulary.records import AuditRecord

if TYPE_CHECKING:  # api.context calls note_caller
    from pacsfhir.api.context import Caller, RequestContext

log = logging.getLogger(__name__)
access_log = logging.getLogger("pacsfhir.access")  # uvicorn's own access log is off (cli)

ACTION_OF_PERMISSION = {"c": "C", "u": "U", "d": "D", "r": "R", "s": "E"}
_STUDY_PARAMS = ("study_uid", "study", "study_id")  # as the routes name a study in a path
FLUSH_SECONDS = 1.0
RETENTION_SECONDS = 3600.0
MAX_QUEUED = 100_000  # past this, records are dropped (and counted in the log), never blocking


def note_caller(request: Request, caller: Caller) -> None:
    """Keep the caller a token stands for, so that a refused request is audited with it."""
    request.state.audit_caller = caller


class AuditWriter:
    """Queues records; a thread appends them to the index in batches."""

    def __init__(
        self, engine: Engine, retention_days: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine
        self.retention_days = retention_days
        self.clock = clock
        self._queue: queue.Queue[AuditRecord] = queue.Queue(MAX_QUEUED)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def put(self, record: AuditRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def flush(self) -> None:
        """Store every queued record now (the search calls it: read your own writes)."""
        with self._lock:
            batch: list[AuditRecord] = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            audit.append(self.engine, batch)

    def forget_expired(self) -> int:
        """Delete what is older than the retention (0 days: keep forever)."""
        if self.retention_days <= 0:
            return 0
        cutoff = self.clock() - self.retention_days * 86_400
        return audit.forget_before(self.engine, int(cutoff * US_PER_SECOND))

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pacsfhir-audit", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        next_retention = 0.0  # at start, then hourly
        while True:
            try:
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + RETENTION_SECONDS
                    self.forget_expired()
                stopping = self._stop.wait(FLUSH_SECONDS)
                self.flush()
            except Exception as exc:  # the index down: keep trying, never crash the server
                stopping = self._stop.is_set()
                log.warning("audit log not written: %s", type(exc).__name__)
            if self.dropped:
                log.warning("audit log queue full: %d records dropped", self.dropped)
                self.dropped = 0
            if stopping:
                return


def _query_names(raw: bytes) -> tuple[str, ...]:
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    return tuple(sorted({name for name, _ in pairs}))


def record_of(
    scope: Scope, status: int, clock: Callable[[], float] = time.time
) -> AuditRecord | None:
    """The audit record of a finished request, or None when its route is not audited (a
    public route, an unknown path)."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if template is None:
        return None
    request = Request(scope)
    surface = surface_of(request.url.path)
    try:
        need = need_of(surface, request.method, template)
    except KeyError:
        return None
    if need is None:
        return None
    state = scope.get("state", {})
    context: RequestContext | None = state.get("context")
    caller: Caller | None = context.caller if context is not None else state.get("audit_caller")
    params = scope.get("path_params", {})
    client = scope.get("client")
    return AuditRecord(
        id="",
        recorded=int(clock() * US_PER_SECOND),
        action=ACTION_OF_PERMISSION.get(need.permission, "E"),
        outcome=outcome_of(status),
        status=status,
        method=request.method,
        route=template if surface is Surface.FHIR else _full_route(scope, template),
        subject=caller.subject if caller else None,
        client_id=caller.client_id if caller else None,
        fhir_user=caller.fhir_user if caller else None,
        token_patient=caller.patient if caller else None,
        patient=params.get("patient_id"),
        study_uid=next((params[k] for k in _STUDY_PARAMS if params.get(k)), None),
        address=client[0] if client else None,
        query_names=_query_names(scope.get("query_string", b"")),
    )


def _full_route(scope: Scope, template: str) -> str:
    path_params = scope.get("path_params", {})
    if "patient_id" not in path_params and template == WADO_URI:
        return template
    base = "/fhir/Patient/{patient_id}/$wado-rs" if "patient_id" in path_params else "/dicom-web"
    return base + template


class AuditMiddleware:
    """ASGI middleware: one audit record per finished request to an audited route."""

    def __init__(self, app: ASGIApp, writer: AuditWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The access line names the route's template, never the path or the query
            # (a Patient ID, a UID or a search value is PHI).
            template = getattr(scope.get("route"), "path", "(no route)")
            access_log.info("%s %s %d", scope.get("method"), template, status)
            record = record_of(scope, status)
            if record is not None:
                self.writer.put(record)
