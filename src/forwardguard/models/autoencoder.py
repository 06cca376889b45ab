"""An autoencoder-only model (the TAESD family): its "edit" is the reconstruction D(E(x)).

Without a decoder (``taesd:ENCODER``, e.g. the TAESANA encoder, of which no decoder exists here) the
model is encoder-only: it has latents, and so the encoder attack, planting and the eval's latent
figures, but no edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from forwardguard.errors import ForwardguardError
from forwardguard.models.base import ImageModel

if TYPE_CHECKING:
    from forwardguard.models.taesd import TAEEncoder, TAESDDecoder


class AutoencoderModel(ImageModel):
    """A TAESD-family encoder, with its decoder when one was given. Images in [0, 1], no scaling.

    ``encode_multiple`` is the encoder's downsampling: 8, or 32 for TAESANA.
    """

    def __init__(self, spec: str, encoder: TAEEncoder, decoder: TAESDDecoder | None) -> None:
        super().__init__(spec)
        self.encoder = encoder
        self.decoder = decoder
        self.encode_multiple = encoder.downsampling

    @property
    def latent_encoder(self) -> nn.Module:
        return self.encoder

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            raise ForwardguardError(f"model {self.spec!r} has no decoder: give one as taesd:ENCODER:DECODER")
        return self.decoder(latents).clamp(0, 1)

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    def modules(self) -> dict[str, nn.Module]:
        parts: dict[str, nn.Module] = {"encoder": self.encoder}
        if self.decoder is not None:
            parts["decoder"] = self.decoder
        return parts

    def enable_gradient_checkpointing(self) -> None:
        self.encoder.gradient_checkpointing = True

    def save(self, out_dir: Path) -> str:
        """``out_dir/encoder.safetensors`` (and ``decoder.safetensors``) with the original keys."""
        from forwardguard.models.taesd import save_taesd

        save_taesd(self.encoder, self.decoder, out_dir)
        return f"taesd:{out_dir}"
