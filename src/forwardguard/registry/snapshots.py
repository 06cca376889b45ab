"""Snapshots: frozen sets of patterns, so that a planting is reproducible and the eval knows which
patterns a model was planted with."""

from __future__ import annotations

import sqlalchemy as sa

from forwardguard.errors import ForwardguardError
from forwardguard.registry import validation
from forwardguard.registry.records import SnapshotRecord
from forwardguard.registry.storage import Storage, now
from forwardguard.registry.tables import patterns, snapshot_patterns, snapshots


def create_snapshot(
    storage: Storage,
    name: str,
    *,
    method: str | None = None,
    model_fingerprint: str | None = None,
    tenant: str | None = None,
) -> SnapshotRecord:
    """Freeze the active patterns matching every given filter (all by default) under a new,
    unique name. A snapshot never changes afterwards."""
    validation.check_snapshot_name(name)
    selected = sa.select(sa.literal(name), patterns.c.id).where(patterns.c.status == "active")
    for column, value in (
        (patterns.c.method, method),
        (patterns.c.model_fingerprint, model_fingerprint),
        (patterns.c.tenant, tenant),
    ):
        if value is not None:
            selected = selected.where(column == value)
    exists = ForwardguardError(f"snapshot {name!r} already exists in registry {storage.display()}")
    with storage.write() as connection:
        if connection.execute(sa.select(snapshots.c.name).where(snapshots.c.name == name)).first():
            raise exists
        try:  # a concurrent writer took the name since the check (PostgreSQL)
            connection.execute(
                snapshots.insert().values(
                    name=name,
                    created_at=now(),
                    method=method,
                    model_fingerprint=model_fingerprint,
                    tenant=tenant,
                    pattern_count=0,
                )
            )
        except sa.exc.IntegrityError:
            raise exists from None
        connection.execute(snapshot_patterns.insert().from_select(["snapshot_name", "pattern_id"], selected))
        count = connection.execute(sa.select(sa.func.count()).where(snapshot_patterns.c.snapshot_name == name)).scalar_one()
        if count == 0:
            raise ForwardguardError(f"no active pattern matches, so snapshot {name!r} was not created")
        connection.execute(snapshots.update().where(snapshots.c.name == name).values(pattern_count=count))
    return get_snapshot(storage, name)


def get_snapshot(storage: Storage, name: str) -> SnapshotRecord:
    with storage.read() as connection:
        row = connection.execute(sa.select(snapshots).where(snapshots.c.name == name)).mappings().first()
    if row is None:
        raise ForwardguardError(f"no snapshot {name!r} in registry {storage.display()}")
    return SnapshotRecord.from_row(row)


def list_snapshots(storage: Storage) -> list[SnapshotRecord]:
    with storage.read() as connection:
        rows = connection.execute(sa.select(snapshots).order_by(snapshots.c.created_at, snapshots.c.name)).mappings()
        return [SnapshotRecord.from_row(row) for row in rows]
