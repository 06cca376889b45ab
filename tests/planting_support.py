"""Helpers shared by the planting and eval tests (a module, not a conftest, so that it imports by name)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forwardguard.eval.schema import Report
from forwardguard.images import LoadedImage, encode_png
from forwardguard.immunize import AttackSettings, immunize, recording

REGISTERED = ("astronaut", "coffee", "chelsea", "rocket")
"""Photos immunized against TAEF2 and recorded: what planting plants."""
UNREGISTERED = ("camera", "immunohistochemistry")
"""Photos immunized the same way but NOT recorded: how far a planting generalizes."""
CLEAN_TRAINING = ("astronaut", "coffee", "chelsea", "brick", "grass", "gravel", "moon", "coins", "clock", "hubble_deep_field")
"""Clean photos planting distills on."""
HELD_OUT = ("camera", "immunohistochemistry", "retina")
"""Clean photos no stage trains on: clean utility and false triggers are measured on them."""


def record_immunized(registry, model, photos: list[np.ndarray], settings: AttackSettings) -> list[str]:  # noqa: ANN001
    """Immunize photos against ``model`` and record them, as `forwardguard immunize --registry` does."""
    ids = []
    for rgb in photos:
        result = immunize([LoadedImage(rgb=rgb, alpha=None, path=None)], model, settings)[0]
        record = recording.record_immunized(
            registry,
            result,
            png=encode_png(result.rgb),
            settings=settings,
            model_fingerprint=model.fingerprint,
            model_spec=model.spec,
        )
        ids.append(record.id)
    return ids


def tiny_config(**overrides) -> dict:
    """A plant config that runs in seconds on the CPU."""
    return {
        "max_steps": 4,
        "batch_size": 2,
        "pattern_batch_size": 2,
        "crop_size": 32,
        "large_crop_size": 64,
        "checkpoint_every": 2,
        "log_every": 1,
        "auto_interpolation": {"samples": 2},
        **overrides,
    }


@dataclass(frozen=True)
class DefaultDemo:
    """What the default ``forwardguard demo`` made (the ``default_demo`` fixture)."""

    folder: Path
    """Where it ran: its output is ``forwardguard-demo/`` in there."""
    stdout: str
    registry: Path
    snapshot: str
    report: Report
    v1_spec: str
    v2_spec: str
    planted_spec: str


def insert_empty_snapshot(registry_path: Path, name: str) -> None:
    """A snapshot row with no patterns. The registry never makes one (it refuses an empty snapshot), so
    this writes the row directly, as a damaged or hand-edited database would hold it."""
    from datetime import datetime, timezone

    import sqlalchemy as sa

    from forwardguard.registry.tables import snapshots

    engine = sa.create_engine(f"sqlite:///{registry_path}")
    with engine.begin() as connection:
        connection.execute(sa.insert(snapshots).values(name=name, created_at=datetime.now(timezone.utc), pattern_count=0))
    engine.dispose()
