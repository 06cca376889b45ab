"""Step rules and early stopping: the paper rule bit for bit, the default rule faster, no read-back per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forwardguard.errors import ForwardguardError
from forwardguard.images import LoadedImage
from forwardguard.immunize import AttackSettings, immunize
from forwardguard.immunize.objectives import encoder_objective
from forwardguard.immunize.pgd import EarlyStop, quantize, run_pgd
from forwardguard.immunize.step_rules import DEFAULT_RULE, STEP_RULES
from forwardguard.models.buckets import Bucket


def paper_pgd_as_it_was(images, objective, *, eps, step_size, steps):
    """forwardguard's loop before step rules existed, verbatim: what ``--step-rule paper`` must reproduce."""
    delta = torch.zeros_like(images, requires_grad=True)
    for _ in range(steps):
        loss = objective(images + delta).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= step_size * grad.sign()
            delta.clamp_(-eps, eps)
            delta.copy_((images + delta).clamp(0, 1) - images)
    return delta.detach()


def as_batch(*rgbs: np.ndarray) -> torch.Tensor:
    """The 0..255 batch as immunize builds it (stacked HWC pixels, permuted)."""
    return torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2).float()


def test_paper_rule_reproduces_the_earlier_loop_bit_for_bit(taef2, photo):
    rgbs = [photo("astronaut", (48, 40)), photo("coffee", (48, 40))]
    clean_255 = as_batch(*rgbs)
    objective = encoder_objective(taef2, torch.full_like(clean_255, 0.5))
    kwargs = {"eps": 16 / 255, "step_size": 2 / 255, "steps": 6}
    expected = paper_pgd_as_it_was(clean_255 / 255, objective, **kwargs)
    result = run_pgd(clean_255 / 255, objective, rule="paper", **kwargs)
    assert torch.equal(result.delta, expected)
    assert result.steps_run.tolist() == [6, 6]

    immunized = immunize(
        [LoadedImage(rgb=rgb, alpha=None, path=None) for rgb in rgbs], taef2, AttackSettings(step_rule="paper", steps=6)
    )
    expected_rgb = (clean_255 + quantize(clean_255, expected, 16 / 255)).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    for result_image, rgb in zip(immunized, expected_rgb):
        assert np.array_equal(result_image.rgb, rgb)


def test_default_rule_reaches_the_paper_rules_200_step_loss_in_60_steps(taef2, photo):
    """The issue's target, as losses (not time): 60 steps of the default rule beat 200 of the paper's.

    Measured at 64x64: 0.92 to 0.97 times the paper's loss (at 256x256, see docs/benchmarks.md)."""
    images = [LoadedImage(rgb=photo(name, (64, 64)), alpha=None, path=None) for name in ("astronaut", "coffee")]
    paper = immunize(images, taef2, AttackSettings(step_rule="paper", steps=200))
    fast = immunize(images, taef2, AttackSettings(steps=60))
    assert DEFAULT_RULE != "paper"
    for slow_result, fast_result in zip(paper, fast):
        assert fast_result.loss_after < slow_result.loss_after, (fast_result.loss_after, slow_result.loss_after)
        assert fast_result.linf_255 <= 16


def quadratic(goals: torch.Tensor, weights: torch.Tensor):
    """A smooth objective with a known optimum: per-image weighted distance to ``goals``."""
    return lambda x: (weights.view(-1, 1, 1, 1) * (x - goals).pow(2)).flatten(1).mean(1)


@pytest.mark.parametrize("rule", sorted(STEP_RULES))
def test_every_rule_lowers_the_loss_within_the_budget(rule):
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    objective = quadratic(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.ones(2))
    result = run_pgd(images, objective, eps=0.05, step_size=0.01, steps=20, rule=rule)
    assert (result.delta.abs() <= 0.05 + 1e-7).all()
    assert ((images + result.delta) >= 0).all() and ((images + result.delta) <= 1).all()
    assert (objective(images + result.delta) < objective(images)).all()


def test_default_rule_returns_the_best_iterate():
    images = torch.full((1, 1, 2, 2), 0.5)
    calls = []

    def objective(x):  # the loss rises after the third evaluation, whatever delta does
        calls.append(1)
        return (x - 0.4).pow(2).flatten(1).mean(1) + (0.0 if len(calls) <= 3 else 1.0)

    result = run_pgd(images, objective, eps=0.2, step_size=0.01, steps=10)
    with torch.no_grad():
        third = (images + result.delta - 0.4).pow(2).mean()
    assert result.loss.item() == pytest.approx(third.item())
    assert result.loss.item() < 0.01  # an early iterate, not the last (which scores over 1)


