"""The Alembic migrations create exactly the schema the code declares, on both backends,
and SCHEMA_HEAD names the newest revision."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from pacsfhir.archive import Archive
from pacsfhir.index.engine import SCHEMA_HEAD, alembic_config, migrate, schema_version
from pacsfhir.index.schema import metadata


def test_schema_head_is_the_newest_revision() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_HEAD


def test_migrations_match_the_declared_schema(archive: Archive) -> None:
    assert schema_version(archive.engine) == SCHEMA_HEAD
    with archive.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []
    migrate(archive.engine)  # idempotent
