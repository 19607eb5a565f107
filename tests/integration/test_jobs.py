"""Upstream work as jobs in the index (``upstream.jobs`` over ``index.jobs``), on both
databases: results within the short wait, 503 + an honest Retry-After beyond it and the
result on retry, identical requests sharing one job (threads, and two real processes on
one database), failures as 502/504, results expiring, and jobs whose process died taken
back and run again, or failed saying why."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacsfhir.archive import Archive
from pacsfhir.errors import BadGateway, GatewayTimeout, ServiceUnavailable
from pacsfhir.index import jobs as store
from pacsfhir.upstream.errors import UpstreamError
from pacsfhir.upstream.jobs import Jobs
from tests.support.threads import run_together

ROOT = Path(__file__).resolve().parents[2]


class Counted:
    """A handler that counts its calls and takes ``seconds``."""

    def __init__(self, seconds: float = 0.0, error: Exception | None = None) -> None:
        self.seconds = seconds
        self.error = error
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, payload: dict[str, Any]) -> Any:
        with self._lock:
            self.calls += 1
        time.sleep(self.seconds)
        if self.error is not None:
            raise self.error
        return {"echo": payload["n"]}


@pytest.fixture
def make_jobs(archive: Archive) -> Iterator[Any]:
    started: list[Jobs] = []

    def make(handlers: dict[str, Any], **options: Any) -> Jobs:
        jobs = Jobs(archive.engine, handlers, poll_seconds=0.05, **options)
        jobs.start()
        started.append(jobs)
        return jobs

    yield make
    for jobs in started:
        jobs.close()


def test_a_quick_job_answers_at_once(make_jobs: Any) -> None:
    handler = Counted()
    jobs = make_jobs({"find": handler})
    assert jobs.run("find:1", "find", {"n": 1}) == {"echo": 1}
    assert jobs.run("find:1", "find", {"n": 1}) == {"echo": 1}  # the stored result
    assert handler.calls == 1


def test_a_slow_job_is_503_then_the_result(make_jobs: Any) -> None:
    handler = Counted(seconds=1.0)
    jobs = make_jobs({"move": handler}, wait_seconds=0.1)
    with pytest.raises(ServiceUnavailable) as first:
        jobs.run("move:a", "move", {"n": 7})
    assert 1 <= first.value.retry_after <= 2
    time.sleep(1.2)
    assert jobs.run("move:a", "move", {"n": 7}) == {"echo": 7}
    assert handler.calls == 1


def test_retry_after_follows_observed_durations(make_jobs: Any) -> None:
    handler = Counted(seconds=0.6)
    jobs = make_jobs({"move": handler}, wait_seconds=2)
    for n in range(3):  # history: jobs of ~0.6 s
        jobs.run(f"move:{n}", "move", {"n": n})
    handler.seconds = 4.0
    with pytest.raises(ServiceUnavailable) as busy:
        jobs.run("move:long", "move", {"n": 9}, wait=0.05)
    assert busy.value.retry_after == 1  # typical 0.6 s, nothing better is known yet


def test_identical_requests_share_one_job(make_jobs: Any) -> None:
    handler = Counted(seconds=0.3)
    jobs = make_jobs({"find": handler}, workers=4)
    answers = run_together(8, lambda: jobs.run("find:same", "find", {"n": 3}))
    assert answers == [{"echo": 3}] * 8
    assert handler.calls == 1


def test_a_failed_job_is_502_and_the_next_request_tries_again(make_jobs: Any) -> None:
    handler = Counted(error=UpstreamError("pacs: association rejected"))
    jobs = make_jobs({"find": handler})
    with pytest.raises(BadGateway, match="association rejected"):
        jobs.run("find:x", "find", {"n": 1})
    handler.error = UpstreamError("pacs: no answer in 30 s", timed_out=True)
    with pytest.raises(GatewayTimeout, match="no answer"):
        jobs.run("find:x", "find", {"n": 1})
    handler.error = None
    assert jobs.run("find:x", "find", {"n": 1}) == {"echo": 1}
    assert handler.calls == 3


def test_a_result_expires(make_jobs: Any) -> None:
    handler = Counted()
    jobs = make_jobs({"find": handler}, result_seconds=0.05)
    jobs.run("find:e", "find", {"n": 1})
    time.sleep(0.1)
    jobs.run("find:e", "find", {"n": 1})
    assert handler.calls == 2


def test_queued_work_survives_a_restart(archive: Archive, make_jobs: Any) -> None:
    nobody = Jobs(archive.engine, {"find": Counted()}, workers=0)  # a process with no workers
    with pytest.raises(ServiceUnavailable):
        nobody.run("find:later", "find", {"n": 5}, wait=0.05)
    handler = Counted()
    make_jobs({"find": handler})  # the process that starts next
    deadline = time.monotonic() + 10
    while True:
        with archive.engine.connect() as conn:
            job = store.get(conn, "find:later")
        if (job is not None and job.ended) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert job is not None
    assert (job.state, job.result) == (store.DONE, {"echo": 5})


def test_a_job_whose_worker_died_runs_again_then_fails_saying_so(
    archive: Archive, make_jobs: Any
) -> None:
    engine = archive.engine
    now = time.time_ns() // 1000
    store.submit(engine, "find:orphan", "find", {"n": 2}, now)
    taken = store.claim(engine, "dead-process", now, ("find",))  # then it dies
    assert taken is not None
    handler = Counted()
    make_jobs({"find": handler}, stuck_seconds=0.2, heartbeat_seconds=0.05)
    deadline = time.monotonic() + 10
    while handler.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handler.calls == 1  # taken back and run

    # a kind the running workers do not take, so only the dead processes below claim it
    store.submit(engine, "audit:doomed", "audit", {"n": 3}, now)
    for owner in ("dead-1", "dead-2"):  # two attempts, each by a process that died
        assert store.claim(engine, owner, now, ("audit",)) is not None
        store.recover_stuck(engine, time.time_ns() // 1000 + 1, 2, time.time_ns() // 1000)
    with engine.connect() as conn:
        doomed = store.get(conn, "audit:doomed")
    assert doomed is not None
    assert doomed.state == store.FAILED
    assert "stuck" in (doomed.error or "")


def test_two_processes_share_one_job(archive: Archive, tmp_path: Path) -> None:
    """A second process (its own interpreter and engine) runs the work this one asked
    for; both asking at once still run it once."""
    counter = tmp_path / "calls"
    counter.touch()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.job_worker",
            archive.settings.index_url,
            str(counter),
            "0.5",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
        here = Jobs(archive.engine, {}, workers=0, wait_seconds=10)  # no local workers
        other = Jobs(archive.engine, {}, workers=0, wait_seconds=10)
        answers = run_together(
            4,
            lambda: (here if threading.get_ident() % 2 else other).run(
                "count:1", "count", {"n": 21}
            ),
        )
        assert answers == [42] * 4
        assert counter.read_text().count("ran") == 1
    finally:
        worker.kill()
        worker.wait()


def test_a_cached_result_is_read_without_a_write(
    make_jobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search served from a live result must not take the index's write lock (every
    cached read would then queue behind writers): ``submit`` is only called when the job
    is missing, failed or expired (a spy counts its calls; the index is real)."""
    submitted: list[str] = []
    real_submit = store.submit

    def counting_submit(*args: Any, **kwargs: Any) -> Any:
        submitted.append(args[1])
        return real_submit(*args, **kwargs)

    monkeypatch.setattr(store, "submit", counting_submit)
    jobs = make_jobs({"find": Counted()}, result_seconds=60)
    for _ in range(4):
        assert jobs.run("find:cached", "find", {"n": 4}) == {"echo": 4}
    assert submitted == ["find:cached"]


def test_ended_jobs_are_forgotten_in_time(archive: Archive, make_jobs: Any) -> None:
    """Every distinct search is a job: the workers drop ended ones past their keep time
    (here none), or the table would only grow."""
    jobs = make_jobs(
        {"find": Counted()},
        result_seconds=0,
        keep_ended_seconds=0,
        stuck_seconds=0.2,
    )
    for n in range(3):
        jobs.run(f"find:{n}", "find", {"n": n})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with archive.engine.connect() as conn:
            left = [store.get(conn, f"find:{n}") for n in range(3)]
        if not any(left):
            break
        time.sleep(0.05)
    assert left == [None, None, None]
