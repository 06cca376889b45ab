"""What each attack minimises, as a function of the perturbed images (one loss per image).

Inputs of any size are padded (reflect, bottom and right) to what the model needs inside the
objective, so the gradient reaches every real pixel and the delta keeps the image's own size.

A batch of images of different sizes arrives as a bucket (:mod:`forwardguard.models.buckets`):
every image already padded to one shape. ``sizes`` then gives each image's own (H, W), and each
loss is taken over that image's own part only: for the encoder, the latent of the image padded to
the model's multiple, as when the image is attacked alone; for an edit, the image's own pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from forwardguard.errors import ForwardguardError
from forwardguard.immunize.pgd import Objective
from forwardguard.models.base import ImageModel
from forwardguard.models.edits import EditSettings, img2img, inpaint
from forwardguard.models.padding import encode, pad_to_multiple, run_padded
from forwardguard.models.stable_diffusion import DiffusionModel

Size = tuple[int, int]


def bucket_multiple(model: ImageModel, method: str) -> int:
    """What the attack's objective pads an image to: the encoder's multiple, or the whole edit's."""
    return _diffusion_model(model).edit_multiple if method == "diffusion" else model.encode_multiple


def check_method(model: ImageModel, method: str) -> None:
    """ForwardguardError when ``method`` cannot run on ``model``: raised before any work is done."""
    if method == "diffusion":
        _diffusion_model(model)


def _diffusion_model(model: ImageModel) -> DiffusionModel:
    if not isinstance(model, DiffusionModel):
        kind = "an autoencoder" if model.has_decoder else "an encoder without a decoder"
        raise ForwardguardError(
            f"the diffusion attack needs a Stable Diffusion model; {model.spec!r} is {kind} (use --method encoder)"
        )
    return model


def _per_image_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(dim=1)


def _region_mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error over the region where ``weights`` (N, 1, H, W: 1 / area inside, 0 outside) is set."""
    return ((a - b).pow(2) * weights).flatten(1).sum(dim=1) / a.shape[1]


def _region_weights(sizes: Sequence[Size], shape: Size, device: torch.device) -> torch.Tensor:
    """(N, 1, H, W): 1 / (h * w) on each image's top-left (h, w), 0 elsewhere."""
    weights = torch.zeros(len(sizes), 1, *shape, device=device)
    for index, (height, width) in enumerate(sizes):
        weights[index, :, :height, :width] = 1 / (height * width)
    return weights


def encoder_objective(model: ImageModel, targets: torch.Tensor, sizes: Sequence[Size] | None = None) -> Objective:
    """Algorithm 1: ||E(x + delta) - E(x_target)||^2 (mean over latent elements)."""

    with torch.no_grad():
        target_latents = encode(model, targets)
    if sizes is None:
        return lambda images: _per_image_mse(encode(model, images), target_latents)
    factor = targets.shape[-1] // target_latents.shape[-1]  # the encoder's downsampling
    latent_sizes = [(-(-height // factor), -(-width // factor)) for height, width in sizes]
    weights = _region_weights(latent_sizes, (target_latents.shape[-2], target_latents.shape[-1]), target_latents.device)
    return lambda images: _region_mse(encode(model, images), target_latents, weights)


def diffusion_objective(
    model: ImageModel,
    targets: torch.Tensor,
    settings: EditSettings,
    masks: torch.Tensor | None = None,
    noise_draws: int = 1,
    sizes: Sequence[Size] | None = None,
) -> Objective:
    """Algorithm 2: ||f(x + delta) - x_target||^2, f the whole img2img (or, with masks, inpainting) edit.

    With ``noise_draws`` > 1 the loss is averaged over that many edits with seeds
    ``settings.seed``, ``settings.seed + 1``, ... (an expectation over the edit's noise).
    """
    model = _diffusion_model(model)
    size = (targets.shape[-2], targets.shape[-1])
    padded_masks = None if masks is None else pad_to_multiple(masks, model.edit_multiple)[0]
    weights = None if sizes is None else _region_weights(sizes, size, targets.device)

    def edit(images: torch.Tensor, seed: int) -> torch.Tensor:
        draw = replace(settings, seed=seed)

        def run(padded: torch.Tensor) -> torch.Tensor:
            return img2img(model, padded, draw) if padded_masks is None else inpaint(model, padded, padded_masks, draw)

        return run_padded(run, images, model.edit_multiple)

    def loss(edited: torch.Tensor) -> torch.Tensor:
        return _per_image_mse(edited, targets) if weights is None else _region_mse(edited, targets, weights)

    def objective(images: torch.Tensor) -> torch.Tensor:
        losses = [loss(edit(images, settings.seed + draw)) for draw in range(noise_draws)]
        return torch.stack(losses).mean(dim=0)

    return objective
