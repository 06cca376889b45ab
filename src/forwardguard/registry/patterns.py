"""Patterns: record, read, list and retire them.

Durability: a pattern's blobs are written (atomically, fsynced) before its row is committed, so a
crash leaves at worst an unreferenced blob, which :func:`.maintenance.gc` removes, never a row
without its blobs. Every blob read checks the blob's sha256.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import sqlalchemy as sa

from forwardguard.registry import validation
from forwardguard.registry.blobs import BlobError
from forwardguard.registry.database import dialect_insert
from forwardguard.registry.images import (
    decode_delta,
    decode_png,
    encode_delta,
    pattern_id,
    perceptual_hash,
    pixel_sha256,
)
from forwardguard.registry.records import PatternRecord, PatternSample
from forwardguard.registry.snapshots import get_snapshot
from forwardguard.registry.storage import Storage, now
from forwardguard.registry.tables import patterns, snapshot_patterns
from forwardguard.registry.validation import DEFAULT_TENANT

if TYPE_CHECKING:
    from typing_extensions import NotRequired, Unpack


class NewPattern(TypedDict):
    """What :func:`record_pattern` records: the immunized PNG, its delta ``immunized - clean``
    (integers, (H, W, 3)), the attack's method and JSON parameters, its target, the model it was
    made against, and its tenant (the default tenant when left out)."""

    image_png: bytes
    delta: np.ndarray
    method: str
    params: dict[str, Any]
    target: str
    model_fingerprint: str
    model_spec: str
    tenant: NotRequired[str]


class PatternFilter(TypedDict, total=False):
    """Which patterns :func:`iter_patterns` yields: those matching every given filter, oldest first,
    ``limit`` of them (all when None) after skipping ``offset``, and only those after the pattern
    ``after`` (a full id) in that order: keyset paging, which reads from the ``(created_at, id)`` index
    where it left off instead of skipping ``offset`` rows again for every page."""

    tenant: str | None
    method: str | None
    model_fingerprint: str | None
    status: str | None
    snapshot: str | None
    limit: int | None
    offset: int
    after: str | None


def record_pattern(storage: Storage, **pattern: Unpack[NewPattern]) -> PatternRecord:
    """Record an immunized image and its delta (``immunized - clean``, integers, (H, W, 3)).

    Idempotent: recording the same image and delta again for the same tenant returns the
    existing record as it was first written (its metadata included). Another tenant's recording
    of them is its own pattern (see :func:`.images.pattern_id`).
    """
    image_png = pattern["image_png"]
    pixels = decode_png(image_png)
    params = validation.check_params(pattern["params"])
    delta16 = validation.check_delta(pattern["delta"], pixels.rgb, params)
    phash = perceptual_hash(pixels.rgb)
    row = {
        "tenant": validation.check_tenant(pattern.get("tenant", DEFAULT_TENANT)),
        "method": validation.check_method(pattern["method"]),
        "params": params,
        "target": validation.check_text(pattern["target"], "target"),
        "model_fingerprint": validation.check_fingerprint(pattern["model_fingerprint"]),
        "model_spec": validation.check_text(pattern["model_spec"], "model_spec"),
        "pixel_sha256": pixel_sha256(pixels.rgb),
        "phash": phash,
        "width": pixels.rgb.shape[1],
        "height": pixels.rgb.shape[0],
        "has_alpha": pixels.alpha is not None,
        "created_at": now(),
        "status": "active",
        "retired_at": None,
    }
    delta_blob = encode_delta(delta16)
    row["image_sha256"] = storage.blobs.put(image_png)
    row["delta_blob_sha256"] = storage.blobs.put(delta_blob)
    row["id"] = pattern_id(row["image_sha256"], delta16, row["tenant"])
    with storage.write() as connection:
        insert = dialect_insert(connection, patterns).values(**row).on_conflict_do_nothing(index_elements=["id"])
        written = connection.execute(insert.returning(*patterns.c)).mappings().first()
        if written is None:  # recorded before: the row as it was first written
            written = connection.execute(sa.select(patterns).where(patterns.c.id == row["id"])).mappings().one()
    storage.blobs.restore_if_missing(row["image_sha256"], image_png)
    storage.blobs.restore_if_missing(row["delta_blob_sha256"], delta_blob)
    return PatternRecord.from_row(written)


def get_pattern(storage: Storage, pattern_id: str) -> PatternRecord:
    """The pattern with this id (or unique id prefix of 6+ hex characters)."""
    prefix = validation.check_id_prefix(pattern_id, "pattern id")
    with storage.read() as connection:
        return PatternRecord.from_row(storage.one_by_prefix(connection, patterns, patterns.c.id, prefix, "pattern"))


def iter_patterns(storage: Storage, *, batch_size: int = 1000, **filters: Unpack[PatternFilter]) -> Iterator[PatternRecord]:
    """The patterns that ``filters`` select, streamed in batches of ``batch_size`` rows."""
    query = patterns_query(storage, **filters)
    with storage.read() as connection:
        result = connection.execution_options(yield_per=batch_size).execute(query)
        for row in result.mappings():
            yield PatternRecord.from_row(row)


def patterns_query(storage: Storage, **filters: Unpack[PatternFilter]) -> sa.Select:
    """The SELECT of :func:`iter_patterns` (read by the indexes ``(created_at, id)``, or
    ``(tenant, created_at, id)`` for one tenant)."""
    query = sa.select(patterns)
    snapshot = filters.get("snapshot")
    if snapshot is not None:
        get_snapshot(storage, snapshot)
        query = query.join(snapshot_patterns, snapshot_patterns.c.pattern_id == patterns.c.id).where(
            snapshot_patterns.c.snapshot_name == snapshot
        )
    for column, value in (
        (patterns.c.tenant, filters.get("tenant")),
        (patterns.c.method, filters.get("method")),
        (patterns.c.model_fingerprint, filters.get("model_fingerprint")),
        (patterns.c.status, validation.check_status(filters.get("status"))),
    ):
        if value is not None:
            query = query.where(column == value)
    after = filters.get("after")
    if after is not None:
        last = get_pattern(storage, after)
        query = query.where(
            sa.tuple_(patterns.c.created_at, patterns.c.id)
            > sa.tuple_(sa.literal(last.created_at, patterns.c.created_at.type), sa.literal(last.id, patterns.c.id.type))
        )
    query = query.order_by(patterns.c.created_at, patterns.c.id)
    return query.limit(filters.get("limit")).offset(filters.get("offset", 0))


def load_blobs(storage: Storage, record: PatternRecord) -> tuple[bytes, bytes]:
    """A record's immunized PNG and delta safetensors bytes, both verified against their sha256."""
    return _read_blob(storage, record, "image", record.image_sha256), _read_blob(
        storage, record, "delta", record.delta_blob_sha256
    )


def load_sample(storage: Storage, record: PatternRecord) -> PatternSample:
    """Everything the finetune and eval stages need of one pattern, each blob read once."""
    image_png, delta_blob = load_blobs(storage, record)
    pixels, delta = decode_png(image_png), decode_delta(delta_blob)
    clean = (pixels.rgb.astype(np.int16) - delta).astype(np.uint8)
    return PatternSample(record=record, immunized=pixels.rgb, clean=clean, delta=delta, alpha=pixels.alpha)


def retire(storage: Storage, pattern_id: str) -> PatternRecord:
    """Mark a pattern retired: it stays in the snapshots that hold it, and new snapshots skip it."""
    record = get_pattern(storage, pattern_id)
    with storage.write() as connection:
        connection.execute(
            patterns.update()
            .where(patterns.c.id == record.id, patterns.c.status == "active")
            .values(status="retired", retired_at=now())
        )
    return get_pattern(storage, record.id)


def _read_blob(storage: Storage, record: PatternRecord, role: str, key: str) -> bytes:
    try:
        return storage.blobs.get(key)
    except BlobError as error:
        raise BlobError(
            f"pattern {record.id}: {role} {error}; run `forwardguard registry verify --registry {storage.display()}`"
        ) from None
