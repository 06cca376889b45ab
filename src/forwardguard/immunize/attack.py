"""``immunize``: the Python API that runs an attack on decoded images and returns 8-bit results.

Methods (paper section 3): ``encoder`` (algorithm 1), ``diffusion`` (algorithm 2) and ``noise``, the
random-noise baseline of the same budget. Every method reports the loss of the *written* 8-bit
image: the encoder objective for ``encoder`` and ``noise`` (so the two compare), the edit objective
for ``diffusion``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import numpy as np
import torch

from forwardguard.errors import ForwardguardError
from forwardguard.immunize.images import LoadedImage
from forwardguard.immunize.objectives import diffusion_objective, encoder_objective
from forwardguard.immunize.pgd import Objective, budget_255, pgd, quantize
from forwardguard.models.base import ImageModel
from forwardguard.models.edits import EditSettings

METHODS = ("encoder", "diffusion", "noise")


@dataclass(frozen=True)
class AttackSettings:
    """The paper's defaults (table 3): L-inf, eps 16/255, step 2/255, 200 steps, a gray target."""

    method: str = "encoder"
    eps: float = 16 / 255
    step_size: float = 2 / 255
    steps: int = 200
    seed: int = 0
    edit: EditSettings = field(default_factory=EditSettings)
    noise_draws: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ForwardguardError(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if not 0 < self.eps <= 1:
            raise ForwardguardError(f"eps must be in (0, 1], got {self.eps:g}")
        if budget_255(self.eps) < 1:
            raise ForwardguardError(f"eps {self.eps:g} is below 1/255: an 8-bit image cannot carry it")
        if self.step_size <= 0:
            raise ForwardguardError(f"step size must be positive, got {self.step_size:g}")
        if self.steps < 0:
            raise ForwardguardError(f"steps must be >= 0, got {self.steps}")
        if self.noise_draws < 1:
            raise ForwardguardError(f"noise draws must be >= 1, got {self.noise_draws}")
        if not 0 < self.edit.strength <= 1:
            raise ForwardguardError(f"strength must be in (0, 1], got {self.edit.strength:g}")
        if self.edit.steps < 1:
            raise ForwardguardError(f"edit steps must be >= 1, got {self.edit.steps}")

    def as_record(self) -> dict:
        """Every parameter, JSON-ready (what the sidecar file and the registry keep)."""
        record = asdict(self)
        if self.method != "diffusion":
            del record["edit"], record["noise_draws"]
        record["eps_255"] = self.eps * 255
        record["step_size_255"] = self.step_size * 255
        return record


@dataclass
class ImmunizedImage:
    """One immunized image: 8-bit RGB (and the input's alpha), and delta = immunized - clean."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    delta: np.ndarray
    loss_before: float
    loss_after: float

    @property
    def linf_255(self) -> int:
        return int(np.abs(self.delta).max(initial=0))

    @property
    def loss_ratio(self) -> float:
        """loss_after / loss_before: the latent disruption ratio for encoder and noise methods."""
        return self.loss_after / self.loss_before if self.loss_before > 0 else float("nan")


def parse_fraction(text: str) -> float:
    """'16/255', '0.0627' or '8' -> float; a clear error otherwise."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ForwardguardError(f"not a number or fraction: {text!r} (write e.g. 16/255 or 0.0627)") from None


def immunize(
    images: Sequence[LoadedImage],
    model: ImageModel,
    settings: AttackSettings = AttackSettings(),
    *,
    targets: Sequence[torch.Tensor] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[ImmunizedImage]:
    """Immunize same-sized images as one batch against ``model``.

    ``targets`` are (3, H, W) tensors in [0, 1], one per image (default: gray 0.5). ``masks``
    (H, W) in {0, 1}, white = region the adversary edits, turn the diffusion attack's edit into
    inpainting. ``on_step`` is called after each PGD step (for progress bars).
    """
    if not images:
        return []
    sizes = {(image.height, image.width) for image in images}
    if len(sizes) != 1:
        raise ValueError(f"immunize() takes images of one size per call, got {sorted(sizes)}")
    device = model.device
    clean_255 = torch.from_numpy(np.stack([image.rgb for image in images])).permute(0, 3, 1, 2).float().to(device)
    clean = clean_255 / 255
    if targets is None:
        target_batch = torch.full_like(clean, 0.5)
    else:
        target_batch = torch.stack(list(targets)).to(device)
    mask_batch = _mask_batch(masks, device)
    if mask_batch is not None and settings.method != "diffusion":
        raise ForwardguardError("a mask is for the diffusion attack's inpainting edit; use --method diffusion")

    objective = _objective(model, settings, target_batch, mask_batch)
    with torch.no_grad():
        loss_before = objective(clean)
    if settings.method == "noise":
        delta = _uniform_noise(clean.shape, settings.eps, settings.seed).to(device)
    else:
        delta = pgd(clean, objective, eps=settings.eps, step_size=settings.step_size, steps=settings.steps, on_step=on_step)
    delta_255 = quantize(clean_255, delta, settings.eps)
    with torch.no_grad():
        loss_after = objective((clean_255 + delta_255) / 255)
    return [
        ImmunizedImage(
            rgb=(clean_255[i] + delta_255[i]).permute(1, 2, 0).to("cpu", torch.uint8).numpy(),
            alpha=image.alpha,
            delta=delta_255[i].permute(1, 2, 0).to("cpu", torch.int16).numpy(),
            loss_before=float(loss_before[i]),
            loss_after=float(loss_after[i]),
        )
        for i, image in enumerate(images)
    ]


def _objective(
    model: ImageModel, settings: AttackSettings, targets: torch.Tensor, masks: torch.Tensor | None
) -> Objective:
    if settings.method == "diffusion":
        return diffusion_objective(model, targets, settings.edit, masks, settings.noise_draws)
    return encoder_objective(model, targets)


def _mask_batch(masks: Sequence[np.ndarray | None] | None, device: torch.device) -> torch.Tensor | None:
    if masks is None or all(mask is None for mask in masks):
        return None
    if any(mask is None for mask in masks):
        raise ValueError("give a mask for every image of a batch, or for none")
    return torch.from_numpy(np.stack(masks)).float().unsqueeze(1).to(device)


def _uniform_noise(shape: torch.Size, eps: float, seed: int) -> torch.Tensor:
    """The random-noise baseline: uniform in [-eps, eps], one seeded draw per image (batch-independent)."""
    generator = torch.Generator().manual_seed(seed)
    single = (torch.rand(shape[1:], generator=generator) * 2 - 1) * eps
    return single.expand(shape).clone()
