"""Upstream work as jobs, and the 503 + Retry-After a request gets while it runs.

``Jobs.run(key, kind, payload)`` submits the work (``index.jobs``: identical requests,
in this process or another on the same database, share one job), waits up to
``wait_seconds`` for it, and returns its result; if it is still running the request is
answered ``ServiceUnavailable`` with an honest ``Retry-After`` (the typical duration of
that kind of job, from the last ones finished, less the time this one has run), and the
same request retried gets the result. A failed job is 502 (504 when the upstream timed
out) with its error; the next request for it tries again.

Each process runs ``workers`` threads that claim queued jobs of the kinds it has a
handler for; a heartbeat thread keeps its running jobs alive, and jobs whose process died
are taken back (``stuck_seconds``) and run again, up to ``max_attempts``; ended jobs are
forgotten a day after their result expired (their durations feed Retry-After until then).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import Engine

from pacsfhir.errors import BadGateway, GatewayTimeout, ServiceUnavailable
from pacsfhir.index import jobs as store
from pacsfhir.index.engine import read_connection
from pacsfhir.upstream.errors import UpstreamError

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Any]  # payload -> JSON-able result
TIMED_OUT = "timed out: "  # prefix of the error of a job whose upstream timed out
DEFAULT_RETRY_SECONDS = 2
MAX_RETRY_SECONDS = 120
KEEP_ENDED_SECONDS = 86_400.0  # an ended job is kept this long past its expiry (history)


def _now() -> int:
    return time.time_ns() // 1000


def _usable(job: store.Job) -> bool:
    """A job to wait on or answer from as it is: queued, running, or done and unexpired
    (a failed or expired one is submitted again)."""
    if job.state == store.DONE:
        return job.expires is not None and job.expires > _now()
    return job.state in (store.QUEUED, store.RUNNING)


class Jobs:
    def __init__(
        self,
        engine: Engine,
        handlers: dict[str, Handler],
        *,
        workers: int = 2,
        wait_seconds: float = 2.0,
        result_seconds: float = 300.0,
        heartbeat_seconds: float = 2.0,
        stuck_seconds: float = 30.0,
        max_attempts: int = 2,
        poll_seconds: float = 0.5,
        keep_ended_seconds: float = KEEP_ENDED_SECONDS,
    ) -> None:
        self.engine = engine
        self.handlers = dict(handlers)
        self.workers = workers
        self.wait_seconds = wait_seconds
        self.result_seconds = result_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.stuck_seconds = stuck_seconds
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        self.keep_ended_seconds = keep_ended_seconds
        self.owner = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: dict[int, str] = {}  # pk -> key, of the jobs this process runs
        self._lock = threading.Lock()
        self._wake = threading.Event()  # a job was submitted here: look now
        self._ended = threading.Condition()  # a job ended here: waiters look now
        self._ends = 0  # how many jobs ended here (waiters wait for it to change)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        for number in range(self.workers):
            self._spawn(self._work, f"pacsfhir-job-{number}")
        if self.workers:
            self._spawn(self._beat, "pacsfhir-job-heartbeat")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []

    # -- requests ----------------------------------------------------------------------

    def run(self, key: str, kind: str, payload: dict[str, Any], wait: float | None = None) -> Any:
        """The result of the job ``key``, waiting up to ``wait`` (default
        ``wait_seconds``); ServiceUnavailable while it runs, BadGateway/GatewayTimeout
        when it failed."""
        with read_connection(self.engine) as conn:  # a cached result costs no write
            job = store.get(conn, key)
        if job is None or not _usable(job):
            job = store.submit(self.engine, key, kind, payload, _now())
        if not job.ended:
            self._wake.set()
            job = self._wait(key, self.wait_seconds if wait is None else wait)
        if job.state == store.DONE:
            return job.result
        if job.state == store.FAILED:
            error = job.error or "failed"
            if error.startswith(TIMED_OUT):
                raise GatewayTimeout(error.removeprefix(TIMED_OUT))
            raise BadGateway(error)
        raise ServiceUnavailable(
            "the upstream PACS is still working on this; retry shortly",
            retry_after=self.retry_after(job),
        )

    def _wait(self, key: str, seconds: float) -> store.Job:
        deadline = time.monotonic() + seconds
        while True:
            with self._ended:
                seen = self._ends
            with read_connection(self.engine) as conn:
                job = store.get(conn, key)
            assert job is not None
            left = deadline - time.monotonic()
            if job.ended or left <= 0:
                return job
            with self._ended:  # woken at once when this process ends a job; another
                # process's jobs are looked at every 50 ms
                self._ended.wait_for(partial(self._changed, seen), timeout=min(left, 0.05))

    def _changed(self, seen: int) -> bool:
        return self._ends != seen

    def retry_after(self, job: store.Job) -> int:
        """Seconds until the job is likely done: the median duration of the last ones of
        its kind, less what it has run (at least 1; a guess of 2 s with no history)."""
        with read_connection(self.engine) as conn:
            durations = store.recent_durations(conn, job.kind)
        if not durations:
            return DEFAULT_RETRY_SECONDS
        typical = statistics.median(durations) / 1e6
        elapsed = (_now() - (job.started or job.created)) / 1e6
        return max(1, min(MAX_RETRY_SECONDS, math.ceil(typical - elapsed)))

    # -- workers -----------------------------------------------------------------------

    def _work(self) -> None:
        kinds = tuple(self.handlers)
        next_recovery = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_recovery:
                    self._tidy()
                    next_recovery = time.monotonic() + self.stuck_seconds / 2
                job = store.claim(self.engine, self.owner, _now(), kinds)
            except Exception:  # the index unreachable: try again shortly
                log.exception("job queue unavailable")
                self._stop.wait(self.poll_seconds)
                continue
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            self._execute(job)

    def _tidy(self) -> None:
        """Take back jobs whose process died; forget ended jobs past ``keep_ended_seconds``
        (every distinct search is a job: without this the table only grows)."""
        now = _now()
        store.recover_stuck(
            self.engine, now - int(self.stuck_seconds * 1e6), self.max_attempts, now
        )
        store.forget_expired(self.engine, now - int(self.keep_ended_seconds * 1e6))

    def _execute(self, job: store.Job) -> None:
        with self._lock:
            self._running[job.pk] = job.key
        try:
            try:
                result = self.handlers[job.kind](job.payload)
            except UpstreamError as exc:
                prefix = TIMED_OUT if exc.timed_out else ""
                store.fail(self.engine, job.pk, self.owner, prefix + exc.message, _now())
            except Exception as exc:
                log.exception("job %s (%s) failed", job.pk, job.kind)
                store.fail(self.engine, job.pk, self.owner, f"{type(exc).__name__}", _now())
            else:
                seconds = float(job.payload.get("cache_seconds", self.result_seconds))
                expires = _now() + int(seconds * 1e6)
                store.finish(self.engine, job.pk, self.owner, result, _now(), expires)
        finally:
            with self._lock:
                self._running.pop(job.pk, None)
            with self._ended:
                self._ends += 1
                self._ended.notify_all()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            with self._lock:
                pks = list(self._running)
            try:
                store.beat(self.engine, pks, self.owner, _now())
            except Exception:
                log.exception("job heartbeat failed")
