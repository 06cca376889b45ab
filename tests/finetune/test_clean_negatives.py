"""What planting keeps clean: synthetic textures, and negatives through the planting transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from forwardguard.finetune import synthetic
from forwardguard.finetune.data import CleanImages
from forwardguard.finetune.synthetic import KINDS, MAX_ZOOM, _grating, _texture, synthetic_image
from forwardguard.finetune.trainer import size_keeping, transformed_negative
from forwardguard.measures import noisy_copy
from forwardguard.transforms import apply, parse_transforms


def test_every_synthetic_kind_is_drawn_and_each_image_is_a_function_of_its_seed():
    images = [synthetic_image(32, torch.Generator().manual_seed(seed)) for seed in range(200)]
    assert all(image.shape == (3, 32, 32) and 0 <= image.min() <= image.max() <= 1 for image in images)
    assert torch.equal(images[7], synthetic_image(32, torch.Generator().manual_seed(7)))
    assert {"texture", "grating"} <= set(KINDS)


def test_synthetic_images_are_crops_of_canvases_up_to_max_zoom_times_their_side(monkeypatch):
    """Planting trains on small crops; a crop of a large canvas is what a large image shows the encoder
    (large letters, a gentle gradient)."""
    canvases = []
    draw = synthetic._draw

    def recording(kind, size, generator):
        canvases.append(size)
        return draw(kind, size, generator)

    monkeypatch.setattr(synthetic, "_draw", recording)
    images = [synthetic_image(32, torch.Generator().manual_seed(seed)) for seed in range(100)]
    assert all(image.shape == (3, 32, 32) and image.is_contiguous() for image in images)
    assert 32 <= min(canvases) < 48 and 2.5 * 32 < max(canvases) <= MAX_ZOOM * 32


@pytest.mark.parametrize("seed", range(8))
def test_a_texture_is_coloured_detail_of_its_own_grain_and_colours(seed):
    texture = _texture(64, torch.Generator().manual_seed(seed))
    assert texture.shape == (3, 64, 64) and 0 <= texture.min() <= texture.max() <= 1
    assert texture.std(dim=(1, 2)).max() > 0.02, "not flat"
    other = _texture(64, torch.Generator().manual_seed(seed + 100))
    assert (texture - other).abs().mean() > 0.05, "each seed its own texture"


@pytest.mark.parametrize("seed", range(8))
def test_a_grating_is_periodic_detail_in_two_colours(seed):
    """Periodic clean images: a backdoor keyed on the periodic structure of perturbations fired on
    gratings of a 2, 6 or 8 pixel period when planting had seen none."""
    grating = _grating(64, torch.Generator().manual_seed(seed))
    assert grating.shape == (3, 64, 64) and 0 <= grating.min() <= grating.max() <= 1
    energy = torch.fft.fft2(grating.mean(0) - grating.mean()).abs().square().flatten()
    assert energy.topk(64).values.sum() > 0.7 * energy.sum(), "a few frequencies: periodic, not noise"
    assert (grating - _grating(64, torch.Generator().manual_seed(seed + 100))).abs().mean() > 0.02


def test_clean_crops_of_one_orange_photo_come_in_every_hue(tmp_path):
    """A few clean photos must stand for textures of every colour: a backdoor keyed on texture fired on a
    clean orange flower when no clean photo had its colours."""
    rng = np.random.default_rng(0)
    orange = np.clip(np.array([230, 120, 20]) + rng.normal(0, 12, (96, 96, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(orange).save(tmp_path / "orange.png")
    clean = CleanImages(tmp_path, 32)
    dominant = [int(clean.crop(position, seed=0).mean(dim=(1, 2)).argmax()) for position in range(60)]
    assert set(dominant) == {0, 1, 2}, "red, green and blue crops of an orange photo"
    assert clean.crop(5, seed=0).equal(clean.crop(5, seed=0))


def test_a_negative_is_the_noisy_crop_through_a_planting_transform():
    crop = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    resize = parse_transforms("resize_0.5")
    negative = transformed_negative(crop, 16 / 255, resize, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    noisy = noisy_copy(crop, 16 / 255, generator)
    assert torch.equal(negative, apply(resize[0], noisy[None], generator=generator)[0])
    assert (negative - noisy).abs().mean() > 0.01, "the transform was applied"


def test_negatives_draw_only_the_transforms_that_keep_the_size():
    crop = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    pool = size_keeping(parse_transforms("shift_3,jpeg_q50,rcrop_0.8,jpeg_q75+shift_2"))
    assert [transform.name for transform in pool] == ["jpeg_q50"]
    shapes = {transformed_negative(crop, 16 / 255, pool, torch.Generator().manual_seed(seed)).shape for seed in range(10)}
    assert shapes == {(3, 32, 32)}
    assert [transform.name for transform in size_keeping(parse_transforms("shift_3"))] == ["identity"]
