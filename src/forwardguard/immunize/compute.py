"""How an attack uses the hardware: precision, memory format, compilation, attention kernel.

None of these change what is minimised; bf16 changes the arithmetic (the loop's losses and gradients
are bf16-rounded), so the reported losses are always computed in float32 on the 8-bit result. The
defaults are fast on a GPU and exact on the CPU: ``auto`` means bf16 autocast and channels_last on
CUDA, float32 and the default layout elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from forwardguard.errors import ForwardguardError
from forwardguard.models.base import ImageModel

if TYPE_CHECKING:
    from forwardguard.models.stable_diffusion import DiffusionModel

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class ComputeOptions:
    """``precision``: auto, fp32 or bf16 (autocast). ``channels_last``: None means on CUDA only.
    ``compile``: ``torch.compile`` the modules the attack runs (the first batch of each size pays for it)."""

    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ForwardguardError(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype on ``device``, or None for plain float32."""
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return None

    def memory_format(self, device: torch.device) -> torch.memory_format:
        use = self.channels_last if self.channels_last is not None else device.type == "cuda"
        return torch.channels_last if use else torch.contiguous_format


def attack_modules(model: ImageModel, method: str) -> list[nn.Module]:
    """The modules an attack evaluates at every step: the latent encoder, or the whole edit's."""
    if method == "diffusion":
        diffusion = cast("DiffusionModel", model)  # any other model fails here, as the objective refuses it
        return [diffusion.vae, diffusion.unet]
    return [model.latent_encoder]


def prepare_model(model: ImageModel, method: str, options: ComputeOptions) -> None:
    """Put the attacked modules in the chosen memory format, on SDPA attention, compiled if asked.

    Changes the model in place, once: converting or compiling again is a no-op.
    """
    modules = attack_modules(model, method) if method != "noise" else []
    memory_format = options.memory_format(model.device)
    for module in modules:
        if memory_format == torch.channels_last:
            module.to(memory_format=torch.channels_last)
        use_sdpa_attention(module)
        if options.compile and getattr(module, "_compiled_call_impl", None) is None:
            module.compile()


def use_sdpa_attention(module: nn.Module) -> None:
    """Replace diffusers' classic attention processors by the SDPA one (``F.scaled_dot_product_attention``).

    diffusers already uses SDPA by default; this undoes a model that was switched back to the classic
    processor (``set_default_attn_processor``), and leaves any other processor (xformers, IP-adapters) alone.
    """
    processors = getattr(module, "attn_processors", None)
    if not processors:
        return
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if any(type(processor) is AttnProcessor for processor in processors.values()):
        # a diffusers model's method; torch's stubs type an unknown Module attribute as Tensor | Module
        module.set_attn_processor({name: AttnProcessor2_0() if type(p) is AttnProcessor else p for name, p in processors.items()})  # type: ignore[operator]


@contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device``'s type; nothing when ``dtype`` is None."""
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        yield
