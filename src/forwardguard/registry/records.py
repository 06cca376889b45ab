"""What the registry returns: plain, immutable records (never database rows)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, overload

import numpy as np

from forwardguard.registry.images import phash_hex


@overload
def utc(value: datetime) -> datetime: ...
@overload
def utc(value: None) -> None: ...
def utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; every registry time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class PatternRecord:
    id: str
    tenant: str
    method: str
    params: dict[str, Any]
    target: str
    model_fingerprint: str
    model_spec: str
    image_sha256: str
    pixel_sha256: str
    delta_blob_sha256: str
    phash: int
    width: int
    height: int
    has_alpha: bool
    created_at: datetime
    status: str
    retired_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> PatternRecord:
        """The record of a ``patterns`` row (its index columns, the hash's bands, left out)."""
        values = {column.name: row[column.name] for column in fields(cls)}
        values["created_at"] = utc(values["created_at"])
        values["retired_at"] = utc(values["retired_at"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "method": self.method,
            "params": self.params,
            "target": self.target,
            "model_fingerprint": self.model_fingerprint,
            "model_spec": self.model_spec,
            "image_sha256": self.image_sha256,
            "pixel_sha256": self.pixel_sha256,
            "delta_blob_sha256": self.delta_blob_sha256,
            "phash": phash_hex(self.phash),
            "width": self.width,
            "height": self.height,
            "has_alpha": self.has_alpha,
            "created_at": _iso(self.created_at),
            "status": self.status,
            "retired_at": _iso(self.retired_at),
        }


@dataclass(frozen=True)
class PatternSample:
    """A pattern's pixels, as the finetune and eval stages use them.

    ``immunized`` and ``clean`` are uint8 (H, W, 3); ``delta`` is int16 (H, W, 3) with
    ``immunized == clean + delta`` exactly; ``alpha`` is the image's alpha channel (H, W) or None.
    """

    record: PatternRecord
    immunized: np.ndarray
    clean: np.ndarray
    delta: np.ndarray
    alpha: np.ndarray | None


@dataclass(frozen=True)
class Match:
    """A lookup result. ``kind``: ``bytes`` (the same file), ``pixels`` (the same pixels, re-saved
    losslessly) or ``perceptual`` (perceptual hash within the threshold); ``distance`` is the
    perceptual hashes' Hamming distance, 0 for exact matches."""

    pattern: PatternRecord
    distance: int
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.pattern.id,
            "distance": self.distance,
            "kind": self.kind,
            "status": self.pattern.status,
            "tenant": self.pattern.tenant,
            "method": self.pattern.method,
            "model_fingerprint": self.pattern.model_fingerprint,
        }


@dataclass(frozen=True)
class SnapshotRecord:
    name: str
    created_at: datetime
    method: str | None
    model_fingerprint: str | None
    tenant: str | None
    pattern_count: int

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> SnapshotRecord:
        values = dict(row)
        values["created_at"] = utc(values["created_at"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created_at": _iso(self.created_at),
            "method": self.method,
            "model_fingerprint": self.model_fingerprint,
            "tenant": self.tenant,
            "pattern_count": self.pattern_count,
        }


@dataclass(frozen=True)
class ModelRecord:
    fingerprint: str
    spec: str
    name: str
    parent_fingerprint: str | None
    planted_snapshot: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ModelRecord:
        values = dict(row)
        values["created_at"] = utc(values["created_at"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "spec": self.spec,
            "name": self.name,
            "parent_fingerprint": self.parent_fingerprint,
            "planted_snapshot": self.planted_snapshot,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class BlobProblem:
    """A pattern's blob (``role``: ``image`` or ``delta``) that is ``missing`` or ``corrupted``."""

    pattern_id: str
    role: str
    sha256: str
    problem: str
    path: Path

    def describe(self) -> str:
        return f"{self.problem} {self.role} blob {self.path} of pattern {self.pattern_id}"


@dataclass(frozen=True)
class VerifyReport:
    """``blobs``: the blobs checked, two per pattern. ``orphans``: the unreferenced blobs (of the shard),
    None when a sample was verified."""

    patterns: int
    blobs: int
    problems: list[BlobProblem] = field(default_factory=list)
    orphans: list[str] | None = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "patterns": self.patterns,
            "blobs": self.blobs,
            "problems": [
                {
                    "pattern_id": p.pattern_id,
                    "role": p.role,
                    "sha256": p.sha256,
                    "problem": p.problem,
                    "path": str(p.path),
                }
                for p in self.problems
            ],
            "orphans": self.orphans,
        }


@dataclass(frozen=True)
class GcReport:
    removed_blobs: list[str]
    removed_temporaries: list[Path]

    def to_dict(self) -> dict[str, Any]:
        return {"removed_blobs": self.removed_blobs, "removed_temporaries": [str(p) for p in self.removed_temporaries]}


@dataclass(frozen=True)
class ExportReport:
    snapshot: str
    rows: int
    path: Path
