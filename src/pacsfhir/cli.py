"""The commands: ingest, check, check-upstream, serve, listen, demo. Each builds Settings
and calls the rest."""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pacsfhir.dicom.prepare import ParallelPreparer, count_files, files_ahead
from pacsfhir.dicom.storage import ORPHAN_GRACE_SECONDS, STAGING_GRACE_SECONDS, BlobStore
from pacsfhir.errors import ConfigurationError
from pacsfhir.settings import Settings, load_settings, settings_environment

if TYPE_CHECKING:
    # Not at run time: the index layer (SQLAlchemy) is imported once the ingest workers
    # have started, see run_ingest.
    from pacsfhir.consistency import ConsistencyReport
    from pacsfhir.dicom.ingest import IngestSummary, Result

app = typer.Typer(help="pacsfhir: the FHIR R4 face of a PACS.", no_args_is_help=True)
console = Console(stderr=True)

DataOpt = Annotated[str | None, typer.Option("--data", help="Data folder (PACSFHIR_DATA)")]
DbOpt = Annotated[
    str | None, typer.Option("--database-url", help="Index URL (PACSFHIR_DATABASE_URL)")
]
ConfigOpt = Annotated[str | None, typer.Option("--config", help="TOML config (PACSFHIR_CONFIG)")]
HostOpt = Annotated[str | None, typer.Option("--host", help="Bind address (PACSFHIR_HOST)")]
PortOpt = Annotated[int | None, typer.Option("--port", help="Port (PACSFHIR_PORT)")]
BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="Public base URL (PACSFHIR_BASE_URL)")
]
DimsePortOpt = Annotated[
    int | None,
    typer.Option("--dimse-port", help="C-STORE listener port, 0 = off (PACSFHIR_DIMSE_PORT)"),
]
AeTitleOpt = Annotated[
    str | None, typer.Option("--ae-title", help="Our DICOM AE title (PACSFHIR_AE_TITLE)")
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", help="HTTP worker processes, 0: one per core (PACSFHIR_WORKERS)"),
]
DimseHostOpt = Annotated[
    str | None,
    typer.Option("--dimse-host", help="C-STORE listener bind address (PACSFHIR_DIMSE_HOST)"),
]


def _settings(**flags: Any) -> Settings:
    try:
        return load_settings(flags)
    except ConfigurationError as exc:
        console.print(f"[red]configuration error:[/red] {exc.message}")
        raise typer.Exit(2) from exc


def _print_summary(summary: IngestSummary, seconds: float) -> None:
    table = Table(title="ingest summary", show_header=False)
    for outcome in ("stored", "replaced", "already present", "rejected"):
        table.add_row(outcome, str(summary.counts.get(outcome, 0)))
    for reason, count in sorted(summary.rejected.items()):
        table.add_row(f"  rejected: {reason}", str(count))
    rate = summary.total / seconds if seconds > 0 else 0.0
    table.add_row("files/s", f"{rate:.0f}")
    console.print(table)
    for reason, example in sorted(summary.examples.items()):
        console.print(f"[yellow]{reason}[/yellow] e.g. {example}")


def run_ingest(settings: Settings, paths: list[str], progress: bool) -> IngestSummary:
    blobs = BlobStore(settings.blob_dir)
    blobs.ensure()
    started = time.perf_counter()
    ahead = files_ahead(settings.ingest_batch)
    with ParallelPreparer(paths, str(blobs.root), settings.ingest_workers, ahead) as stream:
        # Imported only now, after the parse workers have forked: they parse the first
        # files while this process imports the index layer and opens the database.
        from pacsfhir.archive import Archive
        from pacsfhir.dicom.ingest import ingest_prepared

        archive = Archive.open(settings)
        try:
            with _progress_bar(count_files(paths) if progress else None) as advance:
                summary = ingest_prepared(
                    stream,
                    archive.engine,
                    archive.blobs,
                    batch_size=settings.ingest_batch,
                    timezone=settings.dicom_timezone,
                    on_result=advance,
                )
        finally:
            archive.close()
    _print_summary(summary, time.perf_counter() - started)
    return summary


