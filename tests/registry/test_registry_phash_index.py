"""The perceptual-hash index: the same hashes as a full scan, its postings written by the database
whoever inserts, and registries of the previous schemas migrated with their postings filled in."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from registry_testdata import random_image

from forwardguard.errors import ForwardguardError
from forwardguard.registry import Registry
from forwardguard.registry.database import create_engine, dialect_insert
from forwardguard.registry.images import hamming_distances
from forwardguard.registry.location import resolve_location
from forwardguard.registry.phash_index import close_hashes, decode_postings, phash_bands
from forwardguard.registry.schema import alembic_config, migration_transaction
from forwardguard.registry.tables import models, patterns, phash_postings, snapshot_patterns, snapshots


def _row(index: int, phash: int) -> dict[str, Any]:
    """A pattern row with this hash (its blobs are never read here)."""
    digest = f"{index:064x}"
    return {
        "id": digest,
        "tenant": "default",
        "method": "noise",
        "params": {},
        "target": "gray",
        "model_fingerprint": "ab" * 32,
        "model_spec": "tiny:0",
        "image_sha256": digest,
        "pixel_sha256": digest,
        "delta_blob_sha256": digest,
        "phash": phash,
        "width": 8,
        "height": 8,
        "has_alpha": False,
        "created_at": datetime(2025, 1, 1, tzinfo=timezone.utc),
        "status": "active",
        "retired_at": None,
    }


def _flip(value: int, bits: np.ndarray) -> int:
    """``value`` (a signed 64-bit hash) with the given bit positions flipped."""
    flipped = (value & 0xFFFFFFFFFFFFFFFF) ^ sum(1 << int(bit) for bit in bits)
    return flipped - (1 << 64) if flipped >= 1 << 63 else flipped


def _hashes_near(queries: list[int], rng: np.random.Generator) -> list[int]:
    """For each query, hashes 0..12 bits away (random positions), and 9, 10 and 11 bits away spread as
    evenly over the four bands as they go (the pigeonhole's edge: no band within its radius but one)."""
    hashes = []
    for query in queries:
        for distance in range(13):
            hashes.append(_flip(query, rng.choice(64, size=distance, replace=False)))
        for per_band in ((3, 2, 2, 2), (3, 3, 2, 2), (2, 3, 3, 3), (3, 3, 3, 2), (0, 0, 0, 11), (0, 10, 0, 0)):
            bits = [16 * band + offset for band, count in enumerate(per_band) for offset in rng.choice(16, count, replace=False)]
            hashes.append(_flip(query, np.array(bits)))
    return hashes


def test_the_index_finds_the_same_hashes_as_a_full_scan(registry: Registry) -> None:
    rng = np.random.default_rng(0)
    queries = [int(value) for value in rng.integers(-(2**63), 2**63 - 1, size=30, dtype=np.int64)]
    recorded = _hashes_near(queries[:24], rng) + [int(v) for v in rng.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64)]
    recorded += [-(2**63), 2**63 - 1, 0, -1]  # the extremes of a signed 64-bit hash
    with registry.write() as connection:
        connection.execute(patterns.insert(), [_row(i, value) for i, value in enumerate(recorded)])
    all_hashes = np.array(recorded, dtype=np.int64)
    with registry.read() as connection:
        for query in [*queries, -(2**63), -1]:
            for radius in (0, 1, 3, 8, 9, 10, 11, 15, 16, 20):
                expected = np.unique(all_hashes[hamming_distances(query, all_hashes) <= radius]).tolist()
                assert sorted(close_hashes(connection, query, radius)) == expected, (query, radius)


def _postings(connection: sa.Connection, phash: int) -> list[list[int]]:
    """The hashes in the postings of each of ``phash``'s four band values, sorted."""
    postgresql = connection.dialect.name == "postgresql"
    found = []
    for band, value in enumerate(phash_bands(phash)):
        where = (phash_postings.c.band == band, phash_postings.c.value == value)
        data = connection.execute(sa.select(phash_postings.c.hashes).where(*where)).scalar_one()
        found.append(sorted(decode_postings(data, postgresql).tolist()))
    return found


def test_the_database_writes_the_postings_of_every_insert(registry: Registry) -> None:
    """A row inserted by plain SQL, not by the registry's code, is indexed; an insert that ON CONFLICT
    skips adds nothing; two patterns with one hash are both in its postings."""
    first, second = 0x0123456789ABCDEF, -0x0123456789ABCDEF
    with registry.write() as connection:
        connection.execute(patterns.insert(), [_row(1, first), _row(2, second), _row(3, second)])
    with registry.write() as connection:
        statement = dialect_insert(connection, patterns).values(**_row(1, first)).on_conflict_do_nothing(index_elements=["id"])
        connection.execute(statement)
    with registry.read() as connection:
        assert _postings(connection, first) == [[first]] * 4
        assert _postings(connection, second) == [[second, second]] * 4  # their bands differ from first's
        assert close_hashes(connection, first ^ 0b1011, 3) == [first]


def test_a_registry_of_a_previous_schema_gets_its_postings(registry_location: str) -> None:
    """The upgrade rebuilds the patterns table (SQLite): the snapshots that reference its rows, and
    a model planted from one, come through it unchanged."""
    hashes = [-(2**63), -1, 0, 2**63 - 1, 0x0123456789ABCDEF, -0x0123456789ABCDEF]
    rows = [_row(i, value) for i, value in enumerate(hashes)]
    engine = create_engine(resolve_location(registry_location))
    with migration_transaction(engine) as connection:
        command.upgrade(alembic_config(connection), "0002")
        connection.execute(patterns.insert(), rows)
        created = datetime(2025, 1, 2, tzinfo=timezone.utc)
        connection.execute(snapshots.insert().values(name="v1", created_at=created, pattern_count=len(rows)))
        connection.execute(snapshot_patterns.insert(), [{"snapshot_name": "v1", "pattern_id": row["id"]} for row in rows])
        planted = {"fingerprint": "ef" * 32, "spec": "tiny:1", "name": "planted", "planted_snapshot": "v1", "created_at": created}
        connection.execute(models.insert().values(**planted))
    engine.dispose()
    with Registry.open(registry_location, create=True) as registry:
        assert [record.id for record in registry.snapshot_patterns("v1")] == [row["id"] for row in rows]
        assert registry.get_model("ef" * 32).planted_snapshot == "v1"
        with registry.read() as connection:
            for value in hashes:
                sharing = [[h for h in sorted(hashes) if phash_bands(h)[band] == phash_bands(value)[band]] for band in range(4)]
                assert _postings(connection, value) == sharing
            assert sorted(close_hashes(connection, 0x0123456789ABCDEF ^ 0b111, 10)) == [0x0123456789ABCDEF]
        new_hash = registry.record_pattern(**random_image(1).record_args()).phash
        with registry.read() as connection:  # the trigger made by the upgrade indexes it
            assert close_hashes(connection, new_hash, 0) == [new_hash]
        with pytest.raises(ForwardguardError, match="(?i)foreign key"), registry.write() as connection:  # enforced again
            connection.execute(snapshot_patterns.insert().values(snapshot_name="v1", pattern_id="99" * 32))
