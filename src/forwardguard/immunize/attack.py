"""``immunize``: the Python API that runs an attack on decoded images and returns 8-bit results.

Methods (paper section 3): ``encoder`` (algorithm 1), ``diffusion`` (algorithm 2) and ``noise``, the
random-noise baseline of the same budget. Every method reports the loss of the *written* 8-bit
image: the encoder objective for ``encoder`` and ``noise`` (so the two compare), the edit objective
for ``diffusion``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from forwardguard.errors import ForwardguardError
from forwardguard.images import LoadedImage
from forwardguard.immunize.compute import ComputeOptions, autocast, prepare_model
from forwardguard.immunize.objectives import bucket_multiple, diffusion_objective, encoder_objective
from forwardguard.immunize.pgd import EarlyStop, Objective, quantize, run_pgd
from forwardguard.immunize.robust import expectation_over_transforms
from forwardguard.immunize.step_rules import DEFAULT_RULE, STEP_RULES
from forwardguard.measures import GRAY, budget_255, uniform_noise
from forwardguard.models.base import ImageModel
from forwardguard.models.buckets import Bucket
from forwardguard.models.edits import EditSettings
from forwardguard.numbers import check_finite
from forwardguard.transforms import AnyTransform, parse_transforms

METHODS = ("encoder", "diffusion", "noise")


@dataclass(frozen=True)
class AttackSettings:
    """The paper's defaults (table 3): L-inf, eps 16/255, step 2/255, 200 steps, a gray target.

    ``step_rule`` is how PGD steps (``paper``: the paper's fixed signed step, reproduced exactly; the
    default is faster, see :mod:`forwardguard.immunize.step_rules`). ``target_loss`` and
    ``target_ratio`` (of the loss at delta 0) stop each image early once reached, checked every
    ``check_every`` steps; ``steps`` stays the most it runs.

    ``robust``: a mix of transform names (``forwardguard.transforms``; repeats weight a kind) for
    robust immunization, an expectation over ``robust_draws`` of them per step
    (:mod:`forwardguard.immunize.robust`); empty for the plain attack. The reported losses stay
    those of the untransformed image.
    """

    method: str = "encoder"
    eps: float = 16 / 255
    step_size: float = 2 / 255
    steps: int = 200
    seed: int = 0
    edit: EditSettings = field(default_factory=EditSettings)
    noise_draws: int = 1
    step_rule: str = DEFAULT_RULE
    target_loss: float | None = None
    target_ratio: float | None = None
    check_every: int = 10
    robust: tuple[str, ...] = ()
    robust_draws: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ForwardguardError(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if not 0 < self.eps <= 1:
            raise ForwardguardError(f"eps must be in (0, 1], got {self.eps:g}")
        if budget_255(self.eps) < 1:
            raise ForwardguardError(f"eps {self.eps:g} is below 1/255: an 8-bit image cannot carry it")
        if not 0 < self.step_size <= 1:
            raise ForwardguardError(f"step size must be in (0, 1], got {self.step_size:g}")
        if self.steps < 0:
            raise ForwardguardError(f"steps must be >= 0, got {self.steps}")
        if self.noise_draws < 1:
            raise ForwardguardError(f"noise draws must be >= 1, got {self.noise_draws}")
        if not 0 < self.edit.strength <= 1:
            raise ForwardguardError(f"strength must be in (0, 1], got {self.edit.strength:g}")
        for what, value in (("guidance", self.edit.guidance_scale), ("eta", self.edit.eta)):
            check_finite(value, what)
        if self.edit.steps < 1:
            raise ForwardguardError(f"edit steps must be >= 1, got {self.edit.steps}")
        if self.step_rule not in STEP_RULES:
            raise ForwardguardError(f"unknown step rule {self.step_rule!r} (choose from {', '.join(STEP_RULES)})")
        if self.target_loss is not None and not 0 <= self.target_loss < math.inf:
            raise ForwardguardError(f"target loss must be >= 0, got {self.target_loss:g}")
        if self.target_ratio is not None and not 0 < self.target_ratio <= 1:
            raise ForwardguardError(f"target ratio must be in (0, 1], got {self.target_ratio:g}")
        if self.check_every < 1:
            raise ForwardguardError(f"check every must be >= 1, got {self.check_every}")
        if self.robust:
            if self.method == "noise":
                raise ForwardguardError("robust immunization is for the encoder and diffusion attacks, not the noise baseline")
            if self.target_loss is not None or self.target_ratio is not None:
                raise ForwardguardError(
                    "early stopping is not for robust immunization: each step's loss is that of one drawn transform, "
                    "and a lucky draw would stop an image early"
                )
            object.__setattr__(self, "robust", tuple(transform.name for transform in self.robust_mix))
        if self.robust_draws < 1:
            raise ForwardguardError(f"robust draws must be >= 1, got {self.robust_draws}")

    @property
    def robust_mix(self) -> tuple[AnyTransform, ...]:
        """The parsed robust mix (empty for the plain attack); raises ForwardguardError on a bad name."""
        return parse_transforms(list(self.robust)) if self.robust else ()

    @property
    def early_stop(self) -> EarlyStop | None:
        if self.target_loss is None and self.target_ratio is None:
            return None
        return EarlyStop(target_loss=self.target_loss, target_ratio=self.target_ratio, check_every=self.check_every)

    def as_record(self) -> dict:
        """Every parameter that shaped the result, JSON-ready (what the sidecar file and the registry keep)."""
        record = asdict(self)
        if self.method != "diffusion":
            del record["edit"], record["noise_draws"]
        if self.method == "noise":
            del record["step_rule"]
        for key in ("target_loss", "target_ratio"):
            if record[key] is None:
                del record[key]
        if self.early_stop is None:
            del record["check_every"]
        if self.robust:
            record["robust"] = list(self.robust)
        else:
            del record["robust"], record["robust_draws"]
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
    steps_run: int = 0

    @property
    def linf_255(self) -> int:
        return int(np.abs(self.delta).max(initial=0))

    @property
    def loss_ratio(self) -> float | None:
        """loss_after / loss_before: the latent disruption ratio for encoder and noise methods; None when the
        loss before is 0 (the image already is its target, the ratio is undefined)."""
        return self.loss_after / self.loss_before if self.loss_before > 0 else None


def format_ratio(ratio: float | None) -> str:
    """A disruption ratio for people; an undefined one (the image already is its target) as n/a."""
    return "n/a" if ratio is None else f"{ratio:.3f}"


def immunize(
    images: Sequence[LoadedImage],
    model: ImageModel,
    settings: AttackSettings = AttackSettings(),
    *,
    targets: Sequence[torch.Tensor] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    on_step: Callable[[], None] | None = None,
    compute: ComputeOptions = ComputeOptions(),
) -> list[ImmunizedImage]:
    """Immunize images as one batch against ``model``; images of different sizes share a padded bucket.

    ``targets`` are (3, H, W) tensors in [0, 1], one per image at its size (default: gray 0.5).
    ``masks`` (H, W) in {0, 1}, white = region the adversary edits, turn the diffusion attack's edit
    into inpainting. ``on_step`` is called after each PGD step (for progress bars). ``compute`` picks
    precision, memory format and compilation; it prepares the model in place (see
    :func:`forwardguard.immunize.compute.prepare_model`). Each reported loss is the float32 loss of the
    8-bit image attacked alone, whatever its batch.
    """
    if not images:
        return []
    device = model.device
    bucket = Bucket(tuple((image.height, image.width) for image in images), bucket_multiple(model, settings.method))
    mask_batch = _mask_batch(masks, bucket, device)
    if mask_batch is not None and settings.method != "diffusion":
        raise ForwardguardError("a mask is for the diffusion attack's inpainting edit; use --method diffusion")
    if mask_batch is not None and any(transform.changes_size for transform in settings.robust_mix):
        raise ForwardguardError(
            "a mask is drawn for the image's own size: a robust mix with a mask cannot crop (shift, rshift, rcrop)"
        )
    prepare_model(model, settings.method, compute)
    memory_format = compute.memory_format(device)
    clean_255 = _clean_batch(images, bucket, device)
    if memory_format == torch.channels_last:
        clean_255 = clean_255.contiguous(memory_format=torch.channels_last)
    clean = clean_255 / 255
    if targets is None:
        target_batch = torch.full_like(clean, GRAY)  # the gray target, in the batch's memory format
    else:
        target_batch = bucket.place([target.to(device) for target in targets])
    sizes = None if bucket.uniform else bucket.sizes
    pad = bucket.padder(device)
    objective = _objective(model, settings, pad(target_batch), mask_batch, sizes)

    # Each image's objective at its own size, for the reported losses (a uniform batch is scored as it
    # is: each image's loss is its own); built once, so each target is encoded once.
    alone = None if bucket.uniform else [
        _objective(model, settings, bucket.crop(target_batch, i)[None],
                   None if mask_batch is None else bucket.crop(mask_batch, i)[None], None)
        for i in range(len(images))
    ]  # fmt: skip

    def reported_losses(batch_255: torch.Tensor) -> torch.Tensor:
        """The float32 loss of each image alone."""
        with torch.no_grad():
            if alone is None:
                return objective(batch_255 / 255)
            return torch.cat([score(bucket.crop(batch_255, i)[None] / 255) for i, score in enumerate(alone)])

    loss_before = _finite(reported_losses(clean_255), model)
    if settings.method == "noise":
        noise = [
            uniform_noise((3, height, width), settings.eps, torch.Generator().manual_seed(settings.seed))
            for height, width in bucket.sizes
        ]
        delta = bucket.place(noise).to(device)
        steps_run = torch.zeros(len(images), dtype=torch.long)
    else:
        dtype = compute.autocast_dtype(device)

        def on_device(padded_objective: Objective, padder: Callable[[torch.Tensor], torch.Tensor]) -> Objective:
            """``padded_objective`` of a placed batch: padded, in the attack's memory format and precision."""

            def attack_objective(batch: torch.Tensor) -> torch.Tensor:
                padded = padder(batch)
                if memory_format == torch.channels_last:
                    padded = padded.contiguous(memory_format=torch.channels_last)
                with autocast(device, dtype):
                    return padded_objective(padded)

            return attack_objective

        def objective_at(transformed_targets: Sequence[torch.Tensor]) -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
            """The objective against targets that a robust draw made smaller, of images of their sizes."""
            at = Bucket(tuple((t.shape[-2], t.shape[-1]) for t in transformed_targets), bucket.multiple)
            pad_at = at.padder(device)
            score = on_device(
                _objective(model, settings, pad_at(at.place(transformed_targets)), None, None if at.uniform else at.sizes), pad_at
            )
            return lambda images: score(at.place(images))

        attack_objective = on_device(objective, pad)
        if settings.robust:
            attack_objective = expectation_over_transforms(
                attack_objective,
                settings.robust_mix,
                draws=settings.robust_draws,
                seed=settings.seed,
                sizes=bucket.sizes,
                targets=target_batch,
                objective_at=objective_at,
            )

        result = run_pgd(
            clean,
            attack_objective,
            eps=settings.eps,
            step_size=settings.step_size,
            steps=settings.steps,
            rule=settings.step_rule,
            stop=settings.early_stop,
            region=bucket.region(device),
            on_step=on_step,
        )
        delta, steps_run = result.delta, result.steps_run
    delta_255 = quantize(clean_255, delta, settings.eps)
    immunized_255 = clean_255 + delta_255
    loss_after = _finite(reported_losses(immunized_255), model)
    return [
        ImmunizedImage(
            rgb=bucket.crop(immunized_255, i).permute(1, 2, 0).to("cpu", torch.uint8).numpy(),
            alpha=image.alpha,
            delta=bucket.crop(delta_255, i).permute(1, 2, 0).to("cpu", torch.int16).numpy(),
            loss_before=float(loss_before[i]),
            loss_after=float(loss_after[i]),
            steps_run=int(steps_run[i]),
        )
        for i, image in enumerate(images)
    ]


