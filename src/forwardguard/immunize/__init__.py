"""Immunization: the encoder and diffusion attacks (paper algorithms 1 and 2) and the noise baseline.

- :func:`immunize` attacks decoded images (one size per call) and returns 8-bit results;
- :func:`immunize_files` reads files, batches them by size, and writes ``NAME.png`` + ``NAME.json``.
"""

from forwardguard.immunize.attack import METHODS, AttackSettings, ImmunizedImage, immunize
from forwardguard.images import LoadedImage, read_image, read_mask
from forwardguard.immunize.runner import RunOptions, RunReport, immunize_files

__all__ = [
    "METHODS",
    "AttackSettings",
    "ImmunizedImage",
    "LoadedImage",
    "RunOptions",
    "RunReport",
    "immunize",
    "immunize_files",
    "read_image",
    "read_mask",
]
