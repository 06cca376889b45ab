"""The immunity matrix: every snapshot against every model, untransformed and after each gauntlet transform.

Per cell, over the snapshot's images (each immunized image beside its clean original, and beside
the clean image plus uniform noise of the same eps, the paper's table 1 baseline):
- the latent disruption ratio ||E(T(x')) - E(gray)||^2 / ||E(T(x)) - E(gray)||^2, x' immunized or noisy;
- the similarity of edit(T(x')) to edit(T(x)) with the same seed, in the paper's nine metrics;
- with a reference model R (a planted model's base), what the model does to the clean originals x
  themselves: their latent drift ||E(T(x)) - R(T(x))||^2 / ||R(T(x))||^2 and their trigger ratio
  ||E(T(x)) - E(gray)||^2 / ||R(T(x)) - E(gray)||^2. The disruption ratio's denominator is the model's
  own clean latent, so a model that erases registered pictures whether or not they are immunized
  shrinks it; these two numbers show that, and the gate holds such a model.
A transform's random draws come from a generator seeded by (seed, image, transform), and the same
draw transforms the immunized, the noisy and the clean image. A transform that crops (shift, rcrop)
leaves all three at the same smaller size, which is what the model sees: the ratio is taken there,
against the latent of a gray target of that size.

A cell's "protection" is the share of its immunized images whose ratio is at or below the eval's
protection threshold: the mean hides a few unprotected images, this rate counts them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from forwardguard.eval.edits import model_edits
from forwardguard.eval.metric_names import METRICS
from forwardguard.eval.metrics import edit_similarity, latent_disruption_ratio, relative_mse, summarize
from forwardguard.eval.schema import NO_TRANSFORM
from forwardguard.eval.settings import EvalSettings
from forwardguard.images import to_tensor
from forwardguard.measures import gray_image, noisy_copy
from forwardguard.models.base import ImageModel
from forwardguard.models.edits import EditSettings
from forwardguard.models.padding import encode
from forwardguard.transforms import AnyTransform, apply, parse_transform

if TYPE_CHECKING:
    from forwardguard.registry.records import ModelRecord


@dataclass
class EvalModel:
    name: str
    spec: str
    model: ImageModel
    record: ModelRecord | None = None  # the registry's ModelRecord, when the model is recorded

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint


@dataclass(frozen=True)
class EvalImage:
    """One pattern of a snapshot: uint8 (H, W, 3) arrays and the pattern's eps."""

    pattern_id: str
    immunized: np.ndarray
    clean: np.ndarray
    eps: float


