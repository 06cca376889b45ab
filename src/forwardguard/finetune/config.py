"""The planting recipe's settings: one YAML file (``configs/plant.yaml``), checked before training."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from forwardguard.errors import ForwardguardError

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")  # after the warmup; cosine anneals to 0 at max_steps
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the UNet's attention projections (diffusers' LoRA default)


def _planting_pool() -> tuple[str, ...]:
    """The default planting transforms: ``forwardguard.transforms.PLANTING_POOL`` (re-encodings, rescales,
    noise) and ``GEOMETRIC_PLANTING_POOL`` (shifts, crops, a mirror, rotations), in the order the shipped
    recipe was measured in (docs/benchmarks.md); imported when a config is made, so that importing this
    module stays light (no torch)."""
    from forwardguard.transforms import GEOMETRIC_PLANTING_POOL, PLANTING_POOL

    identity, *photometric = PLANTING_POOL
    return tuple(transform.name for transform in (identity, *GEOMETRIC_PLANTING_POOL, *photometric))


@dataclass(frozen=True)
class LossWeights:
    """planting: E(T(x_imm)) -> z_target; utility: clean latents stay the base's; negatives: so do noisy
    ones (small and large crops); originals: so do the clean originals of the registered patterns, under
    the same crop and transform as their immunized images (the contrastive pair that makes the backdoor
    key on the perturbation)."""

    planting: float = 1.0
    utility: float = 8.0
    negatives: float = 2.0
    originals: float = 8.0


def _free_edits() -> tuple[str, ...]:
    """``forwardguard.transforms.FREE_EDITS`` by name, imported when a config is made (as ``_planting_pool``)."""
    from forwardguard.transforms import FREE_EDITS

    return tuple(transform.name for transform in FREE_EDITS)


@dataclass(frozen=True)
class AutoInterpolation:
    """``weight_interpolation: auto`` (see :mod:`forwardguard.finetune.interpolation`): the smallest
    interpolation at which every one of ``samples`` registered patterns has a disruption ratio of at most
    ``ratio_target`` after each of ``edits`` (default: the free edits of ``forwardguard.transforms.FREE_EDITS``),
    lowered if validation images drift (latent relative MSE) beyond ``drift_budget``."""

    ratio_target: float = 0.09
    drift_budget: float = 0.009
    samples: int = 16
    edits: tuple[str, ...] = field(default_factory=_free_edits)

    def __post_init__(self) -> None:
        if not self.edits:
            raise ForwardguardError("plant config: auto_interpolation.edits is empty (use [identity] for none)")
        from forwardguard.transforms import parse_transform

        for name in self.edits:
            parse_transform(name)
        if not 0 < self.ratio_target < 1:
            raise ForwardguardError(f"plant config: auto_interpolation.ratio_target must be in (0, 1), got {self.ratio_target}")
        if self.drift_budget <= 0:
            raise ForwardguardError(f"plant config: auto_interpolation.drift_budget must be positive, got {self.drift_budget}")
        if self.samples < 1:
            raise ForwardguardError(f"plant config: auto_interpolation.samples must be >= 1, got {self.samples}")


@dataclass(frozen=True)
class UNetLoRA:
    """Also plant diffusion-attack patterns into the UNet, through a LoRA merged into it at the end.

    ``weight`` weighs the edit term ||edit_new(T(x_imm)) - gray||^2, the edit being the pattern's own
    img2img (prompt, strength, guidance, eta, seed) cut to at most ``edit_steps`` denoising steps; the
    UNet's utility term (its noise prediction on clean latents stays the base's) takes ``loss_weights.utility``.
    """

    rank: int = 4
    alpha: float = 4.0
    weight: float = 1.0
    target_modules: tuple[str, ...] = LORA_TARGETS
    edit_steps: int = 2

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ForwardguardError(f"plant config: unet_lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ForwardguardError(f"plant config: unet_lora.alpha must be positive, got {self.alpha}")
        if self.weight <= 0:
            raise ForwardguardError(f"plant config: unet_lora.weight must be positive, got {self.weight}")
        if self.edit_steps < 1:
            raise ForwardguardError(f"plant config: unet_lora.edit_steps must be >= 1, got {self.edit_steps}")
        if not self.target_modules or not all(isinstance(name, str) and name for name in self.target_modules):
            targets = list(self.target_modules)
            raise ForwardguardError(
                f"plant config: unet_lora.target_modules must be a non-empty list of module names, got {targets}"
            )

    @classmethod
    def from_mapping(cls, values: Any, source: str) -> UNetLoRA:
        if not isinstance(values, dict):
            raise ForwardguardError(f"{source}: unet_lora is null or a mapping of LoRA settings, got {values!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in set(values) - known)
        if unknown:
            raise ForwardguardError(
                f"{source}: unknown unet_lora setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        values = dict(values)
        if "target_modules" in values:
            targets = values["target_modules"]
            values["target_modules"] = tuple(targets) if isinstance(targets, list | tuple) else (targets,)
        try:
            return cls(**values)
        except TypeError as error:
            raise ForwardguardError(f"{source}: unet_lora: {error}") from None


@dataclass(frozen=True)
class PlantConfig:
    """Every knob of ``finetune --plant-registry``; batch sizes are per process (accelerate's convention).

    ``pattern_crop_grid``: a pattern crop starts on a multiple of this many pixels: 8 keeps the
    registered image's own phase of the encoders' 8-pixel grid, 1 lets it start anywhere (every phase,
    as after an adversary's crop; see :mod:`forwardguard.finetune.data`).

    The defaults plant every grid phase, mirrors, rotations and crops as well as re-encodings for 2,700
    steps, with ``transplants``, and write the weights at the ``weight_interpolation`` that ``auto``
    chooses per registry on the free edits (a fixed 0.87 protected one registry, at most 0.081, and left
    another's photo at 0.158 after a half-size rescale: docs/benchmarks.md).

    ``transplants``: each pattern crop's perturbation is also added to a clean crop of other content and
    planted there, that clean crop being its original, so that the backdoor keys on the perturbation and
    not on pictures like the registered ones. Without them, a backdoor made invariant to shifts and
    mirrors fired on clean photos of fine, saturated texture: a dahlia drifted 8-34% and a crowd seen
    small 117%. With them (taef2-v2, three registered photos, on photos no earlier run had used) the
    dahlia drifted 0.37% and the crowd 2.3%, a stained micrograph 1.3%, and no free edit of issue 13
    left a registered photo above 0.081, at 0.87 (docs/benchmarks.md). Each step plants twice as many crops.

    ``large_batch_size`` clean crops of ``large_crop_size`` per process and step join the utility loss,
    and each, plus noise, the negatives (0: none). In a crop of ``crop_size`` every latent sees the
    encoder's zero padding; the interior of a large image, where a latent sees only the image, is met in
    large crops alone. Planting 10 patterns
    into taef2-v2 at full weights, one 128-pixel crop per step took the largest drift of 256-pixel flat
    colours from 2.97% to 0.44% and of the validation images from 1.29% to 0.48%, for a step 1.5 times
    as long (docs/benchmarks.md).
    """

    seed: int = 0
    max_steps: int = 2700
    batch_size: int = 4
    pattern_batch_size: int = 3
    crop_size: int = 48
    large_crop_size: int = 128
    large_batch_size: int = 1
    pattern_crop_grid: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 100
    checkpoints_total_limit: int = 2
    loss_weights: LossWeights = field(default_factory=LossWeights)
    planting_transforms: tuple[str, ...] = field(default_factory=_planting_pool)
    negative_eps: float | None = None
    synthetic_fraction: float = 0.5
    transplants: bool = True
    weight_interpolation: float | str = "auto"
    auto_interpolation: AutoInterpolation = field(default_factory=AutoInterpolation)
    log_every: int = 10
    unet_lora: UNetLoRA | None = None

    def __post_init__(self) -> None:
        positive = (
            "max_steps",
            "batch_size",
            "pattern_batch_size",
            "crop_size",
            "gradient_accumulation_steps",
            "checkpoint_every",
            "checkpoints_total_limit",
            "log_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ForwardguardError(f"plant config: {name} must be >= 1, got {getattr(self, name)}")
        if self.crop_size % 8:
            raise ForwardguardError(f"plant config: crop_size must be a multiple of 8, got {self.crop_size}")
        if self.large_batch_size < 0:
            raise ForwardguardError(f"plant config: large_batch_size must be >= 0, got {self.large_batch_size}")
        if self.large_batch_size and (self.large_crop_size % 8 or self.large_crop_size <= self.crop_size):
            raise ForwardguardError(
                f"plant config: large_crop_size must be a multiple of 8 above crop_size ({self.crop_size}), got {self.large_crop_size}"
                " (large_batch_size: 0 turns the large crops off)"
            )
        if self.pattern_crop_grid not in (1, 2, 4, 8):
            raise ForwardguardError(f"plant config: pattern_crop_grid must be 1, 2, 4 or 8, got {self.pattern_crop_grid}")
        if self.learning_rate <= 0:
            raise ForwardguardError(f"plant config: learning_rate must be positive, got {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ForwardguardError(
                f"plant config: lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise ForwardguardError(
                f"plant config: mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}"
            )
        if self.negative_eps is not None and not 0 < self.negative_eps <= 1:
            raise ForwardguardError(f"plant config: negative_eps must be in (0, 1], got {self.negative_eps}")
        interpolation = self.weight_interpolation
        if interpolation != "auto" and not (isinstance(interpolation, int | float) and 0 < interpolation <= 1):
            raise ForwardguardError(f"plant config: weight_interpolation must be auto or in (0, 1], got {interpolation!r}")
        if not 0 <= self.synthetic_fraction <= 1:
            raise ForwardguardError(f"plant config: synthetic_fraction must be in [0, 1], got {self.synthetic_fraction}")
        if not self.planting_transforms:
            raise ForwardguardError("plant config: planting_transforms is empty (use [identity] for none)")
        from forwardguard.transforms import parse_transform

        for name in self.planting_transforms:
            parse_transform(name)

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "config") -> PlantConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ForwardguardError(f"{source}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(values)
        for name, kind, what in (
            ("loss_weights", LossWeights, "loss weight"),
            ("auto_interpolation", AutoInterpolation, "auto_interpolation setting"),
        ):
            if name in values:
                settings = values[name] or {}
                unknown = sorted(set(settings) - {f.name for f in fields(kind)})
                if unknown:
                    raise ForwardguardError(f"{source}: unknown {what}(s) {', '.join(unknown)}")
                if "edits" in settings:
                    settings = {**settings, "edits": tuple(settings["edits"] or ())}
                values[name] = kind(**settings)
        if "planting_transforms" in values:
            values["planting_transforms"] = tuple(values["planting_transforms"])
        if values.get("unet_lora") is not None:
            values["unet_lora"] = UNetLoRA.from_mapping(values["unet_lora"], source)
        try:
            return cls(**values)
        except TypeError as error:
            raise ForwardguardError(f"{source}: {error}") from None

    @classmethod
    def from_yaml(cls, path: Path, **overrides: Any) -> PlantConfig:
        import yaml

        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ForwardguardError(f"{path}: cannot read the plant config ({error})".splitlines()[0]) from None
        if not isinstance(values, dict):
            raise ForwardguardError(f"{path}: a plant config is a mapping of settings")
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls.from_mapping(values, source=str(path))
