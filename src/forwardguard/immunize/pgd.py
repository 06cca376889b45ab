"""The one projected-gradient loop that every attack uses, and the 8-bit quantization after it.

An objective maps a batch of images (NCHW in [0, 1]) to one loss per image; the loop minimises it
under an L-inf budget. The budget is enforced here, in one place: after every step, and again on
the integer delta that is written, where a violation raises. How delta moves each step is a step
rule (:mod:`forwardguard.immunize.step_rules`).

No host-device synchronisation happens between two early-stopping checks: every per-step quantity
(losses, the best iterate, the per-image "done" mask, step sizes) stays a device tensor and is
combined with ``torch.where``, the step schedule is computed from the Python step index, and the
only read-back to the host (``bool(done.all())``) happens once every ``check_every`` steps, and only
when an early-stopping target is set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from forwardguard import interrupt
from forwardguard.immunize.step_rules import DEFAULT_RULE, make_rule
from forwardguard.measures import budget_255

Objective = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EarlyStop:
    """Stop an image once its loss is at most ``target_loss``, or ``target_ratio`` times its loss at delta 0.

    With both, whichever is reached first. The batch ends when every image is done, which is
    checked every ``check_every`` steps (the only host-device synchronisation of the loop).
    """

    target_loss: float | None = None
    target_ratio: float | None = None
    check_every: int = 10

    def thresholds(self, initial_loss: torch.Tensor) -> torch.Tensor:
        threshold = torch.full_like(initial_loss, float("-inf"))
        if self.target_loss is not None:
            threshold = threshold.clamp_min(self.target_loss)
        if self.target_ratio is not None:
            threshold = torch.maximum(threshold, self.target_ratio * initial_loss)
        return threshold


@dataclass
class PGDResult:
    """The returned delta (the best iterate, or the last for rules that keep no best), and per image:
    ``loss``, the loop's loss of that delta (NaN for rules that keep no best: the last iterate is not
    scored); ``steps_run``, the steps taken before the image was done (all of them without a stop)."""

    delta: torch.Tensor
    loss: torch.Tensor
    steps_run: torch.Tensor


def run_pgd(
    images: torch.Tensor,
    objective: Objective,
    *,
    eps: float,
    step_size: float,
    steps: int,
    rule: str = DEFAULT_RULE,
    stop: EarlyStop | None = None,
    region: torch.Tensor | None = None,
    on_step: Callable[[], None] | None = None,
) -> PGDResult:
    """Minimise ``objective(images + delta)`` over ||delta||_inf <= eps, pixels in [0, 1].

    delta starts at zero; ``rule`` proposes each step from the gradient of the summed losses (so each
    image follows its own gradient) and the loop projects it on the eps-ball and the pixel range.
    ``region`` (N, 1, H, W) in {0, 1} keeps delta at zero outside each image's real pixels (a padded
    bucket). With ``stop``, an image that reached its target is frozen at that iterate.
    """
    step_rule = make_rule(rule, eps=eps, step_size=step_size)
    count = images.shape[0]
    delta = torch.zeros_like(images)
    best_delta = torch.zeros_like(images)
    best_loss = torch.full((count,), float("inf"), device=images.device)
    steps_run = torch.zeros(count, dtype=torch.long, device=images.device)
    done = torch.zeros(count, dtype=torch.bool, device=images.device)
    threshold = None

    for index in range(steps):
        interrupt.checkpoint()
        delta.requires_grad_(True)
        loss = objective(images + delta)
        interrupt.checkpoint()
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        delta, loss = delta.detach(), loss.detach().float()
        with torch.no_grad():
            if step_rule.keeps_best:
                best_loss, best_delta = _keep_best(loss, delta, best_loss, best_delta)
            if stop is not None:
                if threshold is None:
                    threshold = stop.thresholds(loss)
                done = done | (loss <= threshold)
            steps_run = steps_run + (~done).long()
            proposed = step_rule.step(delta, grad, best_delta if step_rule.keeps_best else delta)
            proposed = proposed.clamp(-eps, eps)
            proposed = (images + proposed).clamp(0, 1) - images
            if region is not None:
                proposed = proposed * region
            delta = proposed if stop is None else torch.where(_per_image(done), delta, proposed)
        if on_step is not None:
            on_step()
        if stop is not None and (index + 1) % stop.check_every == 0 and bool(done.all()):
            break

    if not step_rule.keeps_best:
        return PGDResult(delta=delta, loss=torch.full_like(best_loss, float("nan")), steps_run=steps_run)
    with torch.no_grad():  # the last step's result has not been scored yet
        loss = objective(images + delta).float()
        best_loss, best_delta = _keep_best(loss, delta, best_loss, best_delta)
    return PGDResult(delta=best_delta, loss=best_loss, steps_run=steps_run)


def _per_image(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


def _keep_best(
    loss: torch.Tensor, delta: torch.Tensor, best_loss: torch.Tensor, best_delta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    better = loss < best_loss
    return torch.where(better, loss, best_loss), torch.where(_per_image(better), delta, best_delta)


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
