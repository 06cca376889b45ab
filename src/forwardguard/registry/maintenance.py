"""Maintenance: verify every referenced blob, collect unreferenced ones, count what is stored."""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import sqlalchemy as sa

from forwardguard.errors import ForwardguardError
from forwardguard.registry import validation
from forwardguard.registry.records import BlobProblem, GcReport, VerifyReport
from forwardguard.registry.storage import Storage
from forwardguard.registry.tables import models, patterns, snapshots

# Rows per page: each page is read in its own short transaction, so memory and locks stay flat.
PAGE_SIZE = 1000
# Shards split the id space (sha256 hex, evenly spread) on its first four hex digits.
_SHARD_PREFIXES = 16**4


def shard_range(shard: tuple[int, int] | None) -> tuple[str, str | None]:
    """The ids of shard ``(i, n)``: ``lower <= id < upper`` (upper None: to the end)."""
    if shard is None:
        return "", None
    index, count = shard
    if not (1 <= count <= _SHARD_PREFIXES and 0 <= index < count):
        raise ForwardguardError(f"shard must be I/N with 0 <= I < N <= {_SHARD_PREFIXES}, got {index}/{count}")
    upper = None if index + 1 == count else f"{(index + 1) * _SHARD_PREFIXES // count:04x}"
    return f"{index * _SHARD_PREFIXES // count:04x}", upper


def verify(
    storage: Storage,
    *,
    shard: tuple[int, int] | None = None,
    sample: int | None = None,
    after: str | None = None,
    progress: Callable[[int, str], None] | None = None,
) -> VerifyReport:
    """Re-hash the blobs of every pattern (in id order, page by page), list the missing or corrupted
    ones, and the blobs that no pattern references (which :func:`gc` removes).

    ``shard`` ``(i, n)``: only the patterns, and the blobs, whose sha256 falls in the i-th of n equal
    parts of the id space. ``sample``: only that many patterns, consecutive in id order from a random
    id (ids are hashes, so a random sample); no orphan check. ``after``: resume after this pattern id
    (as ``progress`` reported it: ``progress(patterns_checked, last_id)`` after each page).
    """
    if sample is not None and (sample < 1 or after is not None):
        raise ForwardguardError("verify: a sample is at least 1 pattern, and is not resumed (--after)")
    lower, upper = shard_range(shard)
    if after is not None:
        after = validation.check_id_prefix(after, "pattern id")
    if sample is None:
        segments = [(lower, upper)]
    else:  # from a random id to the range's end, then from its start up to that id
        start = _random_id(lower, upper)
        segments = [(start, upper), (lower, start)]
    problems: list[BlobProblem] = []
    count = 0
    for begin, end in segments:
        for row in _patterns_by_id(storage, begin=begin, after=after, upper=end):
            if count == sample:
                break
            count += 1
            for role, key in (("image", row.image_sha256), ("delta", row.delta_blob_sha256)):
                status = storage.blobs.check(key)
                if status != "ok":
                    problems.append(BlobProblem(row.id, role, key, status, storage.blobs.path(key)))
            if progress is not None and count % PAGE_SIZE == 0:
                progress(count, row.id)
    orphans = None if sample is not None else list(_unreferenced(storage, storage.blobs.keys(lower, upper)))
    return VerifyReport(patterns=count, blobs=2 * count, problems=problems, orphans=orphans)


def _random_id(lower: str, upper: str | None) -> str:
    """A random 64-hex-digit id with ``lower <= id < upper``."""
    low = int(lower.ljust(64, "0"), 16)
    high = 16**64 if upper is None else int(upper.ljust(64, "0"), 16)
    return f"{low + secrets.randbelow(high - low):064x}"


def _patterns_by_id(storage: Storage, *, begin: str, after: str | None, upper: str | None) -> Iterator[sa.Row]:
    """The patterns' ids and blob keys with ``begin <= id < upper`` (and ``id > after``), in id order,
    a page of ``PAGE_SIZE`` per read transaction (keyset pagination on the primary key)."""
    columns = (patterns.c.id, patterns.c.image_sha256, patterns.c.delta_blob_sha256)
    while True:
        query = sa.select(*columns).where(patterns.c.id >= begin).order_by(patterns.c.id).limit(PAGE_SIZE)
        if after is not None:
            query = query.where(patterns.c.id > after)
        if upper is not None:
            query = query.where(patterns.c.id < upper)
        with storage.read() as connection:
            rows = connection.execute(query).all()
        yield from rows
        if len(rows) < PAGE_SIZE:
            return
        after = rows[-1].id


def _unreferenced(storage: Storage, keys: Iterable[str]) -> Iterator[str]:
    """The ``keys`` that no pattern references, checked a page of keys per query."""
    keys = iter(keys)
    while page := list(itertools.islice(keys, PAGE_SIZE)):
        query = sa.union(
            sa.select(patterns.c.image_sha256).where(patterns.c.image_sha256.in_(page)),
            sa.select(patterns.c.delta_blob_sha256).where(patterns.c.delta_blob_sha256.in_(page)),
        )
        with storage.read() as connection:
            referenced = set(connection.execute(query).scalars())
        yield from (key for key in page if key not in referenced)


def gc(storage: Storage, *, dry_run: bool = False) -> GcReport:
    """Remove the blobs that no pattern references (left by a writer that died between its
    blob and its row), and stale temporary files. Safe while writers are running; streams the blob
    folder, a page of keys at a time."""
    candidates = _unreferenced(storage, storage.blobs.keys())
    if dry_run:
        return GcReport(removed_blobs=list(candidates), removed_temporaries=[])

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
