"""Registry fixtures: a fresh registry on SQLite and on PostgreSQL (the same tests run on both).

PostgreSQL tests use the server named by FORWARDGUARD_TEST_POSTGRES_URL (``.ci/start-postgres``
starts one and prints it); each test gets its own schema there. Without the variable they are
skipped, and under CI=true they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_ENV = "FORWARDGUARD_TEST_POSTGRES_URL"


def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        message = f'{POSTGRES_ENV} is not set (start a server with: eval "$(.ci/start-postgres)")'
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def postgres_schema_url(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL registry URL confined to a new, empty schema, with its blobs under tmp_path."""
    import sqlalchemy as sa

    base = postgres_url()
    schema = f"fg_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    yield f"{base}{separator}options=-csearch_path%3D{schema}&blobs={tmp_path / 'pg-blobs'}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where to make a registry: a SQLite file, or a PostgreSQL schema (same tests, both backends)."""
    if request.param == "sqlite":
        return str(tmp_path / "reg.db")
    return request.getfixturevalue("postgres_schema_url")


@pytest.fixture
def registry(registry_location: str):
    from forwardguard.registry import Registry

    with Registry.open(registry_location, create=True) as opened:
        yield opened
