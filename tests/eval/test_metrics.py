"""Edit-similarity metrics through piq, the latent disruption ratio, relative MSE and summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forwardguard.errors import ForwardguardError
from forwardguard.eval.metric_names import HIGHER_IS_MORE_SIMILAR, METRICS
from forwardguard.eval.metrics import edit_similarity, latent_disruption_ratio, relative_mse, summarize

IDENTICAL = {
    "ssim": 1.0,
    "psnr": 80.0,
    "vifp": 1.0,
    "fsim": 1.0,
    "srsim": 1.0,
    "gmsd": 0.0,
    "vsi": 1.0,
    "dss": 1.0,
    "haarpsi": 1.0,
}


def _photos(photo, size: tuple[int, int]) -> torch.Tensor:
    """Two real photographs at ``size`` (width, height) as a (2, 3, H, W) batch."""
    rgb = np.stack([photo("astronaut", size), photo("chelsea", size)])
    return torch.tensor(rgb, dtype=torch.float32).permute(0, 3, 1, 2) / 255


def _noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + sigma * noise).clamp(0, 1)


def test_every_metric_says_which_way_is_similar():
    assert set(HIGHER_IS_MORE_SIMILAR) == set(METRICS) == set(IDENTICAL)
    assert [name for name, higher in HIGHER_IS_MORE_SIMILAR.items() if not higher] == ["gmsd"]


@pytest.mark.parametrize("size", [(32, 32), (256, 256), (96, 40), (24, 30)], ids=str)
def test_identical_and_noisier_images_at_every_size(size, photo):
    clean = _photos(photo, size)
    # one call: the clean pair, then sigma 0.02 noise, then sigma 0.1 noise, against the clean images
    scores = edit_similarity(torch.cat([clean, _noisy(clean, 0.02), _noisy(clean, 0.1)]), clean.repeat(3, 1, 1, 1))
    assert list(scores) == list(METRICS)
    for name in METRICS:
        assert scores[name].shape == (6,) and torch.isfinite(scores[name]).all(), name
        identical, slightly, very = scores[name].view(3, 2)
        assert torch.allclose(identical, torch.full((2,), IDENTICAL[name]), atol=1e-4), name
        sign = 1 if HIGHER_IS_MORE_SIMILAR[name] else -1
        assert (sign * (identical - slightly) > 0).all(), name
        assert (sign * (slightly - very) > 0).all(), name


def test_scores_are_per_image_and_do_not_depend_on_the_batch(photo):
    clean = _photos(photo, (48, 48))
    edited = torch.cat([clean[:1], _noisy(clean[1:], 0.1)])
    together = edit_similarity(edited, clean)
    alone = edit_similarity(edited[:1], clean[:1])
    for name in METRICS:
        assert together[name][0].item() == pytest.approx(alone[name][0].item(), abs=1e-5), name
        assert together[name][0].item() == pytest.approx(IDENTICAL[name], abs=1e-4), name
    assert together["ssim"][1] < 0.9
    assert together["psnr"][1].item() == pytest.approx(20.4, abs=1.0)  # sigma 0.1 noise, clipped: about 20 dB


def test_inputs_are_clamped(photo):
    clean = _photos(photo, (32, 32))[:1]
    overshoot = clean * 1.5 - 0.25
    clamped = edit_similarity(overshoot.clamp(0, 1), clean)
    for name, score in edit_similarity(overshoot, clean).items():
        assert torch.equal(score, clamped[name]), name


def test_uniform_images_including_black_give_finite_scores():
    black = torch.zeros(1, 3, 48, 48)
    gray = torch.full((1, 3, 48, 48), 0.5)
    # pairs: black with black, gray with gray, black with gray
    scores = edit_similarity(torch.cat([black, gray, black]), torch.cat([black, gray, gray]))
    for name, score in scores.items():
        assert torch.allclose(score[:2], torch.full((2,), IDENTICAL[name]), atol=1e-4), name
        assert torch.isfinite(score[2]), name
    assert scores["psnr"][2].item() == pytest.approx(10 * math.log10(4), abs=1e-3)  # MSE 0.25


def test_mismatched_batches_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        edit_similarity(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 33))
    with pytest.raises(ValueError, match="N, 3, H, W"):
        edit_similarity(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))


def test_latent_disruption_ratio_on_hand_made_latents():
    target = torch.zeros(1, 4, 2, 2)
    clean = torch.stack([torch.full((4, 2, 2), 2.0), torch.full((4, 2, 2), 1.0)])
    immunized = torch.stack([torch.full((4, 2, 2), 1.0), torch.full((4, 2, 2), 1.0)])
    assert latent_disruption_ratio(immunized, clean, target).tolist() == [0.25, 1.0]
    assert latent_disruption_ratio(target.expand(2, -1, -1, -1), clean, target).tolist() == [0.0, 0.0]
    with pytest.raises(ForwardguardError, match=r"clean latent equals the target.*\[1\]"):
        latent_disruption_ratio(immunized, torch.stack([clean[0], target[0]]), target)


def test_relative_mse_on_hand_made_tensors():
    reference = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    estimate = torch.tensor([[3.0, 3.0], [0.0, 0.0]])
    assert relative_mse(estimate, reference).tolist() == pytest.approx([1 / 25, 1.0])
    assert relative_mse(reference, reference).tolist() == [0.0, 0.0]
    with pytest.raises(ForwardguardError, match="all zeros"):
        relative_mse(estimate, torch.zeros(2, 2))


def test_summarize_uses_the_sample_standard_deviation():
    summary = summarize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert summary == {
        "mean": 2.5,
        "std": pytest.approx(math.sqrt(5 / 3)),
        "median": 2.5,
        "p90": pytest.approx(3.7),
        "max": 4.0,
        "n": 4,
    }
    one = pytest.approx(0.7)
    assert summarize(torch.tensor([0.7])) == {"mean": one, "std": 0.0, "median": one, "p90": one, "max": one, "n": 1}
    assert isinstance(summarize(torch.tensor([1.0, 2.0]))["mean"], float)
    with pytest.raises(ValueError, match="empty"):
        summarize(torch.tensor([]))
