"""The differentiable img2img and inpainting edits on tiny: determinism, gradients, checkpointing."""

from __future__ import annotations

import pytest
import torch

from forwardguard.models.edits import EditSettings, img2img, inpaint
from forwardguard.models.stable_diffusion import DiffusionModel


def run_edit(model, kind: str, images: torch.Tensor, settings: EditSettings) -> torch.Tensor:
    if kind == "img2img":
        return img2img(model, images, settings)
    masks = torch.zeros(images.shape[0], 1, *images.shape[-2:])
    masks[..., 8:24, 8:24] = 1
    return inpaint(model, images, masks, settings)


@pytest.fixture(scope="module")
def tiny_inpainting(tiny) -> DiffusionModel:
    """tiny with a 9-channel UNet, the layout of the real inpainting checkpoints."""
    from diffusers import UNet2DConditionModel

    from forwardguard.models.stable_diffusion import DiffusionComponents

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**tiny.unet.config, "in_channels": 9})
    components = DiffusionComponents(tiny.vae, unet, tiny.text_encoder, tiny.tokenizer, tiny.scheduler)
    return DiffusionModel("tiny-inpainting", components)


@pytest.mark.parametrize("kind", ["img2img", "inpaint"])
def test_edit_is_deterministic_in_its_seed(tiny, kind):
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    settings = EditSettings(prompt="a dog", steps=4, strength=0.75, seed=5)
    with torch.no_grad():
        first, second = run_edit(tiny, kind, images, settings), run_edit(tiny, kind, images, settings)
        other = run_edit(tiny, kind, images, EditSettings(prompt="a dog", steps=4, strength=0.75, seed=6))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert first.shape == images.shape and 0 <= first.min() and first.max() <= 1


@pytest.mark.parametrize("kind", ["img2img", "inpaint"])
def test_an_image_is_edited_the_same_alone_as_in_a_batch(tiny, kind):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    settings = EditSettings(prompt="a dog", steps=4, strength=0.75, seed=5)
    with torch.no_grad():
        batched = run_edit(tiny, kind, images, settings)
        alone = torch.cat([run_edit(tiny, kind, images[i : i + 1], settings) for i in range(3)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "model_name, kind, strength, steps_run",
    [("tiny", "img2img", 1.0, 5), ("tiny", "inpaint", 0.8, 4), ("tiny_inpainting", "inpaint", 1.0, 5)],
)
def test_gradient_reaches_the_input_through_every_denoising_step(request, model_name, kind, strength, steps_run):
    """A hook on each UNet call's input records whether the gradient flowed back through it."""
    model = request.getfixturevalue(model_name)
    reached: dict[int, float] = {}
    calls = {"count": 0}
    original = model.unet.forward

    def spy(sample, timestep, *args, **kwargs):
        calls["count"] += 1
        if sample.requires_grad and torch.is_grad_enabled():
            key = int(timestep)
            sample.register_hook(lambda grad: reached.__setitem__(key, float(grad.abs().sum())))
        return original(sample, timestep, *args, **kwargs)

    model.unet.forward = spy
    try:
        images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        settings = EditSettings(prompt="a cat", steps=5, strength=strength, seed=2)
        edited = run_edit(model, kind, images, settings)
        forward_calls = calls["count"]
        edited.pow(2).mean().backward()
    finally:
        model.unet.forward = original
    assert forward_calls == steps_run
    assert calls["count"] == 2 * steps_run, "each step is recomputed once in the backward pass (checkpointing)"
    assert len(reached) == steps_run and all(value > 0 for value in reached.values()), reached
    assert images.grad is not None and images.grad.abs().sum() > 0
