"""Where a registry keeps its rows and blobs: one engine (a connection pool) and one blob store.

The registry's concern modules (:mod:`.patterns`, :mod:`.lookup`, :mod:`.snapshots`, :mod:`.models`,
:mod:`.maintenance`, :mod:`.export`) are functions of a ``Storage``; :class:`.store.Registry` is
the facade over them. A ``Storage`` holds a connection pool: open one per process (after a fork,
open a new one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from forwardguard.errors import ForwardguardError
from forwardguard.registry.blobs import BlobStore
from forwardguard.registry.database import create_engine, database_errors, read_transaction, write_transaction
from forwardguard.registry.location import Location, resolve_location
from forwardguard.registry.schema import ensure_schema


def now() -> datetime:
    """The time every registry row is stamped with (UTC)."""
    return datetime.now(timezone.utc)


class Storage:
    """A registry's database and blob folder; make one with :meth:`open`."""

    def __init__(self, location: Location, engine: sa.Engine, schema_revision: str) -> None:
        self.location = location
        self.schema_revision = schema_revision
        self.engine = engine
        self.blobs = BlobStore(location.blob_root)

    @classmethod
    def open(cls, location: str | Path, *, create: bool = False, blob_root: str | Path | None = None) -> Storage:
        """Open the registry at a SQLite path or a database URL (see :mod:`.location`).

        ``create``: make the registry if it does not exist, or migrate an older schema to this
        code's. Without it, a missing registry or an outdated schema is an error.
        """
        resolved = resolve_location(location, blob_root=blob_root)
        if resolved.is_sqlite:
            path = resolved.sqlite_path
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.is_file():
                raise ForwardguardError(f"no registry at {path}: create it with `forwardguard registry init --registry {path}`")
        engine = create_engine(resolved)
        try:
            with database_errors(resolved):
                revision = ensure_schema(engine, upgrade=create, display=resolved.display())
            if create:
                resolved.blob_root.mkdir(parents=True, exist_ok=True)
        except BaseException:
            engine.dispose()
            raise
        return cls(resolved, engine, revision)

    def close(self) -> None:
        self.engine.dispose()

    def display(self) -> str:
        return self.location.display()

    @contextmanager
    def read(self, *, statements_apart: bool = False) -> Iterator[sa.Connection]:
        """A read transaction (with ``statements_apart``, on PostgreSQL, none: see
        :func:`.database.read_transaction`); a driver error leaves it as one ForwardguardError line."""
        with database_errors(self.location), read_transaction(self.engine, statements_apart=statements_apart) as connection:
            yield connection

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A write transaction (on SQLite it takes the write lock up front, see :mod:`.database`);
        committed when the block ends, rolled back when it raises."""
        with database_errors(self.location), write_transaction(self.engine) as connection:
            yield connection

    def one_by_prefix(
        self, connection: sa.Connection, table: sa.Table, column: sa.Column, prefix: str, what: str
    ) -> sa.RowMapping:
        """The one row whose ``column`` is ``prefix`` (a full sha256) or starts with it."""
        if len(prefix) == 64:
            query = sa.select(table).where(column == prefix)
        else:  # hex digits sort below "g": an index range scan
            query = sa.select(table).where(column >= prefix, column < prefix + "g").limit(2)
        rows = connection.execute(query).mappings().all()
        if not rows:
            raise ForwardguardError(f"no {what} {prefix} in registry {self.display()}")
        if len(rows) > 1:
            raise ForwardguardError(f"{what} id prefix {prefix} is ambiguous: give more characters")
        return rows[0]
