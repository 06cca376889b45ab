"""The edit each model is judged by: img2img and inpainting for Stable Diffusion, D(E(x)) for an autoencoder.

Every edit takes one image (1, 3, H, W) of any size, pads it to what the model needs and crops the
result back, and is deterministic in its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from forwardguard.immunize.images import crop_to, pad_to_multiple
from forwardguard.models.base import ImageModel
from forwardguard.models.edits import EditSettings, img2img, inpaint
from forwardguard.models.stable_diffusion import DiffusionModel

Edit = Callable[[torch.Tensor, EditSettings], torch.Tensor]


def center_mask(images: torch.Tensor) -> torch.Tensor:
    """The default inpainting mask: the central half of each side (a quarter of the area) is repainted."""
    height, width = images.shape[-2:]
    mask = torch.zeros(images.shape[0], 1, height, width, device=images.device)
    mask[..., height // 4 : height - height // 4, width // 4 : width - width // 4] = 1
    return mask


def model_edits(model: ImageModel) -> dict[str, Edit]:
    """The named edits of a model, in report order."""
    if isinstance(model, DiffusionModel):
        multiple = model.edit_multiple

        def run_img2img(images: torch.Tensor, settings: EditSettings) -> torch.Tensor:
            padded, size = pad_to_multiple(images, multiple)
            return crop_to(img2img(model, padded, settings), size)

        def run_inpaint(images: torch.Tensor, settings: EditSettings) -> torch.Tensor:
            padded, size = pad_to_multiple(images, multiple)
            masks = pad_to_multiple(center_mask(images), multiple)[0]
            return crop_to(inpaint(model, padded, masks, replace(settings, strength=1.0)), size)  # from noise, as the paper

        return {"img2img": run_img2img, "inpaint": run_inpaint}

    def reconstruction(images: torch.Tensor, settings: EditSettings) -> torch.Tensor:
        padded, size = pad_to_multiple(images, model.encode_multiple)
        return crop_to(model.reconstruct(padded), size)

    return {"reconstruction": reconstruction} if model.has_decoder else {}


def encode(model: ImageModel, images: torch.Tensor) -> torch.Tensor:
    """Latents of images of any size (padded to the encoder's multiple)."""
    return model.encode(pad_to_multiple(images, model.encode_multiple)[0])
