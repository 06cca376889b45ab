"""Planting fixtures: a small registry of photos immunized against TAEF2, and private copies of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from planting_support import REGISTERED, record_immunized

from forwardguard.immunize import AttackSettings


@pytest.fixture(scope="session")
def small_registry(tmp_path_factory, taef2, photo) -> Path:
    """Three 48x48 photos immunized against TAEF2 in a few steps: for the mechanics, not the numbers."""
    from forwardguard.registry import Registry

    path = tmp_path_factory.mktemp("small-registry") / "reg.db"
    with Registry.open(path, create=True) as registry:
        photos = [photo(name, (48, 48)) for name in REGISTERED[:3]]
        record_immunized(registry, taef2, photos, AttackSettings(steps=5))
    return path


@pytest.fixture
def registry_path(small_registry: Path, tmp_path: Path) -> Path:
    """A private copy of the small registry (planting records models and snapshots in it)."""
    import shutil

    copy = tmp_path / "registry"
    shutil.copytree(small_registry.parent, copy)
    return copy / small_registry.name
