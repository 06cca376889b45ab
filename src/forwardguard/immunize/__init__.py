"""Immunization: the encoder and diffusion attacks (paper algorithms 1 and 2) and the noise baseline.

- :func:`immunize` attacks decoded images (:class:`forwardguard.images.LoadedImage`, one size per
  call) and returns 8-bit results;
- :func:`immunize_files` reads files, batches them by size, and writes ``NAME.png`` + ``NAME.json``.

The names below are imported on first use (:mod:`forwardguard.lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forwardguard.lazy import lazy_exports

if TYPE_CHECKING:
    from forwardguard.immunize.attack import METHODS, AttackSettings, ImmunizedImage, immunize
    from forwardguard.immunize.runner import RunOptions, RunReport, immunize_files

_ATTACK, _RUNNER = "forwardguard.immunize.attack", "forwardguard.immunize.runner"
__all__ = ["METHODS", "AttackSettings", "ImmunizedImage", "RunOptions", "RunReport", "immunize", "immunize_files"]
__getattr__ = lazy_exports(__name__, {
    "METHODS": _ATTACK, "AttackSettings": _ATTACK, "ImmunizedImage": _ATTACK, "immunize": _ATTACK,
    "RunOptions": _RUNNER, "RunReport": _RUNNER, "immunize_files": _RUNNER,
})  # fmt: skip
