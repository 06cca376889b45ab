"""What each attack minimises, as a function of the perturbed images (one loss per image).

Inputs of any size are padded (reflect, bottom and right) to what the model needs inside the
objective, so the gradient reaches every real pixel and the delta keeps the image's own size.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from forwardguard.errors import ForwardguardError
from forwardguard.immunize.images import crop_to, pad_to_multiple
from forwardguard.immunize.pgd import Objective
from forwardguard.models.base import ImageModel
from forwardguard.models.edits import EditSettings, img2img, inpaint
from forwardguard.models.stable_diffusion import DiffusionModel


def _per_image_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(dim=1)


def encoder_objective(model: ImageModel, targets: torch.Tensor) -> Objective:
    """Algorithm 1: ||E(x + delta) - E(x_target)||^2 (mean over latent elements)."""

    def encode(images: torch.Tensor) -> torch.Tensor:
        padded, _ = pad_to_multiple(images, model.encode_multiple)
        return model.encode(padded)

    with torch.no_grad():
        target_latents = encode(targets)
    return lambda images: _per_image_mse(encode(images), target_latents)


def diffusion_objective(
    model: ImageModel,
    targets: torch.Tensor,
    settings: EditSettings,
    masks: torch.Tensor | None = None,
    noise_draws: int = 1,
) -> Objective:
    """Algorithm 2: ||f(x + delta) - x_target||^2, f the whole img2img (or, with masks, inpainting) edit.

    With ``noise_draws`` > 1 the loss is averaged over that many edits with seeds
    ``settings.seed``, ``settings.seed + 1``, ... (an expectation over the edit's noise).
    """
    if not isinstance(model, DiffusionModel):
        raise ForwardguardError(
            f"the diffusion attack needs a Stable Diffusion model; {model.spec!r} is an autoencoder (use --method encoder)"
        )
    size = tuple(targets.shape[-2:])
    padded_masks = None if masks is None else pad_to_multiple(masks, model.edit_multiple)[0]

    def edit(images: torch.Tensor, seed: int) -> torch.Tensor:
        padded, _ = pad_to_multiple(images, model.edit_multiple)
        draw = replace(settings, seed=seed)
        edited = img2img(model, padded, draw) if padded_masks is None else inpaint(model, padded, padded_masks, draw)
        return crop_to(edited, size)

    def objective(images: torch.Tensor) -> torch.Tensor:
        losses = [_per_image_mse(edit(images, settings.seed + draw), targets) for draw in range(noise_draws)]
        return torch.stack(losses).mean(dim=0)

    return objective
