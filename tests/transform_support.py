"""What a mix of transforms covers, for the tests that compare a mix with the gauntlet."""

from collections.abc import Iterable

from forwardguard.transforms import AnyTransform

COVERING_KIND = {"rshift": "shift", "vshift": "shift", "hshift": "shift", "rrotate": "rotate"}
"""A random kind covers its fixed ones: rshift draws every crop of the grid, rrotate every angle up to its own."""


def step_kinds(transforms: Iterable[AnyTransform]) -> set[str]:
    """The kinds of every step of ``transforms``, a fixed crop or rotation counted as its random kind's."""
    return {COVERING_KIND.get(step.kind, step.kind) for transform in transforms for step in transform.steps}
