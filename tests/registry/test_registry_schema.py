"""Schema migrations: the migrated database matches the table definitions; a registry of a newer
schema, or a database that is no registry, is refused with one line."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from forwardguard.errors import ForwardguardError
from forwardguard.registry import Registry
from forwardguard.registry.database import create_engine
from forwardguard.registry.location import resolve_location
from forwardguard.registry.schema import head_revision
from forwardguard.registry.tables import metadata


def _engine(location: str) -> sa.Engine:
    return create_engine(resolve_location(location))


def test_migrations_build_exactly_the_tables(registry: Registry, registry_location: str) -> None:
    engine = _engine(registry_location)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        assert MigrationContext.configure(connection).get_current_heads() == (head_revision(),)
    engine.dispose()
    assert registry.schema_revision == head_revision()


def test_newer_schema_is_refused(registry: Registry, registry_location: str) -> None:
    engine = _engine(registry_location)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    for create in (False, True):
        with pytest.raises(
            ForwardguardError, match="schema revision 9999_from_the_future, newer than this forwardguard knows"
        ) as caught:
            Registry.open(registry_location, create=create)
        assert "\n" not in str(caught.value)


def test_a_database_that_is_no_registry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(ForwardguardError, match="is not a forwardguard registry: create it with"):
        Registry.open(path)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database file" * 100)
    with pytest.raises(ForwardguardError, match="file is not a database"):
        Registry.open(garbage)


def test_missing_sqlite_file_is_not_created_by_open(tmp_path: Path) -> None:
    with pytest.raises(ForwardguardError, match="no registry at .*missing.db: create it with"):
        Registry.open(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_concurrent_init_makes_one_schema(registry_location: str) -> None:
    def init(_: int) -> str:
        with Registry.open(registry_location, create=True) as opened:
            return opened.schema_revision

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(init, range(4))) == [head_revision()] * 4
    with Registry.open(registry_location) as opened:
        assert opened.list_patterns() == []
