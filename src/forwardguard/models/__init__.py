"""Model specs -> loaded models: Stable Diffusion pipelines, the TAESD family, and ``tiny``.

The names below are imported on first use (:mod:`forwardguard.lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forwardguard.lazy import lazy_exports

if TYPE_CHECKING:
    from forwardguard.models.base import ImageModel
    from forwardguard.models.load import load_model, resolve_device

__all__ = ["ImageModel", "load_model", "resolve_device"]
__getattr__ = lazy_exports(__name__, {
    "ImageModel": "forwardguard.models.base",
    "load_model": "forwardguard.models.load",
    "resolve_device": "forwardguard.models.load",
})  # fmt: skip
