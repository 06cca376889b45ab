"""The measures every stage shares: the latent disruption ratio and relative MSE, per sample, and the two
images they are taken against, the gray target and the random-noise baseline.

- the disruption ratio ||z - z_target||^2 / ||z_clean - z_target||^2: 1 without effect, 0 at the target;
  the planting loss and the number the eval reports (scale-free, so one weight fits every model);
- the relative MSE ||z - z_ref||^2 / ||z_ref||^2: how far a model drifts from its reference on clean
  images (planting's utility and negatives, the eval's clean utility);
- the gray target (the paper's default and the only one planting supports) and the noise baseline: the
  clean image plus uniform noise in [-eps, eps], the same budget as an attack (the paper's table 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GRAY = 0.5
"""The gray target's value in every channel, images in [0, 1]."""


def gray_image(shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """The gray target: float32 images of ``shape`` (..., 3, H, W), every value ``GRAY``."""
    return torch.full(tuple(shape), GRAY, device=device)


def budget_255(eps: float) -> int:
    """The largest integer change of an 8-bit pixel value that the budget ``eps`` allows."""
    return int(eps * 255 + 1e-6)


def uniform_noise(shape: Sequence[int], eps: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise in [-eps, eps] of ``shape``, drawn on the CPU from ``generator``: one seeded draw
    per image, whatever batch it is in."""
    return (torch.rand(tuple(shape), generator=generator) * 2 - 1) * eps


def noisy_copy(clean: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """The random-noise baseline image: ``clean`` (in [0, 1]) plus ``uniform_noise``, quantized to 8 bits."""
    noise = uniform_noise(clean.shape, eps, generator).to(clean.device)
    return torch.round((clean + noise) * 255).clamp(0, 255) / 255


def squared_norm(values: torch.Tensor) -> torch.Tensor:
    """||values[i]||^2 per sample, in float32."""
    return values.float().pow(2).flatten(1).sum(dim=1)


def relative_mse(latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """||latents - reference||^2 / ||reference||^2 per sample."""
    return squared_norm(latents - reference) / squared_norm(reference).clamp_min(1e-12)


def disruption_ratio(latents: torch.Tensor, target: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """||latents - target||^2 / ||clean - target||^2 per sample: below 1, the image looks like the target."""
    return squared_norm(latents - target) / squared_norm(clean - target).clamp_min(1e-12)
