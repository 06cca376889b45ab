"""The PGD loop and the 8-bit quantization: the budget is enforced in one place."""

from __future__ import annotations

import torch

from forwardguard.immunize.pgd import quantize, run_pgd
from forwardguard.measures import budget_255


def test_pgd_walks_to_the_edge_of_the_ball_towards_the_optimum():
    images = torch.full((2, 3, 4, 4), 0.5)
    goal = torch.zeros_like(images)
    delta = run_pgd(images, lambda x: (x - goal).pow(2).flatten(1).sum(1), eps=0.1, step_size=0.03, steps=10).delta
    assert torch.allclose(delta, torch.full_like(delta, -0.1))


def test_pgd_keeps_pixels_in_range_and_counts_steps():
    images = torch.tensor([0.0, 0.02, 0.98, 1.0]).view(1, 1, 2, 2)
    calls = []
    delta = run_pgd(
        images, lambda x: -(x - 0.5).pow(2).sum((1, 2, 3)), eps=0.05, step_size=0.05, steps=3, on_step=lambda: calls.append(1)
    ).delta
    assert len(calls) == 3
    assert ((images + delta) >= 0).all() and ((images + delta) <= 1).all()
    assert delta.abs().max() <= 0.05 + 1e-7


def test_quantize_rounds_within_budget_and_range():
    clean = torch.tensor([0.0, 10.0, 250.0, 128.0]).view(1, 1, 2, 2)
    delta = torch.tensor([-0.1, 0.031, 0.05, 0.0625]).view(1, 1, 2, 2)
    steps = quantize(clean, delta, 16 / 255)
    assert steps.tolist() == [[[[0.0, 8.0], [5.0, 16.0]]]]
    assert budget_255(16 / 255) == 16 and budget_255(8 / 255) == 8 and budget_255(1.0) == 255
