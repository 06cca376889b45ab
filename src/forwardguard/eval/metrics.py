"""The paper's image-similarity metrics, per image, and the latent measures of immunity.

``edit_similarity`` compares two batches of edits (NCHW in [0, 1]) with the metrics of the paper's
table 1 (SSIM, PSNR, VIFp, FSIM) and table 4 (SR-SIM, GMSD, VSI, DSS, HaarPSI), all through piq
0.8.0 with ``data_range=1.0``. Notes on how piq is called:

- Minimum sizes. Several piq metrics refuse or return NaN on small images: SSIM needs sides of at
  least 11 (its window), HaarPSI 16, DSS 32 (its worst-5% pooling needs at least 11 of its 8x8
  blocks), SR-SIM 40 (its saliency map works at a quarter of the size with a 10-pixel kernel),
  VIFp 41. For such a metric only, both images are first upsampled, bilinearly and keeping the
  aspect ratio, until their shorter side reaches that minimum (``MIN_SIDE``).
- PSNR is finite: piq adds 1e-8 to the mean squared error, so identical images score 80 dB, the
  largest value PSNR can take here.
- HaarPSI of two all-black images: piq divides zero weights by zero weights and returns inf. Both
  images are then identical, so the score is set to 1, the metric's value for identical images.
- SR-SIM is computed one image at a time: piq 0.8.0 normalises its saliency maps by the minimum
  and maximum over the whole batch, so a batched score would depend on the other images (an
  identical pair scored 0.998 beside noisier pairs).
- DSS of identical images can exceed 1 by a few 1e-6 (piq adds a small epsilon to its weights).
"""

from __future__ import annotations

from collections.abc import Callable

import piq
import torch
import torch.nn.functional as F

from forwardguard import measures
from forwardguard.errors import ForwardguardError
from forwardguard.eval.metric_names import METRICS

MIN_SIDE: dict[str, int] = {
    "ssim": 11, "psnr": 1, "vifp": 41, "fsim": 2, "srsim": 40, "gmsd": 1, "vsi": 1, "dss": 32, "haarpsi": 16,
}  # fmt: skip
"""The shorter side each metric is computed at, at least (smaller images are upsampled first)."""


def _srsim_per_image(x: torch.Tensor, y: torch.Tensor, **options: object) -> torch.Tensor:
    """piq's SR-SIM one image at a time (see the module docstring)."""
    return torch.cat([piq.srsim(x[i : i + 1], y[i : i + 1], **options) for i in range(len(x))])


_PIQ: dict[str, Callable[..., torch.Tensor]] = {
    "ssim": piq.ssim,
    "psnr": piq.psnr,
    "vifp": piq.vif_p,
    "fsim": piq.fsim,
    "srsim": _srsim_per_image,
    "gmsd": piq.gmsd,
    "vsi": piq.vsi,
    "dss": piq.dss,
    "haarpsi": piq.haarpsi,
}


def edit_similarity(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of ``METRICS`` between ``a[i]`` and ``b[i]``: a dict of (N,) float32 tensors.

    ``a`` and ``b`` are (N, 3, H, W) batches of the same shape, clamped to [0, 1] here.
    """
    if a.ndim != 4 or a.shape[1] != 3 or a.shape != b.shape:
        raise ValueError(f"expected two (N, 3, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.detach().float().clamp(0, 1)
    b = b.detach().float().clamp(0, 1)
    scores = {}
    with torch.no_grad():
        for name in METRICS:
            x, y = _at_least(a, MIN_SIDE[name]), _at_least(b, MIN_SIDE[name])
            score = _PIQ[name](x, y, data_range=1.0, reduction="none")
            if name == "haarpsi":
                score = torch.where(torch.isinf(score), torch.ones_like(score), score)
            scores[name] = score
    return scores


def _at_least(images: torch.Tensor, side: int) -> torch.Tensor:
    """``images`` upsampled bilinearly, aspect ratio kept, so that the shorter side is ``side``."""
    height, width = images.shape[-2:]
    shorter = min(height, width)
    if shorter >= side:
        return images
    if height <= width:
        size = (side, max(side, round(width * side / height)))
    else:
        size = (max(side, round(height * side / width)), side)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


def latent_disruption_ratio(
    latent_immunized: torch.Tensor, latent_clean: torch.Tensor, latent_target: torch.Tensor
) -> torch.Tensor:
    """Per image ||z_imm - z_target||^2 / ||z_clean - z_target||^2: 1 without effect, 0 at the target.

    ``latent_target`` may be one latent (batch 1) for the whole batch. Raises ForwardguardError when
    a clean latent equals the target (the ratio is undefined). The planting loss is the same formula.
    """
    latent_immunized, latent_clean, latent_target = latent_immunized.detach(), latent_clean.detach(), latent_target.detach()
    _check_nonzero(measures.squared_norm(latent_clean - latent_target), "the clean latent equals the target latent")
    return measures.disruption_ratio(latent_immunized, latent_target, latent_clean)


def relative_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per item ||a - b||^2 / ||b||^2, the error of ``a`` relative to the reference ``b``.

    Raises ForwardguardError when a reference is all zeros.
    """
    a, b = a.detach(), b.detach()
    _check_nonzero(measures.squared_norm(b), "the reference is all zeros")
    return measures.relative_mse(a, b)


def _check_nonzero(denominator: torch.Tensor, reason: str) -> None:
    zero = (denominator == 0).nonzero().flatten().tolist()
    if zero:
        raise ForwardguardError(f"{reason} for item(s) {zero}: the ratio is undefined")


def summarize(values: torch.Tensor) -> dict[str, float | int]:
    """``{"mean", "std", "median", "p90", "max", "n"}`` of all values: std is the sample standard deviation
    (n - 1, 0 for one value), p90 the 90th percentile (linear interpolation between order statistics)."""
    flat = values.detach().double().flatten()
    n = flat.numel()
    if n == 0:
        raise ValueError("cannot summarize an empty tensor")
    std = float(flat.std(correction=1)) if n > 1 else 0.0
    return {
        "mean": float(flat.mean()),
        "std": std,
        "median": float(flat.quantile(0.5)),
        "p90": float(flat.quantile(0.9)),
        "max": float(flat.max()),
        "n": n,
    }
