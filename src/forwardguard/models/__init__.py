"""Model specs -> loaded models: Stable Diffusion pipelines, the TAESD family, and ``tiny``."""

from forwardguard.models.base import ImageModel
from forwardguard.models.load import load_model, resolve_device

__all__ = ["ImageModel", "load_model", "resolve_device"]