@contextmanager
def _progress_bar(total: int | None) -> Iterator[Callable[[Result], None] | None]:
    """A Rich progress bar of ``total`` files, advanced once a result; none for None."""
    if total is None:
        yield None
        return
    with Progress(
        TextColumn("ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("ingest", total=total)

        def advance(_result: Result) -> None:
            bar.advance(task)

        yield advance


@app.command("ingest")
def ingest_command(
    paths: Annotated[list[str], typer.Argument(help="DICOM files or folders (recursive)")],
    data: DataOpt = None,
    database_url: DbOpt = None,
    config: ConfigOpt = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when any file is rejected")
    ] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Parsing processes (0: one per core)")
    ] = None,
) -> None:
    """Store and index DICOM files; prints stored / already present / rejected."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        console.print(f"[red]no such file or folder:[/red] {', '.join(missing)}")
        raise typer.Exit(2)
    settings = _settings(
        data=data, database_url=database_url, config=config, ingest_workers=workers
    )
    summary = run_ingest(settings, paths, progress=console.is_terminal)
    if strict and summary.counts.get("rejected"):
        raise typer.Exit(1)


def _listed(paths: list[str], limit: int = 10) -> str:
    shown = paths[:limit] + ([f"... and {len(paths) - limit} more"] if len(paths) > limit else [])
    return "\n".join(f"  {path}" for path in shown)


def _print_check(report: ConsistencyReport, repair: bool) -> None:
    table = Table(title="check", show_header=False)
    repaired = set(report.repaired)
    for label, paths, removable in (
        ("orphan blobs", report.orphan_blobs, True),
        ("missing blobs", report.missing_blobs, False),
        ("damaged blobs", report.damaged_blobs, False),
        ("stale staged files", report.stale_staging, True),
    ):
        fixed = sum(1 for p in paths if p in repaired)
        removed = f" ({fixed} removed)" if repair and removable else ""
        table.add_row(label, f"{len(paths)}{removed}")
    console.print(table)
    for label, paths in (
        ("orphan blobs (no index row references them)", report.orphan_blobs),
        ("stale staged files", report.stale_staging),
    ):
        left = [p for p in paths if p not in repaired]
        if left:
            hint = "younger than --grace: kept" if repair else "--repair removes them"
            console.print(f"[yellow]{label}, {hint}:[/yellow]\n{_listed(left)}", soft_wrap=True)
    for label, paths in (
        ("missing blobs", report.missing_blobs),
        ("damaged blobs", report.damaged_blobs),
    ):
        if paths:
            console.print(
                f"[red]{label} (index rows kept):[/red]\n{_listed(paths)}", soft_wrap=True
            )
    if report.missing_blobs or report.damaged_blobs:
        console.print(
            "Restore these files from a backup, or ingest the original files again "
            "(pacsfhir ingest puts back a missing or wrong-size blob; for a hash "
            "mismatch, delete the damaged file first). --repair never deletes index rows."
        )
    console.print("[green]clean[/green]" if report.clean else "[red]problems remain[/red]")


@app.command("check")
def check_command(
    data: DataOpt = None,
    database_url: DbOpt = None,
    config: ConfigOpt = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Remove orphan blobs older than --grace and stale staged files; "
            "never deletes index rows",
        ),
    ] = False,
    verify_hash: Annotated[
        bool, typer.Option("--verify-hash", help="Also re-hash every blob (reads them all)")
    ] = False,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            help="Seconds: orphans younger than this are reported but not removed "
            "(a failed writer may be about to remove them itself)",
        ),
    ] = ORPHAN_GRACE_SECONDS,
    staging_grace: Annotated[
        float,
        typer.Option(
            "--staging-grace",
            help="Seconds: staged files younger than this are uploads in progress, not stale",
        ),
    ] = STAGING_GRACE_SECONDS,
) -> None:
    """Compare the index with the blobs: orphan blobs, missing or damaged blobs, stale
    staged files. Safe while a server or an ingest runs: each finding is confirmed under
    the index's write lock. Exit 0 clean (with --repair: once everything repairable is
    repaired), 1 problems remain."""
    settings = _settings(data=data, database_url=database_url, config=config)
    from sqlalchemy.engine import make_url

    from pacsfhir.consistency import check
    from pacsfhir.index.engine import create_index_engine, schema_version

    url = settings.index_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        console.print(f"[red]no index at {parsed.database}[/red]")
        raise typer.Exit(2)
    engine = create_index_engine(url)
    try:
        if schema_version(engine) is None:
            console.print(f"[red]no pacsfhir index at {parsed.render_as_string()}[/red]")
            raise typer.Exit(2)
        report = check(
            engine,
            BlobStore(settings.blob_dir),
            repair=repair,
            verify_hash=verify_hash,
            grace=grace,
            staging_grace=staging_grace,
        )
    finally:
        engine.dispose()
    _print_check(report, repair)
    raise typer.Exit(0 if report.clean else 1)


@app.command("check-upstream")
def check_upstream_command(
    config: ConfigOpt = None,
    upstream: Annotated[
        str | None,
        typer.Option("--upstream", help="Upstream URL to check (PACSFHIR_UPSTREAM)"),
    ] = None,
) -> None:
    """Say what works with each upstream PACS: C-ECHO, C-FIND and the retrieve method's
    negotiation for DIMSE, a QIDO-RS query for DICOMweb. Exit 0 all work, 1 something
    does not, 2 no upstream is configured (or its configuration is wrong)."""
    from pacsfhir.upstream.check import check_upstream

    settings = _settings(config=config, upstream=upstream)
    if not settings.upstreams:
        console.print("[red]no upstream configured[/red] (PACSFHIR_UPSTREAM or [[upstream]])")
        raise typer.Exit(2)
    table = Table(title="upstream check")
    for column in ("upstream", "step", "result", "detail"):
        table.add_column(column)
    everything_works = True
    for configured in settings.upstreams:
        for step in check_upstream(configured):
            everything_works &= step.ok
            result = "[green]works[/green]" if step.ok else "[red]fails[/red]"
            table.add_row(step.upstream, step.what, result, step.detail)
    console.print(table)
    raise typer.Exit(0 if everything_works else 1)


def serve(settings: Settings) -> None:
    import uvicorn

    from pacsfhir.api.app import create_app
    from pacsfhir.archive import Archive

    archive = Archive.open(settings)
    try:  # create_app refuses what must not start (an unimplemented auth, no auth off loopback)
        asgi_app = create_app(settings, archive)
    except ConfigurationError as exc:
        archive.close()
        console.print(f"[red]refusing to start:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    if settings.auth == "none":
        console.print(
            "[bold yellow]DEVELOPMENT MODE: no token checking (PACSFHIR_AUTH=none); "
            f"serving on loopback {settings.host} only.[/bold yellow]"
        )
    # uvicorn's access lines hold paths and queries (PHI): pacsfhir's own (api.recorder's
    # "pacsfhir.access", route templates only) take their place, through uvicorn's handler.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["pacsfhir"] = {"handlers": ["default"], "level": "INFO"}
    workers = settings.workers or os.cpu_count() or 1
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "log_config": log_config,
        "access_log": False,
        # with trusted proxies, pacsfhir reads their headers itself (api.forwarded) and
        # must see the proxy's own address, not one uvicorn rewrote
        "proxy_headers": not settings.trusted_proxies,
    }
    try:
        with _listener(archive, settings) as listener:
            if workers == 1:
                uvicorn.run(
                    asgi_app if listener is None else _stopping_first(asgi_app, listener.stop),
                    **options,
                )
            else:
                # Each worker builds the app from the environment (uvicorn starts them
                # afresh): the settings resolved here, flags and config file included, go
                # there. The index is migrated and the listener runs here, once; uvicorn's
                # supervisor restarts a worker that dies, and returns on SIGTERM.
                os.environ.update(settings_environment(settings))
                uvicorn.run(
                    "pacsfhir.api.app:app_from_env", factory=True, workers=workers, **options
                )
    finally:
        archive.close()


def _stopping_first(asgi_app: Any, stop: Callable[[], None]) -> Any:
    """``asgi_app`` that calls ``stop`` (in a thread) when the server begins to shut down:
    uvicorn re-raises SIGTERM/SIGINT once it has stopped, so code after uvicorn.run
    does not run then."""
    import anyio.to_thread

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await asgi_app(scope, receive, send)
            return

        async def receive_then_stop() -> Any:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await anyio.to_thread.run_sync(stop)
            return message

        await asgi_app(scope, receive_then_stop, send)

    return app


@contextmanager
def _listener(archive: Any, settings: Settings) -> Iterator[Any]:
    """The C-STORE listener in its threads while the block runs, when ``dimse_port`` is
    set (None otherwise); stopped (open associations ended, queued instances committed)
    on the way out."""
    if not settings.dimse_port:
        yield None
        return
    from pacsfhir.dimse.listener import StorageListener

    listener = StorageListener(
        archive,
        settings.dimse_bind_host,
        settings.dimse_port,
        settings.ae_title,
        max_associations=settings.dimse_max_associations,
    )
    try:
        listener.start()
    except OSError as exc:
        console.print(
            f"[red]cannot listen on {settings.dimse_bind_host}:{settings.dimse_port}:[/red] {exc}"
        )
        raise typer.Exit(2) from exc
    console.print(
        f"C-STORE listener: AE {settings.ae_title} on "
        f"{settings.dimse_bind_host}:{listener.port} (no authentication: trusted networks only)"
    )
    try:
        yield listener
    finally:
        listener.stop()


@app.command("nginx-config")
def nginx_config_command(
    config: ConfigOpt = None,
    listen: Annotated[
        str, typer.Option("--listen", help="nginx's listen directive (port, address:port)")
    ] = "80",
) -> None:
    """Print an nginx server block for pacsfhir with relay_offload=x-accel: everything
    forwarded to pacsfhir, and retrieves from each DICOMweb upstream streamed by nginx
    (docs/deploy.md). It holds the offload key and the upstreams' credentials: keep it as
    private as pacsfhir's own configuration."""
    from pacsfhir.api.offload import nginx_config

    settings = _settings(config=config)
    try:
        text = nginx_config(settings, listen)
    except ConfigurationError as exc:
        console.print(f"[red]cannot write the nginx configuration:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    sys.stdout.write(text)


@app.command("serve")
def serve_command(
    data: DataOpt = None,
    database_url: DbOpt = None,
    config: ConfigOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    base_url: BaseUrlOpt = None,
    dimse_port: DimsePortOpt = None,
    ae_title: AeTitleOpt = None,
    dimse_host: DimseHostOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Serve FHIR R4 over the archive (and the C-STORE listener when --dimse-port is set)."""
    serve(
        _settings(
            data=data,
            database_url=database_url,
            config=config,
            host=host,
            port=port,
            base_url=base_url,
            dimse_port=dimse_port,
            ae_title=ae_title,
            dimse_host=dimse_host,
            workers=workers,
        )
    )


@app.command("listen")
def listen_command(
    data: DataOpt = None,
    database_url: DbOpt = None,
    config: ConfigOpt = None,
    dimse_port: DimsePortOpt = None,
    ae_title: AeTitleOpt = None,
    dimse_host: DimseHostOpt = None,
) -> None:
    """Run the C-STORE listener alone (a Storage SCP for modalities; no HTTP API) until
    SIGINT or SIGTERM. DIMSE has no authentication: bind it to a trusted network."""
    import logging
    import signal
    import threading

    from pacsfhir.archive import Archive

    settings = _settings(
        data=data,
        database_url=database_url,
        config=config,
        dimse_port=dimse_port,
        ae_title=ae_title,
        dimse_host=dimse_host,
    )
    if not settings.dimse_port:
        console.print("[red]no port:[/red] give --dimse-port (PACSFHIR_DIMSE_PORT)")
        raise typer.Exit(2)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pacsfhir").setLevel(logging.INFO)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    archive = Archive.open(settings)
    try:
        with _listener(archive, settings):
            stopping.wait()
    finally:
        archive.close()


def sample_files() -> list[str]:
    """The bundled sample studies: pydicom's own test and character-set files."""
    import pydicom

    root = Path(pydicom.__file__).parent / "data"
    return [str(root / "test_files"), str(root / "charset_files")]


@app.command("demo")
def demo_command(
    data: DataOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
) -> None:
    """Ingest the bundled sample studies, print URLs to try, then serve."""
    settings = _settings(data=data or "pacsfhir-demo-data", host=host, port=port)
    summary = run_ingest(settings, sample_files(), progress=console.is_terminal)
    base = settings.fhir_base_url
    console.print(f"\n[bold]pacsfhir demo[/bold]: {summary.total} files read. Try:")
    for path in (
        "/metadata",
        "/ImagingStudy?_count=5",
        "/ImagingStudy?modality=MR&_include=ImagingStudy:subject",
        "/ImagingStudy?started=ge2000-01-01&_sort=-started",
        "/ImagingStudy?patient.name=buc",
        "/ImagingStudy?_summary=count",
    ):
        console.print(f"  curl -s '{base}{path}'", soft_wrap=True)
    console.print(f"  curl -s '{settings.dicomweb_base_url}/studies?limit=5'", soft_wrap=True)
    serve(settings)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
