"""Shared helpers: ports, processes (pacsfhir serve), memory sampling, latency statistics,
PostgreSQL schemas and plain-text tables."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / ".cache" / "bench"
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/pacsfhir_bench"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def log(message: str) -> None:
    """Progress goes to stderr; the tables go to stdout."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Poll ``url`` until it answers 200; fail early if the process dies (bounded)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s ({last})")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process we started, then SIGKILL it if it does not go (by its pid)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def pacsfhir_command(*args: str) -> list[str]:
    """The pacsfhir CLI of this interpreter (``python -m pacsfhir`` is the same CLI)."""
    return [sys.executable, "-m", "pacsfhir", *args]


def pacsfhir_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSFHIR_")}
    env["PACSFHIR_AUTH"] = "none"
    return env


@contextlib.contextmanager
def pacsfhir_server(
    data: Path, database_url: str, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """``pacsfhir serve`` (uvicorn) in a subprocess on a free loopback port; yields its
    base URL and pid, and stops it on exit. ``env``: further PACSFHIR_* settings."""
    port = free_port()
    args = ["serve", "--data", str(data), "--host", "127.0.0.1", "--port", str(port)]
    if database_url:
        args += ["--database-url", database_url]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            pacsfhir_command(*args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**pacsfhir_env(), **(env or {})},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{base}/fhir/metadata", proc, 120, "pacsfhir serve")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{tail(log_path)}") from exc
        yield base, proc.pid
    finally:
        stop_process(proc)


# -- memory -------------------------------------------------------------------------


@dataclass
class MemorySample:
    t: float  # seconds since sampling started
    rss: int  # bytes, summed over the process tree
    pss: int  # bytes, summed over the process tree (0 when unreadable)
    largest_rss: int  # bytes, the largest single process
    processes: int