def _finite(losses: torch.Tensor, model: ImageModel) -> torch.Tensor:
    """``losses`` when all are finite; else ForwardguardError, before anything is written or recorded
    (a NaN loss leaves the image unchanged, which must not pass for an immunized one)."""
    if not bool(torch.isfinite(losses).all()):
        raise ForwardguardError(
            f"the attack's loss against {model.spec!r} is NaN or infinite: check the model's weights and the "
            "edit settings (guidance, strength)"
        )
    return losses


def _clean_batch(images: Sequence[LoadedImage], bucket: Bucket, device: torch.device) -> torch.Tensor:
    """(N, 3, H, W) float 0..255, each image at the top-left of the bucket.

    Built from the stacked (N, H, W, 3) pixels and permuted, so that the batch has the channels-last
    strides that it always had (convolution kernels can round differently on other layouts).
    """
    pixels = [image.rgb for image in images]
    if not bucket.uniform:
        canvas = np.zeros((len(images), *bucket.shape, 3), dtype=np.uint8)
        for index, rgb in enumerate(pixels):
            canvas[index, : rgb.shape[0], : rgb.shape[1]] = rgb
        pixels = list(canvas)
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().to(device)


def _objective(
    model: ImageModel,
    settings: AttackSettings,
    targets: torch.Tensor,
    masks: torch.Tensor | None,
    sizes: tuple[tuple[int, int], ...] | None,
) -> Objective:
    if settings.method == "diffusion":
        return diffusion_objective(model, targets, settings.edit, masks, settings.noise_draws, sizes)
    return encoder_objective(model, targets, sizes)


def _mask_batch(masks: Sequence[np.ndarray | None] | None, bucket: Bucket, device: torch.device) -> torch.Tensor | None:
    """(N, 1, H, W) masks padded to the bucket as the images are; None without masks."""
    if masks is None or all(mask is None for mask in masks):
        return None
    if any(mask is None for mask in masks):
        raise ValueError("give a mask for every image of a batch, or for none")
    placed = bucket.place([torch.from_numpy(np.asarray(mask, dtype=np.float32))[None] for mask in masks])
    return bucket.padder(device)(placed.to(device))
