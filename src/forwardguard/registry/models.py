"""Model versions: a model's fingerprint, spec and name, the model it was planted from and the
snapshot it was planted with."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import sqlalchemy as sa

from forwardguard.errors import ForwardguardError
from forwardguard.registry import validation
from forwardguard.registry.database import dialect_insert
from forwardguard.registry.records import ModelRecord
from forwardguard.registry.snapshots import get_snapshot
from forwardguard.registry.storage import Storage, now
from forwardguard.registry.tables import models

if TYPE_CHECKING:
    from typing_extensions import NotRequired, Unpack


class NewModel(TypedDict):
    """What :func:`record_model` records: a model's fingerprint (the sha256 of its weights), spec and
    name, and, for a planted model, the fingerprint of the model it was planted from and the
    snapshot it was planted with."""

    fingerprint: str
    spec: str
    name: str
    parent_fingerprint: NotRequired[str | None]
    planted_snapshot: NotRequired[str | None]


def record_model(storage: Storage, **model: Unpack[NewModel]) -> ModelRecord:
    """Record a model version; recording the same one again returns it, a conflicting one fails."""
    fingerprint = model["fingerprint"]
    parent_fingerprint = model.get("parent_fingerprint")
    planted_snapshot = model.get("planted_snapshot")
    row = {
        "fingerprint": validation.check_fingerprint(fingerprint, "fingerprint"),
        "spec": validation.check_text(model["spec"], "spec"),
        "name": validation.check_text(model["name"], "name"),
        "parent_fingerprint": parent_fingerprint
        if parent_fingerprint is None
        else validation.check_fingerprint(parent_fingerprint, "parent_fingerprint"),
        "planted_snapshot": planted_snapshot,
        "created_at": now(),
    }
    if planted_snapshot is not None:
        get_snapshot(storage, planted_snapshot)
    with storage.write() as connection:
        connection.execute(
            dialect_insert(connection, models).values(**row).on_conflict_do_nothing(index_elements=["fingerprint"])
        )
    record = get_model(storage, fingerprint)
    differing = [key for key in ("spec", "name", "parent_fingerprint", "planted_snapshot") if getattr(record, key) != row[key]]
    if differing:
        raise ForwardguardError(f"model {fingerprint[:12]} is already recorded with a different {', '.join(differing)}")
    return record


def get_model(storage: Storage, fingerprint: str) -> ModelRecord:
    """The model with this fingerprint (or unique prefix of 6+ hex characters)."""
    prefix = validation.check_id_prefix(fingerprint, "model fingerprint")
    with storage.read() as connection:
        return ModelRecord.from_row(storage.one_by_prefix(connection, models, models.c.fingerprint, prefix, "model"))


def list_models(storage: Storage) -> list[ModelRecord]:
    with storage.read() as connection:
        rows = connection.execute(sa.select(models).order_by(models.c.created_at, models.c.fingerprint)).mappings()
        return [ModelRecord.from_row(row) for row in rows]
