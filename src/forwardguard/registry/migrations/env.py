"""Alembic environment: migrates the connection that forwardguard.registry.schema hands in.

Run through ``alembic -c src/forwardguard/registry/alembic.ini`` (to write a new revision), it
connects to the ``sqlalchemy.url`` set there instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from forwardguard.registry.tables import metadata


def _run(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    _url = context.config.get_main_option("sqlalchemy.url")
    assert _url is not None, "the alembic config has no sqlalchemy.url"
    with sa.create_engine(_url).connect() as connection:
        _run(connection)
        connection.commit()