def _proc_children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (every thread's list: any thread may fork)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return found


def _proc_memory(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) in bytes from /proc/PID/smaps_rollup, None when the process is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        return None
    return rss, pss


@dataclass
class TreeSampler:
    """Samples the RSS and PSS of a process and all its descendants in a thread.

    RSS summed over a forked tree counts pages shared between the parent and its worker
    processes once per process (an upper bound); PSS splits shared pages between the
    processes sharing them, so its sum is the tree's real footprint. Read straight from
    /proc (smaps_rollup, task/*/children: about 0.2 ms a process a sample) so that the
    sampling itself takes ~1% of a core (Linux only; /proc/PID/statm gives RSS alone on
    kernels without smaps_rollup).
    """

    pid: int
    interval: float = 0.05
    samples: list[MemorySample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _tree(self) -> list[int]:
        pids: list[int] = []
        queue = [self.pid]
        while queue and len(pids) < 1000:
            pid = queue.pop()
            pids.append(pid)
            queue.extend(_proc_children(pid))
        return pids

    def _memory(self, pid: int) -> tuple[int, int] | None:
        found = _proc_memory(pid)
        if found is not None:
            return found
        try:
            with open(f"/proc/{pid}/statm") as fh:
                return int(fh.read().split()[1]) * _PAGE_SIZE, 0
        except (OSError, IndexError, ValueError):
            return None

    def _run(self) -> None:
        started = time.perf_counter()
        while not self._stop.is_set():
            pids = self._tree()
            rss = pss = largest = 0
            for pid in pids:
                found = self._memory(pid)
                if found is None:
                    continue
                rss += found[0]
                pss += found[1]
                largest = max(largest, found[0])
            if rss:
                t = time.perf_counter() - started
                self.samples.append(MemorySample(t, rss, pss, largest, len(pids)))
            elif not os.path.exists(f"/proc/{self.pid}"):
                break
            self._stop.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"samples": 0}
        peak_rss = max(self.samples, key=lambda s: s.rss)
        peak_pss = max(self.samples, key=lambda s: s.pss)
        n = len(self.samples)
        quarter = [self.samples[min(n - 1, n * q // 4)] for q in (1, 2, 3, 4)]
        return {
            "samples": n,
            "interval_s": self.interval,
            "peak_tree_rss_mb": mb(peak_rss.rss),
            "peak_tree_pss_mb": mb(peak_pss.pss),
            "peak_largest_process_rss_mb": mb(max(s.largest_rss for s in self.samples)),
            "max_processes": max(s.processes for s in self.samples),
            "tree_rss_mb_at_25_50_75_100pct": [mb(s.rss) for s in quarter],
            "tree_pss_mb_at_25_50_75_100pct": [mb(s.pss) for s in quarter],
        }


def _cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a process from /proc/PID/stat (None when gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _postgres_backends(database: str) -> list[int]:
    """PostgreSQL backend processes serving ``database`` (their title names it)."""
    found = []
    marker = f" {database} ".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                title = fh.read(200)
        except OSError:
            continue
        if title.startswith(b"postgres: ") and marker in title:
            found.append(int(entry))
    return found


@dataclass
class CpuMeter:
    """CPU seconds used during a measurement: by the whole machine, by the measured
    processes, and so by everything else (other users' jobs make figures noisy on a
    2-core machine; the results say how much CPU they took meanwhile).

    Measured: this benchmark process and the children it waited for (the pacsfhir CLI
    and its workers), ``pids`` (a server), and, when ``database`` is given, the
    PostgreSQL backends serving that database (found by their process title every
    0.2 s; a backend's last < 0.2 s before it exits are missed)."""

    pids: Sequence[int] = ()
    database: str = ""
    _wall: float = 0.0
    _busy: float = 0.0
    _own: float = 0.0
    _children: float = 0.0
    _pids: float = 0.0
    _backends: dict[int, tuple[float, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @staticmethod
    def _machine_busy() -> float:
        """Busy CPU seconds of the whole machine from /proc/stat (user nice system irq
        softirq; idle, iowait, steal and guest time excluded)."""
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
        return (user + nice + system + irq + softirq) / _CLOCK_TICKS

    @staticmethod
    def _rusage(who: int) -> float:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    def _pid_seconds(self) -> float:
        return sum(_cpu_seconds(pid) or 0.0 for pid in self.pids)

    def _watch_backends(self, first: bool = False) -> None:
        for pid in _postgres_backends(self.database):
            seconds = _cpu_seconds(pid)
            if seconds is None:
                continue
            baseline, _last = self._backends.get(pid, (seconds if first else 0.0, 0.0))
            self._backends[pid] = (baseline, seconds)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._watch_backends()

    def __enter__(self) -> CpuMeter:
        if self.database and os.path.isdir("/proc"):
            self._watch_backends(first=True)
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        self._wall = time.perf_counter()
        self._busy = self._machine_busy()
        self._own = self._rusage(resource.RUSAGE_SELF)
        self._children = self._rusage(resource.RUSAGE_CHILDREN)
        self._pids = self._pid_seconds()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._wall = time.perf_counter() - self._wall
        self._busy = self._machine_busy() - self._busy
        self._own = self._rusage(resource.RUSAGE_SELF) - self._own
        self._children = self._rusage(resource.RUSAGE_CHILDREN) - self._children
        self._pids = self._pid_seconds() - self._pids
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._watch_backends()

    def result(self) -> dict[str, Any]:
        backends = sum(max(0.0, last - base) for base, last in self._backends.values())
        measured = self._own + self._children + self._pids + backends
        others = max(0.0, self._busy - measured)
        cores = os.cpu_count() or 1
        out = {
            "wall_s": round(self._wall, 2),
            "machine_busy_cpu_s": round(self._busy, 2),
            "measured_cpu_s": round(measured, 2),
            "bench_process_cpu_s": round(self._own, 2),
            "waited_children_cpu_s": round(self._children, 2),
            "watched_pids_cpu_s": round(self._pids, 2),
            "other_processes_cpu_s": round(others, 2),
            "other_processes_share_of_machine": round(others / (self._wall * cores), 3)
            if self._wall
            else 0.0,
        }
        if self.database:
            out["postgresql_backends_cpu_s"] = round(backends, 2)
        return out


def mb(value: int) -> float:
    return round(value / 1_048_576, 1)


# -- latency ------------------------------------------------------------------------


def percentiles(samples_ms: Sequence[float]) -> dict[str, Any]:
    """p50/p95/p99 (linear interpolation between closest ranks), mean, min, max in ms."""
    if not samples_ms:
        return {}
    data = sorted(samples_ms)
    if len(data) == 1:
        cuts = [data[0]] * 99
    else:
        cuts = statistics.quantiles(data, n=100, method="inclusive")
    return {
        "n": len(data),
        "p50_ms": round(cuts[49], 2),
        "p95_ms": round(cuts[94], 2),
        "p99_ms": round(cuts[98], 2),
        "mean_ms": round(statistics.fmean(data), 2),
        "min_ms": round(data[0], 2),
        "max_ms": round(data[-1], 2),
    }


@dataclass(frozen=True)
class Probe:
    """One kind of request, measured ``n`` times with different arguments."""

    name: str
    make: Callable[[int], httpx.Request]  # i -> request (i cycles through sample values)
    check: Callable[[httpx.Response], str | None]  # -> an error message, None when fine


def measure(
    client: httpx.Client, probe: Probe, n: int, warmup: int, offset: int = 0
) -> dict[str, Any]:
    """Sequential requests: ``warmup`` untimed, then ``n`` timed (request sent until the
    whole body is read). Each response is checked after the clock has stopped."""
    for i in range(warmup):
        client.send(probe.make(offset + n + i)).read()
    timings: list[float] = []
    errors: list[str] = []
    for i in range(n):
        request = probe.make(offset + i)
        start = time.perf_counter()
        response = client.send(request)
        response.read()
        timings.append((time.perf_counter() - start) * 1000)
        problem = probe.check(response)
        if problem:
            errors.append(problem)
    result = percentiles(timings)
    result["warmup"] = warmup
    result["errors"] = len(errors)
    if errors:
        result["first_error"] = errors[0]
    return result


def measure_within(
    client: httpx.Client, probe: Probe, n: int, warmup: int, budget_s: float
) -> dict[str, Any]:
    """``measure``, but first time one request: when ``n`` of them (and the warm-up)
    would not fit in ``budget_s`` seconds, measure fewer, and say so (``reduced_from``)."""
    start = time.perf_counter()
    client.send(probe.make(0)).read()
    one = time.perf_counter() - start
    fits = max(5, int(budget_s / max(one, 1e-6)))
    if fits >= n + warmup:
        return measure(client, probe, n, warmup)
    reduced_warmup = min(warmup, 2)
    result = measure(client, probe, max(5, fits - reduced_warmup), reduced_warmup)
    result["reduced_from"] = n
    return result


def expect_status(status: int = 200) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        if response.status_code != status:
            return f"HTTP {response.status_code} for {response.request.url}: {response.text[:200]}"
        return None

    return check


# -- PostgreSQL ---------------------------------------------------------------------


def sqlalchemy_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def database_name(url: str) -> str:
    return str(make_url(sqlalchemy_url(url)).database or "")


def with_search_path(url: str, schema: str) -> str:
    """The URL pacsfhir is given: the bench database with ``schema`` first on the path."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


def ensure_database(url: str) -> str | None:
    """Create the bench database if it is missing; returns a problem or None."""
    parsed = make_url(sqlalchemy_url(url))
    name = parsed.database
    try:
        admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if not found:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:
        return f"PostgreSQL not usable at {parsed.render_as_string()}: {type(exc).__name__}: {exc}"
    return None


def run_sql(url: str, *statements: str) -> list[Any]:
    """Run statements in autocommit mode; returns the first row of each (or None)."""
    engine = create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
    out: list[Any] = []
    try:
        with engine.connect() as conn:
            for statement in statements:
                result = conn.execute(text(statement))
                out.append(result.first() if result.returns_rows else None)
    finally:
        engine.dispose()
    return out


# -- output -------------------------------------------------------------------------


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (copy-pastes into issues and commit messages)."""
    cells = [[str(c) for c in header], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(cells[0]))
    body = [line(r) for r in cells[1:]]
    return "\n".join([title, rule, line(cells[0]), rule, *body, rule])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
