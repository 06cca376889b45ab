"""The speed options: defaults exact on the CPU, bf16 and channels_last where asked, SDPA, compile once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forwardguard.errors import ForwardguardError
from forwardguard.images import LoadedImage
from forwardguard.immunize import AttackSettings, immunize
from forwardguard.immunize.compute import ComputeOptions, prepare_model
from forwardguard.models import load_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_bf16_and_channels_last_on_cuda_only():
    auto = ComputeOptions()
    assert auto.autocast_dtype(CPU) is None and auto.memory_format(CPU) == torch.contiguous_format
    assert auto.autocast_dtype(CUDA) == torch.bfloat16 and auto.memory_format(CUDA) == torch.channels_last
    assert ComputeOptions(precision="fp32").autocast_dtype(CUDA) is None
    assert ComputeOptions(precision="bf16").autocast_dtype(CPU) == torch.bfloat16
    assert ComputeOptions(channels_last=False).memory_format(CUDA) == torch.contiguous_format
    with pytest.raises(ForwardguardError, match="unknown precision 'fp16'"):
        ComputeOptions(precision="fp16")


def test_prepare_converts_compiles_once_and_restores_sdpa(monkeypatch):
    from diffusers.models.attention_processor import AttnProcessor2_0

    model = load_model("tiny")
    model.unet.set_default_attn_processor()  # diffusers' classic, non-SDPA attention
    compiled = []
    monkeypatch.setattr(
        torch.nn.Module,
        "compile",
        lambda self, **kwargs: (compiled.append(type(self).__name__), setattr(self, "_compiled_call_impl", self._call_impl)),
    )
    options = ComputeOptions(channels_last=True, compile=True)
    for _ in range(2):
        prepare_model(model, "diffusion", options)
    assert sorted(compiled) == ["AutoencoderKL", "UNet2DConditionModel"]
    assert all(type(p) is AttnProcessor2_0 for p in model.unet.attn_processors.values())
    conv = model.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    prepare_model(model, "encoder", options)
    assert compiled[-1] == "VAELatentMean"


def test_bf16_on_the_cpu_attacks_as_well_and_reports_float32_losses(taef2_spec, photo):
    taef2 = load_model(taef2_spec)  # its own: channels_last converts the model in place
    image = [LoadedImage(rgb=photo("astronaut", (64, 64)), alpha=None, path=None)]
    settings = AttackSettings(steps=10)
    exact = immunize(image, taef2, settings)[0]
    bf16 = immunize(image, taef2, settings, compute=ComputeOptions(precision="bf16", channels_last=True))[0]
    assert bf16.loss_after == pytest.approx(exact.loss_after, rel=0.1)
    assert bf16.loss_before == exact.loss_before  # the reported losses are float32 whatever the precision
    assert np.abs(bf16.rgb.astype(int) - image[0].rgb).max() <= 16


def test_bf16_diffusion_attack_runs_through_the_edit(photo):
    from forwardguard.models.edits import EditSettings

    model = load_model("tiny")
    image = [LoadedImage(rgb=photo("coffee", (32, 32)), alpha=None, path=None)]
    settings = AttackSettings(method="diffusion", steps=4, edit=EditSettings(strength=0.5, steps=2))
    result = immunize(image, model, settings, compute=ComputeOptions(precision="bf16", channels_last=True))[0]
    assert result.loss_after < result.loss_before and result.linf_255 <= 16
