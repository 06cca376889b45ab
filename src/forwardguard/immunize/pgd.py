"""The one projected-gradient loop that every attack uses, and the 8-bit quantization after it.

An objective maps a batch of images (NCHW in [0, 1]) to one loss per image; the loop minimises it
under an L-inf budget. The budget is enforced here, in one place: after every step, and again on
the integer delta that is written, where a violation raises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Objective = Callable[[torch.Tensor], torch.Tensor]


def pgd(
    images: torch.Tensor,
    objective: Objective,
    *,
    eps: float,
    step_size: float,
    steps: int,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Minimise ``objective(images + delta)`` over ||delta||_inf <= eps with signed gradient steps.

    This is the paper's algorithms 1 and 2: delta starts at zero, steps by ``step_size`` against the
    sign of the gradient, and is projected on the eps-ball and the valid pixel range after each step.
    Losses of a batch are summed, so each image's delta follows its own gradient.
    """
    delta = torch.zeros_like(images, requires_grad=True)
    for _ in range(steps):
        loss = objective(images + delta).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= step_size * grad.sign()
            delta.clamp_(-eps, eps)
            delta.copy_((images + delta).clamp(0, 1) - images)
        if on_step is not None:
            on_step()
    return delta.detach()


def budget_255(eps: float) -> int:
    """The largest integer change of an 8-bit pixel value that the budget ``eps`` allows."""
    return int(eps * 255 + 1e-6)


def quantize(clean_255: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """The integer delta that an 8-bit image can carry: rounded, within the budget and the pixel range.

    ``clean_255`` holds the clean image's integer values (as a float tensor); the result is the
    written image minus the clean image, so that clean = immunized - delta exactly.
    """
    limit = budget_255(eps)
    steps = torch.round(delta * 255).clamp(-limit, limit)
    immunized = (clean_255 + steps).clamp(0, 255)
    delta_255 = immunized - clean_255
    if delta_255.abs().max() > limit:
        raise AssertionError(f"quantized delta exceeds the budget of {limit}/255")
    return delta_255
