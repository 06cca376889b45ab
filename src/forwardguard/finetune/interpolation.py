"""How far the written weights move from the base: ``weight_interpolation: auto``.

The planted model is written as ``base + alpha x (trained - base)`` (WiSE-FT, Wortsman et al., CVPR
2022). A smaller ``alpha`` drifts less on clean images unlike the training data (about quadratically)
and weakens the backdoor (slowly); which ``alpha`` is right depends on the registry and the data, so a
fixed number that suits 2 clean photos leaves registered photos unprotected with 10, and the reverse.

``auto`` measures both sides after training, on a grid of ``alpha``:

- the planting: the largest disruption ratio of the registered patterns (a seeded sample of the
  snapshot, each a centre crop of at most ``PAIR_SIDE`` pixels on its own 8-pixel grid so that large
  photos stay cheap) after each of the config's edits (by default the free edits of issue 13: every
  phase of the 8-pixel grid, a mirror, a rotation, a crop, JPEG, a rescale), each against its own
  clean original under the same edit and weights. Untransformed alone, the choice left a registry's
  photo at 0.16 after a half-size rescale (docs/benchmarks.md);
- the clean use: the largest latent relative MSE to the base on validation images: synthetic images
  of a seed no training crop used, the --data images whole (training saw random crops of them), and
  the sampled patterns' clean originals.

and takes the smallest ``alpha`` whose ratio meets ``ratio_target``: the weakest planting that still
protects every sampled pattern, so the least drift. If that ``alpha`` drifts beyond ``drift_budget``,
clean use wins: the largest ``alpha`` within the budget is taken and the choice says so. The ratio
decreases and the drift increases with ``alpha`` (both measured: docs/benchmarks.md), so each side is a
binary search over the grid.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from forwardguard.finetune.config import AutoInterpolation
from forwardguard.finetune.data import CleanImages, SnapshotPatterns, cover, sample_generator
from forwardguard.finetune.synthetic import synthetic_image
from forwardguard.images import to_tensor
from forwardguard.measures import disruption_ratio, gray_image, relative_mse
from forwardguard.models.padding import pad_to_multiple
from forwardguard.transforms import AnyTransform, apply, parse_transforms

GRID = tuple(round(0.5 + 0.02 * step, 2) for step in range(26))
"""The interpolations ``auto`` chooses from: 0.50, 0.52, ..., 1.00."""
VALIDATION_SIZE = 128
"""The side of the synthetic and --data validation images."""
PAIR_SIDE = 256
"""The largest side of a pattern pair's centre crop."""
VALIDATION_SEED_OFFSET = 7
"""Validation images use generators of ``seed + 7``. The transplants' clean hosts are drawn from the same
stream: a host crop takes a photo, scale and offset from its generator before any synthetic image,
so the two draw different images (a stream of their own would change the measured recipe)."""


@dataclass(frozen=True)
class InterpolationChoice:
    alpha: float
    ratio: float
    """The sampled registered patterns' largest disruption ratio after the edits at ``alpha``."""
    drift: float
    """The validation images' largest latent relative MSE to the base at ``alpha``."""
    reason: str
    worst_edit: str = "identity"
    """The edit after which a sampled pattern has ``ratio``."""

    def describe(self) -> str:
        return (
            f"weight interpolation {self.alpha:.2f}: sampled registered ratio at most {self.ratio:.3f} ({self.worst_edit}),"
            f" validation drift at most {self.drift:.2%} ({self.reason})"
        )


