"""The attacks on real TAEF2 weights and on tiny: the paper's claims, budgets, sizes and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forwardguard.errors import ForwardguardError
from forwardguard.images import LoadedImage, read_image
from forwardguard.immunize import AttackSettings, immunize
from forwardguard.models.edits import EditSettings


def loaded(rgb: np.ndarray, alpha: np.ndarray | None = None) -> LoadedImage:
    return LoadedImage(rgb=rgb, alpha=alpha, path=None)


def disruption_ratio(model, clean: np.ndarray, immunized: np.ndarray) -> float:
    """||E(x_imm) - E(gray)||^2 / ||E(x) - E(gray)||^2, computed here independently of the attack code."""

    def encode(rgb: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return model.encode(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255)

    with torch.no_grad():
        gray = model.encode(torch.full((1, 3, *clean.shape[:2]), 0.5))
    return float((encode(immunized) - gray).pow(2).sum() / (encode(clean) - gray).pow(2).sum())


def test_encoder_attack_on_taef2_disrupts_the_latent_and_noise_does_not(taef2, photo):
    clean = photo("astronaut", (128, 128))
    attacked = immunize([loaded(clean)], taef2, AttackSettings(method="encoder", steps=60))[0]
    noise = immunize([loaded(clean)], taef2, AttackSettings(method="noise"))[0]
    encoder_ratio = disruption_ratio(taef2, clean, attacked.rgb)
    noise_ratio = disruption_ratio(taef2, clean, noise.rgb)
    assert encoder_ratio < 0.4, encoder_ratio
    assert noise_ratio > 0.85, noise_ratio
    assert attacked.loss_ratio == pytest.approx(encoder_ratio, rel=1e-3)  # the reported loss is the 8-bit image's
    for result in (attacked, noise):
        assert result.linf_255 <= 16
        assert np.array_equal(result.rgb.astype(np.int16) - result.delta, clean)


def test_non_square_image_keeps_its_size_and_budget(taef2, photo):
    clean = photo("coffee", (203, 131))
    result = immunize([loaded(clean)], taef2, AttackSettings(steps=5, eps=8 / 255))[0]
    assert result.rgb.shape == clean.shape
    assert np.abs(result.rgb.astype(int) - clean).max() == 8
    assert result.loss_after < result.loss_before


def test_the_same_seed_gives_the_same_bytes(taef2, photo):
    clean = photo("chelsea", (64, 48))
    settings = AttackSettings(steps=3)
    first, second = (immunize([loaded(clean)], taef2, settings)[0] for _ in range(2))
    assert np.array_equal(first.rgb, second.rgb)
    noise = [immunize([loaded(clean)], taef2, AttackSettings(method="noise", seed=s))[0].rgb for s in (1, 1, 2)]
    assert np.array_equal(noise[0], noise[1]) and not np.array_equal(noise[0], noise[2])


def test_batch_of_images_attacks_each_on_its_own(taef2, photo):
    images = [loaded(photo(name, (32, 32))) for name in ("astronaut", "coffee")]
    settings = AttackSettings(steps=4)
    batched = immunize(images, taef2, settings)
    alone = [immunize([image], taef2, settings)[0] for image in images]
    for a, b in zip(batched, alone):
        assert a.loss_before == pytest.approx(b.loss_before, rel=1e-4)
        assert a.loss_after == pytest.approx(b.loss_after, rel=0.05)  # float reordering may flip a sign step


@pytest.mark.parametrize("with_mask", [False, True], ids=["img2img", "inpainting"])
def test_diffusion_attack_lowers_its_own_objective(tiny, photo, with_mask):
    clean = photo("astronaut", (40, 24))  # not a multiple of the UNet's 16: padded and cropped back
    mask = None
    if with_mask:
        mask = np.zeros((24, 40), dtype=np.float32)
        mask[4:20, 8:32] = 1
    settings = AttackSettings(
        method="diffusion",
        steps=8,
        eps=16 / 255,
        edit=EditSettings(prompt="a portrait", strength=0.8, steps=4, seed=3),
    )
    result = immunize([loaded(clean)], tiny, settings, masks=None if mask is None else [mask])[0]
    assert result.rgb.shape == clean.shape
    assert result.linf_255 <= 16
    assert result.loss_after < result.loss_before


def test_alpha_is_returned_unchanged(tiny, photo):
    alpha = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    result = immunize([loaded(photo("astronaut", (16, 16)), alpha)], tiny, AttackSettings(steps=1))[0]
    assert result.alpha is alpha


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "blur"}, "unknown method 'blur'"),
        ({"eps": 0.0}, "eps must be in"),
        ({"eps": 1.5}, "eps must be in"),
        ({"eps": 0.5 / 255}, "below 1/255"),
        ({"step_size": -1.0}, "step size"),
        ({"edit": EditSettings(strength=0)}, "strength"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ForwardguardError, match=message):
        AttackSettings(**kwargs)


def test_diffusion_attack_needs_a_diffusion_model(taef2, photo):
    with pytest.raises(ForwardguardError, match="needs a Stable Diffusion model"):
        immunize([loaded(photo("astronaut", (16, 16)))], taef2, AttackSettings(method="diffusion", steps=1))


def test_written_file_holds_the_budget(tmp_path, taef2, photo):
    from PIL import Image

    from forwardguard.immunize import RunOptions, immunize_files

    clean = photo("astronaut", (72, 40))
    Image.fromarray(clean).save(tmp_path / "in.png")
    report = immunize_files([tmp_path / "in.png"], taef2, AttackSettings(steps=4), RunOptions(out_dir=tmp_path / "out"))
    assert not report.failed
    written = read_image(tmp_path / "out" / "in.png").rgb
    assert written.shape == clean.shape
    assert np.abs(written.astype(int) - clean).max() <= 16
