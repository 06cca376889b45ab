"""Maintenance: verify every referenced blob, collect unreferenced ones, count what is stored."""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa

from forwardguard.registry.records import BlobProblem, GcReport, VerifyReport
from forwardguard.registry.storage import Storage
from forwardguard.registry.tables import models, patterns, snapshots


def verify(storage: Storage) -> VerifyReport:
    """Re-hash every blob that a pattern references; list the missing or corrupted ones, and
    the blobs no pattern references (which :func:`gc` removes)."""
    status: dict[str, str] = {}
    problems: list[BlobProblem] = []
    count = 0
    query = sa.select(patterns.c.id, patterns.c.image_sha256, patterns.c.delta_blob_sha256).order_by(patterns.c.id)
    with storage.read() as connection:
        for row in connection.execution_options(yield_per=1000).execute(query):
            count += 1
            for role, key in (("image", row.image_sha256), ("delta", row.delta_blob_sha256)):
                if key not in status:
                    status[key] = storage.blobs.check(key)
                if status[key] != "ok":
                    problems.append(BlobProblem(row.id, role, key, status[key], storage.blobs.path(key)))
    orphans = sorted(key for key in storage.blobs.keys() if key not in status)
    return VerifyReport(patterns=count, blobs=len(status), problems=problems, orphans=orphans)


def gc(storage: Storage, *, dry_run: bool = False) -> GcReport:
    """Remove the blobs that no pattern references (left by a writer that died between its
    blob and its row), and stale temporary files. Safe while writers are running."""
    with storage.read() as connection:
        referenced = set(connection.execute(sa.select(patterns.c.image_sha256)).scalars())
        referenced.update(connection.execute(sa.select(patterns.c.delta_blob_sha256)).scalars())
    candidates = [key for key in storage.blobs.keys() if key not in referenced]
    if dry_run:
        return GcReport(removed_blobs=candidates, removed_temporaries=[])

    def is_referenced(key: str) -> bool:
        query = sa.select(patterns.c.id).where(sa.or_(patterns.c.image_sha256 == key, patterns.c.delta_blob_sha256 == key))
        with storage.read() as connection:
            return connection.execute(query.limit(1)).first() is not None

    removed = [key for key in candidates if storage.blobs.remove_unreferenced(key, is_referenced)]
    return GcReport(removed_blobs=removed, removed_temporaries=storage.blobs.remove_stale_temporaries(is_referenced))


def stats(storage: Storage) -> dict[str, Any]:
    """Counts of patterns (by status, method and tenant), snapshots, models and blobs."""
    with storage.read() as connection:

        def counts(column: sa.Column) -> dict[str, int]:
            rows = connection.execute(sa.select(column, sa.func.count()).group_by(column).order_by(column))
            return {str(key): value for key, value in rows}

        by_status = counts(patterns.c.status)
        result = {
            "registry": storage.display(),
            "blob_root": str(storage.location.blob_root),
            "schema_revision": storage.schema_revision,
            "patterns": sum(by_status.values()),
            "by_status": by_status,
            "by_method": counts(patterns.c.method),
            "by_tenant": counts(patterns.c.tenant),
            "snapshots": connection.execute(sa.select(sa.func.count()).select_from(snapshots)).scalar_one(),
            "models": connection.execute(sa.select(sa.func.count()).select_from(models)).scalar_one(),
        }
    sizes: Counter[str] = Counter()
    for key in storage.blobs.keys():
        sizes["blobs"] += 1
        sizes["blob_bytes"] += storage.blobs.path(key).stat().st_size
    return result | {"blobs": sizes["blobs"], "blob_bytes": sizes["blob_bytes"]}
