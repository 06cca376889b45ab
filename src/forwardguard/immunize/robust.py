"""Robust immunization: expectation over transformations (EOT) inside the PGD objective.

An immunized image is re-encoded, resized, cropped or filtered before anyone edits it; a
perturbation that only works on the exact pixels loses its effect (paper, section 5). With EOT
(Athalye et al., ICML 2018) each PGD step minimises the attack's loss of ``T(x + delta)``, averaged
over ``draws`` transforms T drawn from a mix, through their differentiable versions
(:func:`forwardguard.transforms.apply_differentiable`; JPEG through a differentiable libjpeg
pipeline), so the perturbation is pushed to survive them. The eval gauntlet applies the real
transforms of the same module.

The transforms are drawn without replacement: the mix is shuffled, taken in that order, and shuffled
again once used up, so that over every ``len(mix)`` draws each transform gets exactly its share
(a lower-variance estimate of the same expectation than independent draws, at no cost).

Every draw comes from the attack's seed: the order of the transforms from one generator, and the
random part of a transform (Gaussian noise, a random crop's offsets, a random angle) from a
generator seeded by (seed, step, draw), the same for every image of a batch. So an image gets the
same transforms whether it is attacked alone or in a batch, and a seeded run is reproducible. Each
image is transformed at its own size (its part of a padded bucket), as the real transform would see it.

A transform that changes the size (a shift or random crop, alone or in a chain: ``changes_size``)
leaves a smaller image, and the model sees that image, on its own 8-pixel grid. Its loss is taken
there: the image and its target are transformed together (stacked, so one draw crops both at the same
offsets), and ``objective_at`` builds the attack's objective against the transformed targets, of the
transformed images at their new sizes (for the encoder attack: one more encoding of the targets,
without gradient, per such draw). The target's photometric steps of a chain
(a JPEG before the crop) transform it too: it is compared as the model would see it after the edit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from forwardguard import interrupt
from forwardguard.immunize.pgd import Objective
from forwardguard.transforms import ROBUST_POOL, AnyTransform, apply_differentiable, parse_transforms

Size = tuple[int, int]
ListObjective = Callable[[Sequence[torch.Tensor]], torch.Tensor]
ObjectiveAt = Callable[[Sequence[torch.Tensor]], ListObjective]
"""``objective_at(targets)``: the attack's objective against the (3, h, w) ``targets``, of the
same-sized (3, h, w) images, one loss per image (the caller batches them as it batches any images)."""
DEFAULT_MIX: tuple[str, ...] = tuple(transform.name for transform in ROBUST_POOL)
"""``--robust`` without a mix: every gauntlet kind, JPEG and identity weighted (see ``forwardguard.transforms.ROBUST_POOL``)."""


def mix_names(robust: bool, mix: str | None) -> tuple[str, ...]:
    """The mix a request asks for: ``mix``'s comma-separated names (normalised; a mix implies robust),
    the default mix for ``robust`` alone, or none. Raises ForwardguardError on a bad name or an empty mix."""
    if mix is not None:
        return tuple(transform.name for transform in parse_transforms(mix))
    return DEFAULT_MIX if robust else ()


def expectation_over_transforms(
    objective: Objective,
    mix: Sequence[AnyTransform],
    *,
    draws: int,
    seed: int,
    sizes: Sequence[Size],
    targets: torch.Tensor | None = None,
    objective_at: ObjectiveAt | None = None,
) -> Objective:
    """``objective`` averaged over ``draws`` transforms from ``mix`` per call; a fresh draw at every call.

    The returned objective takes a placed bucket (N, 3, H, W) whose image ``i`` is its top-left
    ``sizes[i]``; it transforms each image's own part and passes the batch on to ``objective``. A
    transform that changes the size goes to ``objective_at`` with the same transform of ``targets``
    (a placed bucket like the images', unpadded) instead: both are needed when ``mix`` has one.
    """
    if any(transform.changes_size for transform in mix) and (targets is None or objective_at is None):
        raise ValueError("a mix with transforms that change the size needs the targets and objective_at")
    chooser = torch.Generator().manual_seed(seed)
    upcoming: list[AnyTransform] = []
    calls = 0

    def next_transform() -> AnyTransform:
        if not upcoming:
            upcoming.extend(mix[index] for index in torch.randperm(len(mix), generator=chooser).tolist())
        return upcoming.pop()

    def transformed(images: torch.Tensor, transform: AnyTransform, noise_seed: int) -> torch.Tensor:
        out = images.clone()
        for index, (height, width) in enumerate(sizes):
            interrupt.checkpoint()
            generator = torch.Generator(images.device).manual_seed(noise_seed)
            own = images[index : index + 1, :, :height, :width]
            out[index, :, :height, :width] = apply_differentiable(transform, own, generator=generator)[0]
        return out

    def resized_loss(images: torch.Tensor, transform: AnyTransform, noise_seed: int) -> torch.Tensor:
        """The loss of images and targets transformed together to their new sizes."""
        assert targets is not None and objective_at is not None  # checked on entry: the mix changes sizes
        pairs = []
        for index, (height, width) in enumerate(sizes):
            interrupt.checkpoint()
            generator = torch.Generator(images.device).manual_seed(noise_seed)
            own = torch.cat([images[index : index + 1, :, :height, :width], targets[index : index + 1, :, :height, :width]])
            pairs.append(apply_differentiable(transform, own.to(images.dtype), generator=generator))
        return objective_at([pair[1].detach() for pair in pairs])([pair[0] for pair in pairs])

    def robust(images: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        call, calls = calls, calls + 1
        losses = []
        for draw in range(draws):
            transform = next_transform()
            noise_seed = (seed * 1_000_003 + call * 1_009 + draw) % 2**63
            if transform.changes_size:
                losses.append(resized_loss(images, transform, noise_seed))
                continue
            transformed_images = transformed(images, transform, noise_seed)
            interrupt.checkpoint()
            losses.append(objective(transformed_images))
        return torch.stack(losses).mean(dim=0)

    return robust
