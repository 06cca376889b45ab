"""What every loaded model offers the attacks, the planting and the eval: an image encoder.

Images are NCHW float tensors in [0, 1] everywhere in forwardguard; each model converts to its own
range inside ``encode`` and ``decode``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from forwardguard.models.fingerprint import fingerprint_modules


class ImageModel(ABC):
    """A loaded model: the spec it came from, its fingerprint, and its image encoder (and decoder).

    ``fingerprint`` is the sha256 of its weights: the model's version everywhere in forwardguard.
    """

    #: Height and width must be multiples of this for ``encode`` (inputs are padded to it).
    encode_multiple: int = 8

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._fingerprint: str | None = None

    @property
    @abstractmethod
    def latent_encoder(self) -> nn.Module:
        """The module that maps images (NCHW in [0, 1]) to latents: what planting trains.

        It shares its parameters with the model, so training it changes the model.
        """

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents of ``images`` (NCHW in [0, 1]); differentiable."""
        return self.latent_encoder(images)

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from latents; differentiable."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The model's named parts: what the fingerprint covers and what ``to`` moves."""

    @abstractmethod
    def enable_gradient_checkpointing(self) -> None:
        """Trade compute for memory when training the latent encoder."""

    @abstractmethod
    def save(self, out_dir: Path) -> str:
        """Write the model in its own format to ``out_dir`` (safetensors); return the spec that loads it."""

    @property
    def has_decoder(self) -> bool:
        return True

    @property
    def fingerprint(self) -> str:
        """sha256 of the weights, computed once (the weights of a loaded model do not change)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_modules(self.modules())
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        module = next(iter(self.modules().values()))
        return next(module.parameters()).device

    def to(self, device: torch.device | str) -> ImageModel:
        for module in self.modules().values():
            module.to(device)
        return self

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """D(E(x)): what an autoencoder-only model's "edit" is."""
        return self.decode(self.encode(images))
