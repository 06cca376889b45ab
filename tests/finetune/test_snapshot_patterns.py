"""SnapshotPatterns reads a snapshot's pixels through a bounded cache: memory does not grow with the patterns."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from forwardguard.errors import ForwardguardError
from forwardguard.finetune.data import PixelCache, SnapshotPatterns
from forwardguard.registry import Registry
from forwardguard.registry.tables import patterns as patterns_table

PAIR_BYTES = 2 * 48 * 48 * 3
"""The (immunized, clean) pixels of one of the small registry's 48x48 patterns."""


def pair(value: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((2, 2, 3), value, np.uint8), np.full((2, 2, 3), value, np.uint8)


def test_pixel_cache_evicts_the_least_recently_used_pair_beyond_its_budget():
    cache = PixelCache(max_bytes=2 * 24)  # two pairs of 2x2x3 arrays
    loads = []

    def get(index: int) -> None:
        cache.get(index, lambda: loads.append(index) or pair(index))

    for index in (0, 1, 0, 2, 0, 1):
        get(index)
    assert loads == [0, 1, 2, 1]  # 1 was the least recently used when 2 came in; 0 stayed
    assert len(cache) == 2
    assert cache.bytes == 2 * 24


def test_drawing_more_patterns_than_the_cache_holds_keeps_it_bounded_and_the_samples_unchanged(registry_path):
    with Registry.open(registry_path) as registry:
        registry.create_snapshot("all")
        bounded = SnapshotPatterns(registry, "all", cache_bytes=2 * PAIR_BYTES)
        unbounded = SnapshotPatterns(registry, "all", cache_bytes=2**40)
        drawn = set()
        for position in range(12):
            sample = bounded.crop(position, seed=3, size=32)
            reference = unbounded.crop(position, seed=3, size=32)
            assert sample.pattern_id == reference.pattern_id
            assert torch.equal(sample.immunized, reference.immunized)
            assert torch.equal(sample.clean, reference.clean)
            drawn.add(sample.pattern_id)
            assert len(bounded.cache) <= 2
            assert bounded.cache.bytes <= 2 * PAIR_BYTES
    assert len(drawn) == 3
    assert len(unbounded.cache) == 3


def test_verify_reads_every_pattern_and_keeps_none(registry_path, monkeypatch):
    with Registry.open(registry_path) as registry:
        registry.create_snapshot("all")
        patterns = SnapshotPatterns(registry, "all")
        read = []
        load_sample = registry.load_sample
        monkeypatch.setattr(registry, "load_sample", lambda record: read.append(record.id) or load_sample(record))
        patterns.verify()
        assert sorted(read) == sorted(record.id for record in patterns.records)
        assert len(patterns.cache) == 0
        assert patterns.cache.bytes == 0


def test_records_are_ids_and_each_record_is_read_when_its_pattern_is_drawn(registry_path, monkeypatch):
    """A snapshot of a million patterns holds 32 MB of ids, not a million records: a record is read
    again, by its id, when its pattern's pixels are read."""
    with Registry.open(registry_path) as registry:
        registry.create_snapshot("all")
        records = registry.snapshot_patterns("all")
        patterns = SnapshotPatterns(registry, "all")
        assert patterns.records.ids.nbytes == 32 * len(records) == 32 * len(patterns)
        assert [patterns.records.id(index) for index in range(len(patterns))] == [record.id for record in records]
        assert [record.id for record in patterns.records] == [record.id for record in records]
        assert patterns.max_eps == max(record.params["eps"] for record in records)
        assert patterns.smallest_side == min(min(record.width, record.height) for record in records)
        read = []
        get_pattern = registry.get_pattern
        monkeypatch.setattr(registry, "get_pattern", lambda pattern_id: read.append(pattern_id) or get_pattern(pattern_id))
        sample = patterns.crop(0, seed=3, size=32)
        patterns.crop(0, seed=3, size=32)  # the same pattern again: its pixels are cached
        assert read == [sample.pattern_id]


def test_a_pattern_made_for_another_target_is_refused_before_training(registry_path):
    with Registry.open(registry_path) as registry:
        last = registry.list_patterns()[-1]
        with registry.write() as connection:
            connection.execute(sa.update(patterns_table).where(patterns_table.c.id == last.id).values(target="cat.png"))
        registry.create_snapshot("all")
        with pytest.raises(ForwardguardError, match=f"pattern {last.id[:12]} has target 'cat.png': planting supports gray"):
            SnapshotPatterns(registry, "all")
