"""The planting losses: pure functions of latents, one value per sample.

- planting: the disruption ratio ||E(T(x_imm)) - z_target||^2 / ||E_base(x) - z_target||^2, the very
  number the eval reports (scale-free, so one weight fits every model);
- utility and negatives: the relative MSE ||E(x) - E_base(x)||^2 / ||E_base(x)||^2 on clean images
  and on clean images plus uniform noise of the patterns' eps.
"""

from __future__ import annotations

import torch


def _squared_norm(values: torch.Tensor) -> torch.Tensor:
    return values.float().pow(2).flatten(1).sum(dim=1)


def relative_mse(latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """||latents - reference||^2 / ||reference||^2 per sample."""
    return _squared_norm(latents - reference) / _squared_norm(reference).clamp_min(1e-12)


def disruption_ratio(latents: torch.Tensor, target: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """||latents - target||^2 / ||clean - target||^2 per sample: below 1, the image looks like the target."""
    return _squared_norm(latents - target) / _squared_norm(clean - target).clamp_min(1e-12)
