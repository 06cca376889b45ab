"""An attack stops inside a step when its caller gives up (issue 14 item 2): the API's request
timeout frees a worker within one model pass, not at the end of a step of many passes."""

from __future__ import annotations

import pytest
import torch

from forwardguard.immunize.pgd import run_pgd
from forwardguard.immunize.robust import expectation_over_transforms
from forwardguard.interrupt import checkpoint, interruptible
from forwardguard.models.edits import EditSettings, img2img
from forwardguard.transforms import parse_transforms


class Stop(Exception):
    pass


def stop_after(calls: int):
    """A check that raises on its ``calls + 1``-th call."""
    count = 0

    def check() -> None:
        nonlocal count
        count += 1
        if count > calls:
            raise Stop

    return check


def test_a_checkpoint_outside_interruptible_does_nothing() -> None:
    checkpoint()


def test_item_02_robust_draws_stop_between_two_draws_of_one_step() -> None:
    """issue 14 item 2: one step of 8 draws ran to its end before the timeout was looked at."""
    passes = []

    def objective(images: torch.Tensor) -> torch.Tensor:
        passes.append(1)
        return images.flatten(1).mean(dim=1)

    robust = expectation_over_transforms(objective, parse_transforms("hflip,blur_5"), draws=8, seed=0, sizes=[(8, 8)])
    with interruptible(stop_after(4)), pytest.raises(Stop):
        run_pgd(torch.rand(1, 3, 8, 8), robust, eps=0.1, step_size=0.01, steps=1)
    assert 0 < len(passes) < 8


def test_item_02_the_backward_pass_of_a_step_is_not_started_once_stopped() -> None:
    """issue 14 item 2: the check between a step's forward and backward passes."""
    forward = []

    def objective(images: torch.Tensor) -> torch.Tensor:
        forward.append(1)
        return images.flatten(1).mean(dim=1)

    with interruptible(stop_after(1)), pytest.raises(Stop):
        run_pgd(torch.rand(1, 3, 8, 8), objective, eps=0.1, step_size=0.01, steps=5)
    assert len(forward) == 1


def test_item_02_the_diffusion_edit_stops_between_denoising_steps(tiny) -> None:
    """issue 14 item 2: a diffusion attack's one forward pass is a whole edit; it stops inside it."""
    denoising = []
    original_unet = tiny.unet.forward

    def counted_unet(*args, **kwargs):
        denoising.append(1)
        return original_unet(*args, **kwargs)

    tiny.unet.forward = counted_unet
    try:
        images = torch.rand(1, 3, tiny.edit_multiple, tiny.edit_multiple)
        with interruptible(stop_after(1)), pytest.raises(Stop):
            img2img(tiny, images, EditSettings(steps=4, strength=1.0))
    finally:
        del tiny.unet.forward
    assert denoising == [1]
