"""Model specs: tiny, Stable Diffusion folders, fingerprints, devices, and their errors."""

from __future__ import annotations

import pytest
import torch

from forwardguard.errors import ForwardguardError
from forwardguard.models import load_model, resolve_device
from forwardguard.models.autoencoder import AutoencoderModel
from forwardguard.models.stable_diffusion import DiffusionModel
from forwardguard.models.taesd import save_taesd


def test_tiny_is_a_seeded_stable_diffusion(tiny):
    assert isinstance(tiny, DiffusionModel)
    assert load_model("tiny").fingerprint == tiny.fingerprint
    assert load_model("tiny:1").fingerprint != tiny.fingerprint
    assert tiny.vae_scale_factor == 8
    latents = tiny.encode(torch.rand(1, 3, 48, 80))
    assert latents.shape == (1, 4, 6, 10)
    assert tiny.decode(latents).shape == (1, 3, 48, 80)


def test_stable_diffusion_folder_loads_with_the_same_fingerprint(tiny, tmp_path):
    spec = tiny.save(tmp_path / "sd")
    assert (tmp_path / "sd" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_model(spec)
    assert isinstance(loaded, DiffusionModel)
    assert loaded.fingerprint == tiny.fingerprint
    images = torch.rand(1, 3, 32, 32)
    assert torch.allclose(loaded.encode(images), tiny.encode(images))


def test_gradient_checkpointing_gives_the_same_gradients(taef2_spec):
    images = torch.rand(1, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        model = load_model(taef2_spec)
        model.latent_encoder.requires_grad_(True)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.encode(images).pow(2).mean().backward()
        grads.append(model.encoder[0].weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_missing_model_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ForwardguardError) as error:
        load_model("no-such-owner/no-such-model")
    message = str(error.value)
    assert "'no-such-owner/no-such-model' is not in the local Hugging Face cache" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty model spec"),
        ("tiny:x", "model spec 'tiny:x': tiny takes a non-negative integer seed, as in tiny:3"),
        ("tiny:-1", "model spec 'tiny:-1': tiny takes a non-negative integer seed"),
        ("taesd:", r"malformed TAESD spec \(expected taesd:ENCODER\[:DECODER\] or taesd:DIR\): 'taesd:'"),
    ],
)
def test_malformed_specs_are_refused(spec, message):
    with pytest.raises(ForwardguardError, match=message):
        load_model(spec)


def test_fingerprint_ignores_the_storage_dtype_but_not_the_weights(taef2, taef2_spec, tmp_path):
    assert isinstance(taef2, AutoencoderModel)
    assert load_model(taef2.save(tmp_path / "fp32")).fingerprint == taef2.fingerprint
    changed = load_model(taef2_spec)
    with torch.no_grad():
        changed.encoder[0].weight[0, 0, 0, 0] += 1e-3
    save_taesd(changed.encoder, changed.decoder, tmp_path / "changed")
    assert load_model(f"taesd:{tmp_path / 'changed'}").fingerprint != taef2.fingerprint


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ForwardguardError, match=r"unknown device 'gpu-please' \(use auto, cpu or cuda\)"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ForwardguardError, match="CUDA is not available"):
            resolve_device("cuda")
