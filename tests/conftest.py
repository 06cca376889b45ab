"""Shared fixtures: the real weights in ../shared, and small real photographs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("FORWARDGUARD_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared folder with real model weights; skipped when absent (failed under CI)."""
    path = _shared_dir()
    if not (path / "models").is_dir():
        message = f"shared folder with real weights not found at {path} (set FORWARDGUARD_SHARED)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def photo():
    """``photo(name, (width, height))``: a real photograph from scikit-image as (H, W, 3) uint8."""
    import numpy as np
    from PIL import Image
    from skimage import data

    def make(name: str = "astronaut", size: tuple[int, int] = (256, 256)) -> np.ndarray:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        return np.asarray(image.resize(size, Image.Resampling.BICUBIC))

    return make


@pytest.fixture(scope="session")
def taef2_spec(shared_dir: Path) -> str:
    return f"taesd:{shared_dir / 'models' / 'taef2'}"


@pytest.fixture(scope="session")
def taef2(taef2_spec: str):
    from forwardguard.models import load_model

    return load_model(taef2_spec)


@pytest.fixture(scope="session")
def tiny():
    from forwardguard.models import load_model

    return load_model("tiny")
