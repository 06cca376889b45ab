"""Images of different sizes in one batch: padded like each image alone, scored on its own part."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forwardguard.images import LoadedImage
from forwardguard.immunize import AttackSettings, immunize
from forwardguard.models.buckets import Bucket, group_into_buckets
from forwardguard.models.edits import EditSettings
from forwardguard.models.padding import pad_to_multiple


def loaded(rgb: np.ndarray) -> LoadedImage:
    return LoadedImage(rgb=rgb, alpha=None, path=None)


@pytest.mark.parametrize("size", [(13, 21), (3, 5), (16, 8)], ids=["reflect", "replicate", "exact"])
def test_bucket_padding_starts_as_the_image_alone_is_padded(size):
    height, width = size
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    bucket = Bucket(((height, width), (40, 33)), multiple=8)
    assert bucket.shape == (40, 40)
    batch = bucket.place([image[0], torch.rand(3, 40, 33)])
    padded = bucket.padder(batch.device)(batch)
    alone, _ = pad_to_multiple(image, 8)
    assert torch.equal(padded[0, :, : alone.shape[-2], : alone.shape[-1]], alone[0])
    assert torch.equal(bucket.crop(padded, 1)[:, :40, :33], batch[1, :, :40, :33])


def test_bucket_padding_passes_gradients_to_real_pixels_only():
    bucket = Bucket(((5, 7), (16, 16)), multiple=8)
    batch = bucket.place([torch.rand(3, 5, 7), torch.rand(3, 16, 16)]).requires_grad_(True)
    (grad,) = torch.autograd.grad(bucket.padder(batch.device)(batch).sum(), batch)
    region = bucket.region(batch.device)
    assert (grad[region.expand_as(grad) == 0] == 0).all()
    assert grad[0, 0, :5, :7].sum() == 16 * 16  # every padded pixel comes from a real one
    assert Bucket(((5, 7), (5, 7)), multiple=8).region(torch.device("cpu")) is None


def test_grouping_keeps_one_padded_size_together_unless_asked_to_grow():
    sizes = [(64, 64), (32, 32), (64, 64), (60, 62), (32, 32), (64, 64), (200, 64), (56, 64)]
    batches = group_into_buckets(sizes, batch_size=3, multiple=8)
    assert batches == [[1, 4], [7], [3, 0, 2], [5], [6]]  # 60x62 pads to 64x64 like the 64s; 56x64 does not
    assert group_into_buckets(sizes, batch_size=1, multiple=8) == [[1], [4], [7], [3], [0], [2], [5], [6]]
    grown = group_into_buckets(sizes, batch_size=3, multiple=8, max_growth=1.5)
    assert sorted(i for batch in grown for i in batch) == list(range(len(sizes)))
    assert [7, 3, 0] in grown  # 56x64 may now pad to 64x64
    for batch in grown:
        bucket = Bucket(tuple(sizes[i] for i in batch), multiple=8)
        area = bucket.shape[0] * bucket.shape[1]
        assert all(area <= 1.5 * (-(-h // 8) * 8) * (-(-w // 8) * 8) for h, w in bucket.sizes)


def test_sizes_of_one_padded_size_in_one_batch_match_each_image_alone(taef2, photo):
    rgbs = [photo("astronaut", (64, 64)), photo("coffee", (58, 60)), photo("chelsea", (61, 57))]
    settings = AttackSettings(steps=12)
    batched = immunize([loaded(rgb) for rgb in rgbs], taef2, settings)
    for rgb, result in zip(rgbs, batched):
        alone = immunize([loaded(rgb)], taef2, settings)[0]
        assert result.rgb.shape == rgb.shape
        assert np.array_equal(result.rgb.astype(np.int16) - result.delta, rgb)
        assert result.linf_255 <= 16
        assert result.loss_before == pytest.approx(alone.loss_before, rel=1e-5)
        assert result.loss_after == pytest.approx(alone.loss_after, rel=0.02), (result.loss_after, alone.loss_after)


def test_images_padded_beyond_their_multiple_keep_their_size_and_are_scored_alone(taef2, photo):
    rgbs = [photo("astronaut", (64, 64)), photo("chelsea", (40, 61))]
    settings = AttackSettings(steps=8)
    for rgb, result in zip(rgbs, immunize([loaded(rgb) for rgb in rgbs], taef2, settings)):
        alone = immunize([loaded(rgb)], taef2, AttackSettings(steps=0))[0]
        assert result.rgb.shape == rgb.shape and result.linf_255 <= 16
        assert result.loss_before == pytest.approx(alone.loss_before, rel=1e-5)  # each image's own loss
        assert result.loss_after < 0.7 * result.loss_before


def test_mixed_sizes_diffusion_attack_keeps_sizes_and_lowers_its_objective(tiny, photo):
    rgbs = [photo("astronaut", (40, 24)), photo("coffee", (20, 30))]
    masks = [np.ones((24, 40), dtype=np.float32), np.ones((30, 20), dtype=np.float32)]
    settings = AttackSettings(method="diffusion", steps=4, edit=EditSettings(strength=0.5, steps=2))
    for given in (None, masks):
        results = immunize([loaded(rgb) for rgb in rgbs], tiny, settings, masks=given)
        for rgb, result in zip(rgbs, results):
            assert result.rgb.shape == rgb.shape and result.delta.shape == rgb.shape
            assert result.linf_255 <= 16
            assert result.loss_after < result.loss_before


def test_diffusion_attack_on_a_batch_attacks_each_image_as_alone(tiny, photo):
    """The edit's noise is drawn per image (models/edits.py), so batching does not change an image's attack."""
    rgbs = [photo("astronaut", (32, 32)), photo("coffee", (32, 32))]
    settings = AttackSettings(method="diffusion", steps=3, edit=EditSettings(strength=0.5, steps=2))
    batched = immunize([loaded(rgb) for rgb in rgbs], tiny, settings)
    for rgb, result in zip(rgbs, batched):
        alone = immunize([loaded(rgb)], tiny, settings)[0]
        assert result.loss_before == pytest.approx(alone.loss_before, rel=1e-5)
        assert result.loss_after == pytest.approx(alone.loss_after, rel=1e-3)
        assert np.mean(result.delta != alone.delta) < 0.01
