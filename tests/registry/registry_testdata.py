"""Immunized test images, made as `forwardguard immunize` makes them (uniform noise within eps)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

FINGERPRINT = "ab" * 32
OTHER_FINGERPRINT = "cd" * 32


@dataclass(frozen=True)
class Immunized:
    """An immunized test image; ``record_args`` are the arguments of the storage call ``Registry.record_pattern``
    (under ``forwardguard.immunize.recording.record_immunized``, whose canonical params the serve tests check):
    to the registry, ``params`` is any JSON object."""

    clean: np.ndarray
    immunized: np.ndarray
    png: bytes
    delta: np.ndarray

    def record_args(self, **overrides: Any) -> dict[str, Any]:
        args = {
            "image_png": self.png,
            "delta": self.delta,
            "method": "noise",
            "params": {"eps": 16 / 255, "seed": 0},
            "target": "gray",
            "model_fingerprint": FINGERPRINT,
            "model_spec": "tiny:0",
        }
        return args | overrides


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def immunize(clean: np.ndarray, *, seed: int, budget: int = 16, alpha: np.ndarray | None = None) -> Immunized:
    """Add uniform noise within +-budget, quantized and clipped as the immunize stage does."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-budget, budget + 1, size=clean.shape)
    immunized = np.clip(clean.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    delta = immunized.astype(np.int16) - clean.astype(np.int16)
    image = immunized if alpha is None else np.dstack([immunized, alpha])
    return Immunized(clean=clean, immunized=immunized, png=png_bytes(image), delta=delta)


def random_image(seed: int, size: tuple[int, int] = (24, 32)) -> Immunized:
    clean = np.random.default_rng(10_000 + seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    return immunize(clean, seed=seed)


def photo(name: str, *, seed: int = 0, size: int = 128) -> Immunized:
    """A crop of a real photograph shipped with scikit-image, immunized."""
    from skimage import data

    pixels = getattr(data, name)()[:, :, :3]
    height, width = pixels.shape[:2]
    top, left = (height - min(height, width)) // 2, (width - min(height, width)) // 2
    side = min(height, width)
    crop = Image.fromarray(np.ascontiguousarray(pixels[top : top + side, left : left + side])).resize((size, size))
    return immunize(np.asarray(crop), seed=seed)