def test_early_stopping_freezes_each_image_at_its_target_and_ends_the_batch():
    images = torch.full((2, 3, 4, 4), 0.5)
    loss = quadratic(torch.zeros_like(images), torch.tensor([1.0, 1.2]))  # 0.25 and 0.3 at delta 0
    calls = []

    def objective(x):
        calls.append(1)
        return loss(x)

    stop = EarlyStop(target_loss=0.225, check_every=2)  # 3 signed steps of 0.01 for image 0, 7 for image 1
    result = run_pgd(images, objective, eps=0.1, step_size=0.01, steps=100, rule="paper", stop=stop)
    assert result.steps_run.tolist() == [3, 7]
    assert len(calls) == 8  # image 1 was seen done at its 8th evaluation, a check step: the batch ended
    final = loss(images + result.delta)
    assert (final <= stop.target_loss + 1e-6).all()
    # frozen: image 0 made exactly the signed steps that reached its target, no more
    assert torch.allclose(result.delta[0], torch.full_like(result.delta[0], -0.03))


def test_target_ratio_is_relative_to_each_images_initial_loss():
    images = torch.full((2, 3, 4, 4), 0.5)
    objective = quadratic(torch.zeros_like(images), torch.tensor([1.0, 100.0]))
    stop = EarlyStop(target_ratio=0.9, check_every=1)
    result = run_pgd(images, objective, eps=0.1, step_size=0.005, steps=100, rule="paper", stop=stop)
    ratio = objective(images + result.delta) / objective(images)
    assert (ratio <= 0.9 + 1e-6).all()
    assert result.steps_run[0] == result.steps_run[1]  # the same relative progress per signed step


class ReadBack(Exception):
    pass


@pytest.fixture()
def forbid_read_back(monkeypatch):
    """Make every tensor -> host read-back raise, except ``bool()``, which is counted."""
    bools = []
    original_bool = torch.Tensor.__bool__

    def refuse(*args, **kwargs):
        raise ReadBack("a tensor was read back to the host")

    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)

    def counted_bool(self):
        bools.append(1)
        return original_bool(self)

    monkeypatch.setattr(torch.Tensor, "__bool__", counted_bool)
    return bools


def bucketed_encoder_objective(model, device: str = "cpu"):
    """Two images of different sizes in one padded bucket, as ``immunize`` attacks them."""
    bucket = Bucket(((16, 16), (9, 14)), multiple=8)
    generator = torch.Generator().manual_seed(0)
    images = bucket.place([torch.rand(3, 16, 16, generator=generator), torch.rand(3, 9, 14, generator=generator)])
    images = images.to(device)
    pad = bucket.padder(torch.device(device))
    objective = encoder_objective(model, pad(torch.full_like(images, 0.5)), bucket.sizes)
    return images, (lambda batch: objective(pad(batch))), bucket.region(torch.device(device))


@pytest.mark.parametrize("rule", sorted(STEP_RULES))
def test_the_loop_reads_nothing_back_between_checks(tiny, forbid_read_back, rule):
    """On the CPU the synchronisation cannot be observed, so every read-back path is made to fail;
    on a GPU, ``test_no_synchronisation_on_cuda`` checks the same with CUDA's own sync debug mode."""
    images, objective, region = bucketed_encoder_objective(tiny)
    run_pgd(images, objective, eps=16 / 255, step_size=2 / 255, steps=6, rule=rule, region=region)
    assert forbid_read_back == []
    stop = EarlyStop(target_ratio=1e-6, check_every=3)  # never reached: the check runs twice in 6 steps
    run_pgd(images, objective, eps=16 / 255, step_size=2 / 255, steps=6, rule=rule, stop=stop, region=region)
    assert len(forbid_read_back) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rule", sorted(STEP_RULES))
def test_no_synchronisation_on_cuda(tiny, rule):
    model = tiny.to("cuda")
    try:
        images, objective, region = bucketed_encoder_objective(model, "cuda")
        kwargs = {"eps": 16 / 255, "step_size": 2 / 255, "rule": rule, "region": region}
        run_pgd(images, objective, steps=2, **kwargs)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            run_pgd(images, objective, steps=5, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        tiny.to("cpu")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"step_rule": "adam"}, "unknown step rule 'adam'"),
        ({"target_loss": -1.0}, "target loss"),
        ({"target_ratio": 0.0}, "target ratio"),
        ({"target_ratio": 1.5}, "target ratio"),
        ({"check_every": 0}, "check every"),
    ],
)
def test_bad_step_settings_are_refused(kwargs, message):
    with pytest.raises(ForwardguardError, match=message):
        AttackSettings(**kwargs)


def test_early_stopping_is_recorded_and_saves_steps(taef2, photo):
    image = [LoadedImage(rgb=photo("chelsea", (64, 64)), alpha=None, path=None)]
    settings = AttackSettings(steps=40, target_ratio=0.8, check_every=5)
    result = immunize(image, taef2, settings)[0]
    assert 0 < result.steps_run < 40
    assert result.loss_ratio < 0.85  # the in-loop target, after 8-bit quantization
    record = settings.as_record()
    assert record["target_ratio"] == 0.8 and record["check_every"] == 5 and record["step_rule"] == DEFAULT_RULE
