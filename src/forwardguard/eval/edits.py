"""The edit each model is judged by: img2img and inpainting for Stable Diffusion, D(E(x)) for an autoencoder.

Every edit takes one image (1, 3, H, W) of any size, pads it to what the model needs and crops the
result back, and is deterministic in its seed. An encoder-only model (``taesd:ENCODER``) has no edit:
the report says so with :data:`NO_DECODER` where its edit metrics would be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from forwardguard.models.base import ImageModel
from forwardguard.models.edits import EditSettings, img2img, inpaint
from forwardguard.models.padding import pad_to_multiple, run_padded
from forwardguard.models.stable_diffusion import DiffusionModel

Edit = Callable[[torch.Tensor, EditSettings], torch.Tensor]
NO_DECODER = "not computed: no decoder"
"""Why an encoder-only model has no edits, and so no edit metrics."""


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
            return run_padded(lambda padded: img2img(model, padded, settings), images, multiple)

        def run_inpaint(images: torch.Tensor, settings: EditSettings) -> torch.Tensor:
            masks = pad_to_multiple(center_mask(images), multiple)[0]
            from_noise = replace(settings, strength=1.0)  # as the paper
            return run_padded(lambda padded: inpaint(model, padded, masks, from_noise), images, multiple)

        return {"img2img": run_img2img, "inpaint": run_inpaint}

    def reconstruction(images: torch.Tensor, settings: EditSettings) -> torch.Tensor:
        return run_padded(model.reconstruct, images, model.encode_multiple)

    return {"reconstruction": reconstruction} if model.has_decoder else {}


def edits_not_computed(model: ImageModel) -> str | None:
    """Why ``model`` has no edits (:data:`NO_DECODER`), or None when it has them."""
    return None if model.has_decoder else NO_DECODER
