"""Clean utility of a model against its reference, and its false-trigger rate on ordinary noisy photos."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from forwardguard.eval.edits import NO_DECODER, edits_not_computed, model_edits
from forwardguard.eval.matrix import EvalModel, to_batch
from forwardguard.eval.metrics import edit_similarity, latent_disruption_ratio, relative_mse, summarize
from forwardguard.eval.schema import CleanUtility, NoisyTriggers
from forwardguard.eval.settings import EvalSettings
from forwardguard.measures import gray_image, noisy_copy
from forwardguard.models.padding import encode

CLEAN_EPS = 16 / 255


@torch.no_grad()
def clean_utility(
    model: EvalModel,
    reference: EvalModel | None,
    images: list[np.ndarray],
    settings: EvalSettings,
    *,
    eps: float = CLEAN_EPS,
    on_image: Callable[[], None] | None = None,
) -> CleanUtility:
    """On clean images: the latent relative MSE to the reference and the PSNR/SSIM of the model's edits
    against the reference's (same seed); and the share of clean + eps-noise images whose disruption
    ratio falls below ``settings.trigger_threshold`` (false triggers)."""
    device = model.model.device
    edits = model_edits(model.model)
    reference_edits = model_edits(reference.model) if reference is not None else {}
    latent_mse: list[float] = []
    edit_scores: dict[str, dict[str, list[float]]] = {kind: {"psnr": [], "ssim": []} for kind in edits if kind in reference_edits}
    trigger_ratios: list[float] = []
    for index, rgb in enumerate(images):
        clean = to_batch(rgb, device)
        latent = encode(model.model, clean)
        if reference is not None:
            latent_mse.append(
                float(relative_mse(latent, encode(reference.model, clean.to(reference.model.device)).to(device))[0])
            )
            for kind, scores in edit_scores.items():
                edit_settings = settings.edit(index)
                ours = edits[kind](clean, edit_settings)
                theirs = reference_edits[kind](clean.to(reference.model.device), edit_settings).to(device)
                similarity = edit_similarity(ours, theirs)
                scores["psnr"].append(float(similarity["psnr"][0]))
                scores["ssim"].append(float(similarity["ssim"][0]))
        target = encode(model.model, gray_image(clean.shape, clean.device))
        for draw in range(settings.noise_draws):
            seed = settings.seed * 7919 + index * settings.noise_draws + draw
            noisy = noisy_copy(clean, eps, torch.Generator().manual_seed(seed))
            trigger_ratios.append(float(latent_disruption_ratio(encode(model.model, noisy), latent, target)[0]))
        if on_image is not None:
            on_image()
    ratios = torch.tensor(trigger_ratios)
    return CleanUtility(
        model=model.name,
        reference=reference.name if reference is not None else None,
        images=len(images),
        latent_relative_mse=summarize(torch.tensor(latent_mse)) if latent_mse else None,
        edits={
            kind: {metric: summarize(torch.tensor(values)) for metric, values in scores.items()}
            for kind, scores in edit_scores.items()
        },
        edits_not_computed=_edits_not_computed(model, reference),
        false_trigger=NoisyTriggers(
            rate=float((ratios < settings.trigger_threshold).float().mean()),
            threshold=settings.trigger_threshold,
            eps=eps,
            samples=len(trigger_ratios),
            ratio=summarize(ratios),
        ),
    )


def _edits_not_computed(model: EvalModel, reference: EvalModel | None) -> str | None:
    """Why the clean entry has no edit scores: the model or its reference has no decoder."""
    if reference is not None and not reference.model.has_decoder:
        return edits_not_computed(model.model) or f"{NO_DECODER} in the reference {reference.name}"
    return edits_not_computed(model.model)
