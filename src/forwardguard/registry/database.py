"""Engines and transactions: SQLite in WAL mode with waiting writers, PostgreSQL through psycopg 3."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from forwardguard.errors import ForwardguardError
from forwardguard.registry.location import Location

# How long a writer waits for another writer's lock before giving up.
BUSY_TIMEOUT_S = 60
PG_CONNECT_TIMEOUT_S = 10
# A connection with this execution option set starts its transactions with BEGIN IMMEDIATE on
# SQLite: it takes the write lock up front (waiting for it), so that a transaction that reads and
# then writes never fails with SQLITE_BUSY when another writer committed in between.
WRITE_OPTION = "forwardguard_write"


def create_engine(location: Location) -> sa.Engine:
    if location.is_sqlite:
        return _sqlite_engine(location)
    connect_args = {} if "connect_timeout" in location.url.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    return sa.create_engine(location.url, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_engine(location: Location) -> sa.Engine:
    engine = sa.create_engine(location.url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:  # noqa: ANN001 (DB-API objects)
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA synchronous = FULL")  # a committed pattern survives a power cut
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        immediate = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def use_wal(engine: sa.Engine) -> None:
    """Switch a SQLite registry to write-ahead logging (readers never wait for a writer).

    The mode is kept in the database file, so it is set once, when the registry is made, never on a
    file that is not (yet) a registry.
    """
    if engine.dialect.name != "sqlite":
        return
    # Changing the journal mode needs every other connection out of its transaction, and SQLite answers
    # "database is locked" at once rather than wait: registries opened concurrently with create=True
    # (several workers starting) read it meanwhile, so try again until the busy timeout.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        connection = engine.raw_connection()
        try:
            connection.cursor().execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        finally:
            connection.close()
        time.sleep(0.05)


def dialect_insert(connection: sa.Connection, table: sa.Table):  # noqa: ANN201 (dialect-specific Insert)
    """An INSERT that supports ON CONFLICT DO NOTHING on this connection's dialect."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


def is_one_of(column: sa.ColumnElement, name: str, postgresql: bool) -> sa.ColumnElement[bool]:
    """``column`` equals one of the integers of the list parameter ``name``, bound as one text
    (see :func:`integer_list`): ``= ANY`` of an array on PostgreSQL, ``IN`` a ``json_each`` on SQLite.
    One parameter keeps one statement for any length (prepared once); binding hundreds of values one
    by one costs more than the search they serve, and psycopg dumps a Python list of ints item by item
    (a regular expression each: 1.3 ms for the 428 values of a perceptual search)."""
    if postgresql:
        return column == sa.any_(sa.cast(sa.bindparam(name, type_=sa.Text), ARRAY(column.type)))
    return column.in_(sa.select(sa.column("value", column.type)).select_from(sa.func.json_each(sa.bindparam(name))))


def integer_list(values: Iterable[int], postgresql: bool) -> str:
    """The value of an :func:`is_one_of` parameter: a PostgreSQL array's text, ``{1,2}``, or a JSON list, ``[1,2]``."""
    joined = ",".join(map(str, values))
    return f"{{{joined}}}" if postgresql else f"[{joined}]"


@contextmanager
def database_errors(location: Location) -> Iterator[None]:
    """Turn a driver error (unreachable server, bad credentials, locked database) into one line."""
    try:
        yield
    except sa.exc.DBAPIError as error:
        cause = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
        raise ForwardguardError(f"registry {location.display()}: {cause}") from None
    except sa.exc.NoSuchModuleError as error:
        raise ForwardguardError(f"registry {location.display()}: {error}") from None


@contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            yield connection


@contextmanager
def read_transaction(engine: sa.Engine, *, statements_apart: bool = False) -> Iterator[sa.Connection]:
    """A read transaction; with ``statements_apart`` on PostgreSQL, no transaction at all: each
    statement commits by itself (autocommit), which saves the BEGIN and COMMIT round trips: two of a
    one-query lookup's four. Under READ COMMITTED each statement of a transaction sees its own
    snapshot anyway; what needs one transaction is a server-side cursor (``stream_results``)."""
    with engine.connect() as connection:
        if statements_apart and connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection
            return
        with connection.begin():
            yield connection
