"""The index database: one engine per process from a URL (SQLite or PostgreSQL), brought
up to the current schema with Alembic."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest Alembic revision; a test checks it against the migrations folder. Knowing it
# lets an up-to-date index skip importing Alembic at all (a third of the CLI's start-up).
SCHEMA_HEAD = "0008"


def normalise_url(url: str) -> str:
    """Accept postgresql:// (as users write it) and use the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed batch survives power loss, not just a process crash.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # LIKE is case-sensitive in PostgreSQL; make SQLite agree (string :exact relies on it)
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute("PRAGMA mmap_size=268435456")
    cursor.close()


def create_index_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No server-side prepared statements: psycopg would prepare the writer's IN (...)
    # look-ups after five runs, and PostgreSQL then caches a generic plan that scans
    # whole tables when statistics are stale (measured: 8 ms -> 325 ms per look-up).
    return create_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=True,
        connect_args={"prepare_threshold": None},
    )


def read_connection(engine: Engine) -> Connection:
    """A connection for one request's reads. On PostgreSQL in autocommit: each statement
    then sees what was committed when it began, as it would inside a READ COMMITTED
    transaction, without a BEGIN and a ROLLBACK round trip around the reads (five round
    trips a FHIR read became three). SQLite is left as it is: Python's driver begins
    no transaction before a SELECT anyway, and a statement costs no round trip."""
    connection = engine.connect()
    if engine.dialect.name == "postgresql":
        return connection.execution_options(isolation_level="AUTOCOMMIT")
    return connection


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def schema_version(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return None


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    if schema_version(engine) == SCHEMA_HEAD:
        return
    from alembic import command

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
