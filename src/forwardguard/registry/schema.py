"""Schema revisions: check a registry's revision on open, migrate it (Alembic) on init."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from forwardguard.errors import ForwardguardError
from forwardguard.registry.database import WRITE_OPTION, use_wal

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant: serializes concurrent migrations of one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x666772656769  # "fgregi"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "the registry migrations have no head revision"
    return head


def current_revisions(connection: sa.Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


def ensure_schema(engine: sa.Engine, *, upgrade: bool, display: str) -> str:
    """Check that the registry's schema is this code's head revision, migrating it first when
    ``upgrade``; return the revision. A schema newer than the code is never touched."""
    script = ScriptDirectory.from_config(_config())
    head = head_revision()
    with engine.connect() as connection:
        current = current_revisions(connection)
    _refuse_unknown(script, current, head, display)
    if current == (head,):
        return head
    if not upgrade:
        if not current:
            raise ForwardguardError(
                f"{display} is not a forwardguard registry: create it with `forwardguard registry init --registry {display}`"
            )
        raise ForwardguardError(
            f"registry {display} has schema revision {current[0]}, this forwardguard needs {head}: "
            f"upgrade it with `forwardguard registry init --registry {display}`"
        )
    with migration_transaction(engine) as connection:
        # Read again under the lock: another process may have migrated meanwhile, and its tables are then
        # ours, not another application's.
        current = current_revisions(connection)
        _refuse_unknown(script, current, head, display)
        if not current:
            _refuse_foreign_tables(connection, display)
        command.upgrade(alembic_config(connection), "head")
    use_wal(engine)
    return head


def alembic_config(connection: sa.Connection) -> Config:
    """Alembic's config that migrates inside ``connection``'s transaction (see ``migrations/env.py``)."""
    config = _config()
    config.attributes["connection"] = connection
    return config


@contextmanager
def migration_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One write transaction for a migration, the only one at a time.

    On PostgreSQL an advisory lock serializes migrations; on SQLite BEGIN IMMEDIATE takes the write
    lock first. SQLite's batch migrations rebuild a table (copy, drop, rename), and with foreign keys on,
    dropping a table that other rows reference fails: they are switched off for the migration (SQLite
    ignores the pragma inside a transaction, so it is set before) and every reference is checked
    before the commit instead.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        driver = connection.connection.driver_connection
        assert driver is not None, "a connection taken from the pool has its driver's connection"
        if sqlite:
            driver.execute("PRAGMA foreign_keys = OFF")
        try:
            connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                if not sqlite:
                    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
                yield connection
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise ForwardguardError(
                            f"the migration would break {len(broken)} reference(s), first {broken[0]}: nothing was changed"
                        )
        finally:
            if sqlite:
                driver.execute("PRAGMA foreign_keys = ON")


def _refuse_foreign_tables(connection: sa.Connection, display: str) -> None:
    """A database without our revision that holds tables belongs to another application: never add ours."""
    tables = sorted(sa.inspect(connection).get_table_names())
    if tables:
        raise ForwardguardError(
            f"{display} is not a forwardguard registry and holds other tables ({', '.join(tables[:5])}): "
            "a registry needs a new file or an empty database"
        )


def _refuse_unknown(script: ScriptDirectory, current: tuple[str, ...], head: str, display: str) -> None:
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = [revision for revision in current if revision not in known]
    if unknown:
        raise ForwardguardError(
            f"registry {display} has schema revision {unknown[0]}, newer than this forwardguard knows "
            f"(up to {head}): upgrade forwardguard"
        )
