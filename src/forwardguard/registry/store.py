"""The registry's Python API: record, find, freeze and check perturbation patterns.

:class:`Registry` is a facade: each concern lives in its own module, as functions of a
:class:`.storage.Storage` (the engine and the blob store): :mod:`.patterns`, :mod:`.lookup`,
:mod:`.snapshots`, :mod:`.models`, :mod:`.maintenance` and :mod:`.export`.

A ``Registry`` holds a connection pool: open one per process (after a fork, open a new one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from forwardguard.registry import maintenance, models, patterns, snapshots
from forwardguard.registry.export import export_snapshot
from forwardguard.registry.location import Location
from forwardguard.registry.lookup import PHASH_MAX_DISTANCE, lookup
from forwardguard.registry.records import (
    ExportReport,
    GcReport,
    Match,
    ModelRecord,
    PatternRecord,
    PatternSample,
    SnapshotRecord,
    VerifyReport,
)
from forwardguard.registry.storage import Storage

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from forwardguard.registry.models import NewModel
    from forwardguard.registry.patterns import NewPattern, PatternFilter


class Registry:
    """A registry of perturbation patterns; make one with :meth:`open`."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    @classmethod
    def open(cls, location: str | Path, *, create: bool = False, blob_root: str | Path | None = None) -> Registry:
        """Open the registry at a SQLite path or a database URL (see :meth:`.storage.Storage.open`)."""
        return cls(Storage.open(location, create=create, blob_root=blob_root))

    def close(self) -> None:
        self._storage.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def location(self) -> Location:
        return self._storage.location

    @property
    def schema_revision(self) -> str:
        return self._storage.schema_revision

    @property
    def blob_root(self) -> Path:
        return self._storage.location.blob_root

    def display(self) -> str:
        return self._storage.display()

    def read(self) -> AbstractContextManager[sa.Connection]:
        """A read transaction on the registry's database, for tables beside the patterns (API keys)."""
        return self._storage.read()

    def write(self) -> AbstractContextManager[sa.Connection]:
        """A write transaction, committed when the block ends (see :meth:`.storage.Storage.write`)."""
        return self._storage.write()

    # -- patterns (see .patterns and .lookup) ---------------------------------------------------

    def record_pattern(self, **pattern: Unpack[NewPattern]) -> PatternRecord:
        """Record an immunized image and its delta (see :func:`.patterns.record_pattern`)."""
        return patterns.record_pattern(self._storage, **pattern)

    def get_pattern(self, pattern_id: str) -> PatternRecord:
        """The pattern with this id (or unique id prefix of 6+ hex characters)."""
        return patterns.get_pattern(self._storage, pattern_id)

    def iter_patterns(self, *, batch_size: int = 1000, **filters: Unpack[PatternFilter]) -> Iterator[PatternRecord]:
        """Patterns matching every given filter, oldest first, streamed in batches."""
        return patterns.iter_patterns(self._storage, batch_size=batch_size, **filters)

    def list_patterns(self, **filters: Unpack[PatternFilter]) -> list[PatternRecord]:
        """:meth:`iter_patterns` as a list."""
        return list(patterns.iter_patterns(self._storage, **filters))

    def load_blobs(self, record: PatternRecord) -> tuple[bytes, bytes]:
        """A record's immunized PNG and delta safetensors bytes, both verified against their sha256."""
        return patterns.load_blobs(self._storage, record)

    def load_sample(self, record: PatternRecord) -> PatternSample:
        """A record's immunized pixels, clean original and delta, each blob read once and verified."""
        return patterns.load_sample(self._storage, record)

    def retire(self, pattern_id: str) -> PatternRecord:
        """Mark a pattern retired: it stays in the snapshots that hold it, and new snapshots skip it."""
        return patterns.retire(self._storage, pattern_id)

    def lookup(
        self,
        image: bytes | np.ndarray,
        *,
        file_sha256: str | None = None,
        tenant: str | None = None,
        max_distance: int = PHASH_MAX_DISTANCE,
        perceptual: bool = False,
    ) -> list[Match]:
        """The patterns of an image, best first; the perceptual search only when ``perceptual`` or
        when nothing matched exactly (see :func:`.lookup.lookup`)."""
        return lookup(
            self._storage, image, file_sha256=file_sha256, tenant=tenant, max_distance=max_distance, perceptual=perceptual
        )

    # -- snapshots and models (see .snapshots and .models) --------------------------------------

    def create_snapshot(
        self, name: str, *, method: str | None = None, model_fingerprint: str | None = None, tenant: str | None = None
    ) -> SnapshotRecord:
        """Freeze the active patterns matching every given filter (all by default) under a new,
        unique name. A snapshot never changes afterwards."""
        return snapshots.create_snapshot(self._storage, name, method=method, model_fingerprint=model_fingerprint, tenant=tenant)

    def get_snapshot(self, name: str) -> SnapshotRecord:
        return snapshots.get_snapshot(self._storage, name)

    def list_snapshots(self) -> list[SnapshotRecord]:
        return snapshots.list_snapshots(self._storage)

    def snapshot_patterns(self, name: str) -> list[PatternRecord]:
        """The patterns a snapshot froze (retired ones included: a snapshot never changes)."""
        return self.list_patterns(snapshot=name)

    def record_model(self, **model: Unpack[NewModel]) -> ModelRecord:
        """Record a model version; recording the same one again returns it, a conflicting one fails."""
        return models.record_model(self._storage, **model)

    def get_model(self, fingerprint: str) -> ModelRecord:
        """The model with this fingerprint (or unique prefix of 6+ hex characters)."""
        return models.get_model(self._storage, fingerprint)

    def list_models(self) -> list[ModelRecord]:
        return models.list_models(self._storage)

    # -- maintenance and export (see .maintenance and .export) ----------------------------------

    def verify(
        self,
        *,
        shard: tuple[int, int] | None = None,
        sample: int | None = None,
        after: str | None = None,
        progress: Callable[[int, str], None] | None = None,
    ) -> VerifyReport:
        """Re-hash the blobs that the patterns (of a shard, a sample, or after an id) reference (see
        :func:`.maintenance.verify`)."""
        return maintenance.verify(self._storage, shard=shard, sample=sample, after=after, progress=progress)

    def gc(self, *, dry_run: bool = False) -> GcReport:
        """Remove the blobs that no pattern references, and stale temporary files (see :func:`.maintenance.gc`)."""
        return maintenance.gc(self._storage, dry_run=dry_run)

    def stats(self) -> dict[str, Any]:
        """Counts of patterns (by status, method and tenant), snapshots, models and blobs."""
        return maintenance.stats(self._storage)

    def export(self, snapshot: str, to_dir: str | Path) -> ExportReport:
        """Write a snapshot as a Hugging Face ``datasets`` dataset on disk (see :mod:`.export`)."""
        return export_snapshot(self._storage, snapshot, Path(to_dir))
