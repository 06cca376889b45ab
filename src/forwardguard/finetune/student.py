"""The trained module of a planting without ``unet_lora``: the base's latent encoder."""

from __future__ import annotations

import torch
from torch import nn


class EncoderStudent(nn.Module):
    """The latent encoder, called once per step on the step's crops and once on its large crops (config
    ``large_batch_size``), inside one forward: the two batches keep their own sizes while DDP and
    DeepSpeed see one forward per backward (as :class:`forwardguard.finetune.lora.LoRAStudent`)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor, large: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encoder(images), None if large is None else self.encoder(large)