def to_batch(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) in [0, 1] on ``device``."""
    return to_tensor(rgb)[None].to(device)


def _transform(transform: AnyTransform | None, images: torch.Tensor, seed: int) -> torch.Tensor:
    """The real transform (None: untransformed), its random draw from ``seed``."""
    if transform is None:
        return images
    return apply(transform, images, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def evaluate_cell(
    model: EvalModel,
    images: Iterable[EvalImage],
    settings: EvalSettings,
    *,
    reference: EvalModel | None = None,
    on_image: Callable[[], None] | None = None,
    keep_grid: Callable[[int, str, dict[str, torch.Tensor]], None] | None = None,
    on_edit: Callable[[str, str, str, torch.Tensor, EditSettings], None] | None = None,
) -> dict[str, dict]:
    """Every transform's numbers for one snapshot on one model: ``{transform: cell}``; a cell's
    ``clean_originals`` is None without a ``reference``.

    ``keep_grid(index, edit, tensors)`` receives the untransformed images and edits of the first
    ``settings.grid_images`` images, for the report's grids. ``on_edit(transform, edit, version,
    edited, edit_settings)`` receives every edit, of "immunized", "noise" and "clean" images.
    """
    device = model.model.device
    edits = model_edits(model.model)
    transforms = (NO_TRANSFORM, *settings.transforms)
    parsed = {name: None if name == NO_TRANSFORM else parse_transform(name) for name in transforms}
    gray_latents: dict[tuple[int, ...], torch.Tensor] = {}  # the target's latent, per shape the model sees
    ratios: dict[str, dict[str, list[float]]] = {t: defaultdict(list) for t in transforms}
    similarities: dict[str, dict] = {t: defaultdict(lambda: defaultdict(lambda: defaultdict(list))) for t in transforms}
    originals: dict[str, dict[str, list[float]]] = {t: defaultdict(list) for t in transforms}
    for index, image in enumerate(images):
        clean = to_batch(image.clean, device)
        noisy = noisy_copy(clean, image.eps, torch.Generator().manual_seed(settings.seed * 7 + index))
        versions = {"immunized": to_batch(image.immunized, device), "noise": noisy}
        edit_settings = settings.edit(index)
        for t_index, transform in enumerate(transforms):
            draw = settings.seed * 1_000_003 + index * 101 + t_index
            transformed_clean = _transform(parsed[transform], clean, draw)
            if transformed_clean.shape not in gray_latents:
                gray_latents[transformed_clean.shape] = encode(
                    model.model, gray_image(transformed_clean.shape, transformed_clean.device)
                )
            target = gray_latents[transformed_clean.shape]
            clean_latent = encode(model.model, transformed_clean)
            if reference is not None:
                reference_latent = encode(reference.model, transformed_clean.to(reference.model.device)).to(device)
                originals[transform]["latent_relative_mse"].append(float(relative_mse(clean_latent, reference_latent)[0]))
                originals[transform]["ratio"].append(float(latent_disruption_ratio(clean_latent, reference_latent, target)[0]))
            clean_edits = {kind: edit(transformed_clean, edit_settings) for kind, edit in edits.items()}
            if on_edit is not None:
                for kind, edited in clean_edits.items():
                    on_edit(transform, kind, "clean", edited, edit_settings)
            for version, x in versions.items():
                transformed = _transform(parsed[transform], x, draw)
                ratio = latent_disruption_ratio(encode(model.model, transformed), clean_latent, target)
                ratios[transform][version].append(float(ratio[0]))
                for kind, edit in edits.items():
                    edited = edit(transformed, edit_settings)
                    if on_edit is not None:
                        on_edit(transform, kind, version, edited, edit_settings)
                    for metric, value in edit_similarity(edited, clean_edits[kind]).items():
                        similarities[transform][kind][version][metric].append(float(value[0]))
                    if (
                        keep_grid is not None
                        and transform == NO_TRANSFORM
                        and index < settings.grid_images
                        and version == "immunized"
                    ):
                        keep_grid(
                            index,
                            kind,
                            {"source": clean, "immunized": x, "clean_edit": clean_edits[kind], "immunized_edit": edited},
                        )
        if on_image is not None:
            on_image()
    return {
        transform: {
            "ratio": {version: summarize(torch.tensor(values)) for version, values in ratios[transform].items()},
            "protection": _protection(ratios[transform]["immunized"], settings.protection_threshold),
            "edits": {
                kind: {
                    version: {metric: summarize(torch.tensor(by_metric[metric])) for metric in METRICS}
                    for version, by_metric in by_version.items()
                }
                for kind, by_version in similarities[transform].items()
            },
            "clean_originals": _originals_summary(originals[transform], reference, settings.trigger_threshold),
        }
        for transform in transforms
    }


def _protection(ratios: list[float], threshold: float) -> dict[str, float]:
    """A cell's ``protection``: the share of immunized images whose ratio is at most ``threshold``."""
    return {"rate": float((torch.tensor(ratios) <= threshold).double().mean()), "threshold": threshold}


def _originals_summary(values: dict[str, list[float]], reference: EvalModel | None, threshold: float) -> dict | None:
    """A cell's ``clean_originals``: drift and trigger ratio of the clean originals against the reference, and
    the share of them whose trigger ratio is below ``threshold`` (the model moves the clean picture itself
    towards the target: a false trigger)."""
    if reference is None:
        return None
    ratios = torch.tensor(values["ratio"])
    return {
        "reference": reference.name,
        "latent_relative_mse": summarize(torch.tensor(values["latent_relative_mse"])),
        "ratio": summarize(ratios),
        "false_trigger": {"rate": float((ratios < threshold).float().mean()), "threshold": threshold},
    }