def interpolate_weights(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float, *, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """``base + alpha * (tuned - base)`` for every weight of ``tuned`` that the base encoder has (under
    ``prefix``); others (a LoRA) unchanged."""
    if alpha == 1.0:
        return tuned
    result = dict(tuned)
    for key, value in base.items():
        weight = result[prefix + key]
        reference = value.to(weight.device, weight.dtype)
        result[prefix + key] = reference + alpha * (weight - reference)
    return result


@dataclass(frozen=True)
class PlantingProbe:
    """What ``auto`` measures the interpolated encoders on."""

    pairs: list[tuple[torch.Tensor, torch.Tensor]]
    """(immunized, clean original) of the sampled patterns after each edit, each (1, 3, H, W)."""
    validation: list[torch.Tensor]
    """Clean images, each (1, 3, H, W)."""
    edits: list[str] | None = None
    """The edit of each pair, by name (None: all untransformed)."""

    @classmethod
    def build(
        cls,
        patterns: SnapshotPatterns,
        data_images: Sequence[np.ndarray],
        *,
        seed: int,
        samples: int,
        edits: Sequence[AnyTransform],
    ) -> PlantingProbe:
        """``samples`` patterns (seeded), each pair after each of ``edits`` (a random edit seeded alike for
        every pair), synthetic images, and every one of ``data_images`` (the caller reads at most ``samples``)."""
        generator = torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSET)
        chosen = torch.randperm(len(patterns), generator=generator)[:samples].tolist()
        pairs, names, originals = [], [], []
        for index in sorted(chosen):
            pair = torch.stack([to_tensor(_grid_centre(rgb, PAIR_SIDE)) for rgb in patterns.pixels(index)])
            originals.append(pair[1:])
            for edit in edits:
                edited = apply(edit, pair, generator=torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSET))
                pairs.append((edited[:1], edited[1:]))
                names.append(edit.name)
        synthetic = [
            synthetic_image(VALIDATION_SIZE, sample_generator(seed + VALIDATION_SEED_OFFSET, position))[None]
            for position in range(samples)
        ]
        photos = [to_tensor(_centre(rgb, VALIDATION_SIZE))[None] for rgb in data_images]
        return cls(pairs=pairs, validation=[*synthetic, *photos, *originals], edits=names)

    @classmethod
    def for_settings(
        cls, patterns: SnapshotPatterns, clean: CleanImages, settings: AutoInterpolation, *, seed: int
    ) -> PlantingProbe:
        """The probe a planting run measures: ``settings.samples`` of its patterns and of its clean images,
        each pair after each of ``settings.edits``."""
        return cls.build(
            patterns,
            [clean.load(index) for index in range(min(len(clean), settings.samples))],
            seed=seed,
            samples=settings.samples,
            edits=parse_transforms(list(settings.edits)),
        )


