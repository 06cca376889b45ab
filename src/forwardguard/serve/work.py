"""What one request may cost, checked in one place before it is queued.

A request's work is its padded pixels x its PGD steps x its transforms' cost per step. Steps are
bounded by the settings (``max_steps``); this module bounds the rest, from the upload's header
before anything is decoded:

- pixels *after padding* to the model's multiple: a 1 x 62,500 image is padded to 8 x 62,504 and
  costs what a 500,000-pixel image costs, whatever its own pixel count;
- the robust mix's parameters that scale the work, in every step of a chain: a blur's cost grows
  with its kernel's area, and a resize up-scales (4x: 16 times the pixels) before it scales back
  (the crops, shift, rshift and rcrop, only make the image smaller; a chain has at most
  ``forwardguard.transforms.MAX_CHAIN`` steps);
- the robust draws: each is one more model pass per step (``MAX_ROBUST_DRAWS``, the bound of the
  request's ``robust_draws`` field).

With these, one model pass of an accepted request is bounded, and the request timeout interrupts
the work within one pass (:mod:`forwardguard.interrupt`).
"""

from __future__ import annotations

from fastapi import HTTPException, status

from forwardguard.immunize.attack import AttackSettings
from forwardguard.models.buckets import round_up

MAX_ROBUST_DRAWS = 8
MAX_BLUR_KERNEL = 31
MAX_RESIZE_SCALE = 2.0


def check_work(attack: AttackSettings, size: tuple[int, int], *, multiple: int, max_pixels: int) -> None:
    """413 when the image padded to ``multiple`` is over ``max_pixels``; 422 for a robust mix beyond
    the bounds above. ``size`` is (width, height)."""
    width, height = size
    padded = round_up(width, multiple) * round_up(height, multiple)
    if padded > max_pixels:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"image: {width} x {height} is padded to {padded} pixels for this model (sides to multiples of "
            f"{multiple}), over the limit of {max_pixels}",
        )
    steps = [step for transform in attack.robust_mix for step in transform.steps]
    problems = [problem for step in steps if (problem := _transform_problem(step.kind, step.value))]
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"robust_mix: {problems[0]}")


def _transform_problem(kind: str, value: float | None) -> str | None:
    if kind == "blur" and value is not None and value > MAX_BLUR_KERNEL:
        return f"blur kernels up to {MAX_BLUR_KERNEL} are served, got blur_{int(value)}"
    if kind == "resize" and value is not None and value > MAX_RESIZE_SCALE:
        return f"resize scales up to {MAX_RESIZE_SCALE:g} are served (up-scaling multiplies the work), got resize_{value:g}"
    return None
