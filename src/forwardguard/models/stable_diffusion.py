"""Stable Diffusion models: the components of the img2img and inpainting pipelines.

Loaded from a local diffusers folder or a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``),
or built from configs by :mod:`forwardguard.models.tiny`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    vae: nn.Module
    unet: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler: object


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
            vae=self.vae, unet=self.unet, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            scheduler=self.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipeline.save_pretrained(out_dir, safe_serialization=True)
        return str(out_dir)


def load_stable_diffusion(spec: str) -> DiffusionModel:
    """Load a Stable Diffusion checkpoint (local diffusers folder or hub id) in float32."""
    from diffusers import StableDiffusionPipeline

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
