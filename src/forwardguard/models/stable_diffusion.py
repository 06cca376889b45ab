"""Stable Diffusion models: the components of the img2img and inpainting pipelines.

Loaded from a local diffusers folder or a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``),
or built from configs by :mod:`forwardguard.models.tiny`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forwardguard.errors import ForwardguardError
from forwardguard.models.base import ImageModel


class VAELatentMean(nn.Module):
    """image in [0, 1] -> the mean of the VAE's latent distribution (``vae.encode(2x - 1).latent_dist.mean``).

    Holds the VAE's own encoder and quant_conv, so that training it trains the VAE.
    """

    def __init__(self, encoder: nn.Module, quant_conv: nn.Module | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.quant_conv = quant_conv if quant_conv is not None else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(images * 2 - 1))
        return moments.chunk(2, dim=1)[0]


@dataclass
class DiffusionComponents:
    # diffusers' and transformers' classes (an optional extra, imported when loaded): AutoencoderKL,
    # UNet2DConditionModel, CLIPTextModel, CLIPTokenizer and a scheduler; their configs' attributes are dynamic.
    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


class DiffusionModel(ImageModel):
    """A latent diffusion model. ``encode`` is the VAE latent distribution's mean (unscaled);
    planting trains the VAE's encoder and quant_conv."""

    def __init__(self, spec: str, components: DiffusionComponents) -> None:
        super().__init__(spec)
        self.vae = components.vae
        self.unet = components.unet
        self.text_encoder = components.text_encoder
        self.tokenizer = components.tokenizer
        self.scheduler = components.scheduler
        self._latent_encoder = VAELatentMean(self.vae.encoder, self.vae.quant_conv)
        for module in self.modules().values():
            module.eval().requires_grad_(False)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def encode_multiple(self) -> int:  # type: ignore[override]
        return self.vae_scale_factor

    @property
    def edit_multiple(self) -> int:
        """Image sides must be multiples of this for an edit: the VAE's and the UNet's downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_encoder(self) -> nn.Module:
        return self._latent_encoder

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode(latents).sample + 1) / 2).clamp(0, 1)

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae, "unet": self.unet, "text_encoder": self.text_encoder}

    def enable_gradient_checkpointing(self) -> None:
        self.vae.enable_gradient_checkpointing()

    def save(self, out_dir: Path) -> str:
        """A diffusers folder (``save_pretrained`` with safetensors) that loads as the spec ``out_dir``."""
        from diffusers import StableDiffusionPipeline

        pipeline = StableDiffusionPipeline(
            vae=self.vae,
            unet=self.unet,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.save_pretrained(out_dir, safe_serialization=True)  # type: ignore[attr-defined]  # diffusers: a mixin method
        return str(out_dir)


def load_stable_diffusion(spec: str) -> DiffusionModel:
    """Load a Stable Diffusion checkpoint (local diffusers folder or hub id) in float32."""
    if not Path(spec).is_dir():
        check_hub_model(spec)
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled

    if are_progress_bars_disabled():  # diffusers' bars follow the hub's switch (HF_HUB_DISABLE_PROGRESS_BARS)
        diffusers_logging.disable_progress_bar()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            spec, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ForwardguardError(
            f"model {spec!r} not found: not a local diffusers folder, and not loadable from the hub ({reason})"
        ) from error
    components = DiffusionComponents(
        vae=pipe.vae, unet=pipe.unet, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, scheduler=pipe.scheduler
    )
    return DiffusionModel(spec, components)


def check_hub_model(spec: str) -> None:
    """Fail at once, in one line, for a hub id that can't be loaded: not in the local Hugging Face cache and
    the hub offline, unreachable or without it (diffusers would retry for half a minute and end in a
    traceback). A cached model, or one the hub has, passes."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        if huggingface_hub.try_to_load_from_cache(spec, "model_index.json") is not None:
            return
    except HFValidationError:
        raise ForwardguardError(
            f"model {spec!r}: no such folder, and not a hub id (a model spec is a diffusers folder, a hub id,"
            " taesd:ENCODER[:DECODER] or tiny)"
        ) from None
    if constants.HF_HUB_OFFLINE:
        raise ForwardguardError(f"model {spec!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        huggingface_hub.model_info(spec, timeout=10)
    except RepositoryNotFoundError:
        raise ForwardguardError(f"model {spec!r}: no such local folder, and no such model on the hub") from None
    except Exception as error:  # noqa: BLE001 (any network failure means the same to the user)
        raise ForwardguardError(
            f"model {spec!r} is not in the local Hugging Face cache and the hub is unreachable ({type(error).__name__});"
            " download it where there is a network, or give a local folder, taesd:ENCODER[:DECODER] or tiny"
        ) from None