def _centre(rgb: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` square of the image scaled so that its shorter side is ``size``."""
    rgb = cover(rgb, size, size / min(rgb.shape[:2]))
    top, left = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
    return rgb[top : top + size, left : left + size]


def _grid_centre(rgb: np.ndarray, side: int) -> np.ndarray:
    """The centre crop of at most ``side`` x ``side`` pixels, starting on a multiple of 8 (the encoders'
    grid, so that the perturbation keeps its phase)."""
    height, width = rgb.shape[:2]
    top, left = max(0, (height - side) // 2) // 8 * 8, max(0, (width - side) // 2) // 8 * 8
    return rgb[top : top + side, left : left + side]


class Interpolations:
    """The encoders between the base and the trained weights, each measured once on a probe."""

    def __init__(
        self, base_encoder: torch.nn.Module, tuned_state: dict[str, torch.Tensor], probe: PlantingProbe, *, multiple: int
    ) -> None:
        """``multiple``: the encoder's side multiple (8, 32 for TAESANA): images are padded to it, as
        :func:`forwardguard.models.padding.encode` pads them."""
        self.device = next(base_encoder.parameters()).device
        self.multiple = multiple
        self.base_state = {key: value.detach().float().clone() for key, value in base_encoder.state_dict().items()}
        self.tuned_state = tuned_state
        self.probe = probe
        self.encoder = copy.deepcopy(base_encoder).float().eval().requires_grad_(False)
        self._loaded = 0.0  # the copy holds the base's weights
        self.references = self._encode(probe.validation, 0.0)
        self._ratios: dict[float, tuple[float, str]] = {}
        self._drifts: dict[float, float] = {}

    def ratio(self, alpha: float) -> float:
        """The sampled pairs' largest disruption ratio at ``alpha``."""
        return self._worst(alpha)[0]

    def worst_edit(self, alpha: float) -> str:
        """The edit of the pair with the largest ratio at ``alpha``."""
        return self._worst(alpha)[1]

    def _worst(self, alpha: float) -> tuple[float, str]:
        if alpha not in self._ratios:
            pairs = self.probe.pairs
            edits = self.probe.edits or ["identity"] * len(pairs)
            shapes = sorted({tuple(clean.shape) for _, clean in pairs})
            images = [image for pair in pairs for image in pair] + [gray_image(shape) for shape in shapes]
            latents = self._encode(images, alpha)
            targets = dict(zip(shapes, latents[2 * len(pairs) :]))
            self._ratios[alpha] = max(
                (
                    (float(disruption_ratio(latents[2 * i], targets[tuple(clean.shape)], latents[2 * i + 1])[0]), edit)
                    for i, ((_, clean), edit) in enumerate(zip(pairs, edits))
                ),
                default=(0.0, "identity"),
            )
        return self._ratios[alpha]

    def drift(self, alpha: float) -> float:
        """The validation images' largest latent relative MSE to the base at ``alpha``."""
        if alpha not in self._drifts:
            latents = self._encode(self.probe.validation, alpha)
            self._drifts[alpha] = max(
                (float(relative_mse(latent, reference)[0]) for latent, reference in zip(latents, self.references)), default=0.0
            )
        return self._drifts[alpha]

    def _encode(self, images: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
        """Each (1, 3, H, W) image's latent at ``alpha``, images of one size encoded as one batch."""
        if alpha != self._loaded:
            self.encoder.load_state_dict(interpolate_weights(self.base_state, self.tuned_state, alpha))
            self._loaded = alpha
        latents: list[torch.Tensor] = [torch.empty(0)] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape), []).append(index)
        with torch.no_grad():
            for indexes in by_shape.values():
                batch = torch.cat([images[index] for index in indexes]).to(self.device)
                batch = self.encoder(pad_to_multiple(batch, self.multiple)[0])
                for index, latent in zip(indexes, batch):
                    latents[index] = latent[None]
        return latents

    def fixed(self, alpha: float) -> InterpolationChoice:
        return InterpolationChoice(alpha, self.ratio(alpha), self.drift(alpha), "set in the config", self.worst_edit(alpha))

    def choose(self, *, ratio_target: float, drift_budget: float, grid: Sequence[float] = GRID) -> InterpolationChoice:
        """The smallest ``alpha`` of ``grid`` whose ratio meets ``ratio_target``, lowered to stay within
        ``drift_budget`` (module docstring)."""
        grid = sorted(grid)
        planted = _first(grid, lambda alpha: self.ratio(alpha) <= ratio_target)
        if planted is None:
            alpha, reason = grid[-1], f"the ratio target {ratio_target:g} is not met at {grid[-1]:g}: plant longer"
        else:
            alpha, reason = planted, f"the smallest that meets the ratio target {ratio_target:g}"
        if self.drift(alpha) > drift_budget:
            below = grid[: grid.index(alpha)]
            drifting = _first(below, lambda candidate: self.drift(candidate) > drift_budget)
            within = below[: below.index(drifting)] if drifting is not None else below
            alpha = within[-1] if within else grid[0]
            reason = f"lowered to the drift budget {drift_budget:g}: the ratio target {ratio_target:g} is not met"
        return InterpolationChoice(alpha, self.ratio(alpha), self.drift(alpha), reason, self.worst_edit(alpha))


def _first(grid: Sequence[float], holds: Callable[[float], bool]) -> float | None:
    """The first value of ``grid`` for which ``holds`` is true, by binary search (``holds`` is monotone)."""
    low, high = 0, len(grid)
    while low < high:
        middle = (low + high) // 2
        if holds(grid[middle]):
            high = middle
        else:
            low = middle + 1
    return grid[low] if low < len(grid) else None
