"""Images of any size through a model that needs sides of a multiple: pad, run, crop back.

Encoders need sides divisible by 8 (Stable Diffusion UNets by 64). The attacks, the eval's edits and
planting all pad the same way, here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from forwardguard.models.base import ImageModel


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (N, C, H, W) at the bottom and right so that H and W are multiples of ``multiple``.

    The padding mirrors the image (replicates its edge when the image is smaller than the padding), so
    the model sees no hard border; it is differentiable, and the gradient of mirrored pixels reaches the
    real ones. Returns the padded batch and the original (H, W) for ``crop_to``.
    """
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return images, (height, width)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def crop_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo ``pad_to_multiple``: keep the top-left (H, W) of a (..., H', W') tensor."""
    height, width = size
    return images[..., :height, :width]


def run_padded(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, multiple: int) -> torch.Tensor:
    """``run`` (an image-to-image model call) on ``images`` padded to ``multiple``, cropped back to their size."""
    padded, size = pad_to_multiple(images, multiple)
    return crop_to(run(padded), size)


def encode(model: ImageModel, images: torch.Tensor) -> torch.Tensor:
    """Latents of images of any size, padded to the encoder's multiple (the padding's latents included)."""
    return model.encode(pad_to_multiple(images, model.encode_multiple)[0])
