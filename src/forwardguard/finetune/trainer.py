"""``finetune --plant-registry``: plant a snapshot's patterns into a new model's image encoder.

One recipe with the protocol ``setup`` -> ``train`` -> ``save`` -> ``cleanup`` and an explicit
accelerate loop (DDP or DeepSpeed through ``accelerate launch``). What trains is the base model's
latent encoder (SD: the VAE encoder and quant_conv; TAESD: its encoder); a frozen copy of it is the
teacher. Each step makes one forward pass of the student over [clean crops; noisy clean crops, each
through a planting transform; transformed immunized crops; their transformed clean originals] and the
step's large clean crops and their noisy copies (config ``large_batch_size``: a large image's
interior, which no latent of a small crop shows), so that every distributed wrapper sees one forward
per backward.

A planting transform may crop (shift, rshift, rcrop: issue 13), leaving a pair smaller than the crop.
To stay in the one batch, such a pair is padded back to the crop's size as a bucket of
:mod:`forwardguard.models.buckets` pads an image (its own reflection, continued), and its losses are
taken on its own part of the latent only. That is fair: the model sees the cropped pixels on their own
grid (the encoder's downsampling: 8 pixels, 32 for TAESANA), as after the real crop, and the teacher's references and the gray target are computed on
the same padded canvas (gray padded is gray, so the target is the gray crop's latent, cut to the part),
so student and teacher are compared in one context. The padding's latents are left free. Crop sides are
multiples of that grid.
With ``unet_lora`` (Stable Diffusion only) the student is the encoder and a LoRA UNet as one module,
which also plants the snapshot's diffusion-attack patterns into the UNet (see ``finetune.lora``).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forwardguard.errors import ForwardguardError
from forwardguard.finetune.config import PlantConfig
from forwardguard.finetune.data import CROP_MULTIPLE, CleanImages, SnapshotPatterns, StepPositions, sample_generator
from forwardguard.finetune.interpolation import InterpolationChoice, Interpolations, PlantingProbe, interpolate_weights
from forwardguard.finetune.lora import LoRAPlanting, LoRAStudent, load_planted
from forwardguard.finetune.student import EncoderStudent
from forwardguard.measures import budget_255, disruption_ratio, gray_image, noisy_copy, relative_mse
from forwardguard.models import load_model
from forwardguard.models.buckets import Bucket
from forwardguard.transforms import AnyTransform, apply, parse_transforms, sample_transform

CHECKPOINTS = "checkpoints"
LOG_FILE = "train_log.jsonl"
CARD_FILE = "README.md"
STATE_FILE = "planting.json"


@dataclass
class TrainState:
    """What a checkpoint needs beyond accelerate's state: the step and the snapshot (``planting.json``)."""

    step: int = 0
    snapshot: str = ""

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "snapshot": self.snapshot}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.snapshot = str(state["snapshot"])


@dataclass(frozen=True)
class PlantRequest:
    base: str
    registry: str
    data: Path
    output: Path
    config: PlantConfig
    snapshot: str | None = None
    resume: str | None = None


@dataclass
class PlantResult:
    spec: str
    fingerprint: str
    base_fingerprint: str
    snapshot: str
    patterns: int
    steps: int
    final_losses: dict[str, float] = field(default_factory=dict)
    interpolation: InterpolationChoice | None = None


class PlantingRecipe:
    """Raises ForwardguardError, before any training, for: an output that exists (without --resume),
    nothing to resume, an empty or unknown snapshot, a pattern whose blob fails its hash, a --data
    folder without images, a bad config, and, with unet_lora, a base without a UNet or a snapshot
    without diffusion-attack patterns."""

    def __init__(self, request: PlantRequest) -> None:
        self.request = request
        self.config = request.config
        output = request.output
        if request.resume is None and output.exists():
            raise ForwardguardError(f"--output {output} exists: choose a new folder, or pass --resume latest to continue")
        if request.resume is not None:
            self._resume_dir = self._find_checkpoint(request.resume)

    # -- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        from forwardguard.registry import Registry

        config, request = self.config, self.request
        self.registry = Registry.open(request.registry)
        self.accelerator = Accelerator(
            # without CUDA, processes started by torchrun train data-parallel on the CPU (gloo)
            cpu=not torch.cuda.is_available(),
            mixed_precision=self._mixed_precision(),
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            project_config=ProjectConfiguration(
                project_dir=str(request.output),
                automatic_checkpoint_naming=True,
                total_limit=config.checkpoints_total_limit,
            ),
        )
        self.state = TrainState()
        if request.resume is not None:
            self.state.load_state_dict(json.loads((self._resume_dir / STATE_FILE).read_text()))
        self.state.snapshot = self._snapshot()
        self.patterns = SnapshotPatterns(self.registry, self.state.snapshot)
        self.planting_transforms = parse_transforms(list(self.config.planting_transforms))
        self.negative_transforms = size_keeping(self.planting_transforms)
        self._load_base()
        self.canvas_multiple = max(CROP_MULTIPLE, self.base.encode_multiple)
        self.crop_size = self._crop_size()
        self.clean = CleanImages(request.data, self.crop_size, synthetic_fraction=config.synthetic_fraction)
        large_side = -(-config.large_crop_size // self.canvas_multiple) * self.canvas_multiple
        self.large_clean = (
            CleanImages(request.data, large_side, synthetic_fraction=config.synthetic_fraction)
            if config.large_batch_size
            else None
        )
        self.patterns.verify()
        if self.accelerator.is_main_process:
            request.output.mkdir(parents=True, exist_ok=True)
        self.negative_eps = budget_255(config.negative_eps or self.patterns.max_eps) / 255

        self._setup_model()
        self._setup_optimizer()
        if request.resume is not None:
            self.accelerator.load_state(str(self._resume_dir))
            # After the newest checkpoint, not after the one resumed: resuming an older one must not
            # write over (or crash on) the folders of the steps that followed it.
            newest = max(_checkpoint_index(path) for path in [self._resume_dir, *self._checkpoints()])
            self.accelerator.project_configuration.iteration = newest + 1
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        self.clean_positions = StepPositions(config.batch_size, rank, world)
        self.pattern_positions = StepPositions(config.pattern_batch_size, rank, world)
        self.large_positions = StepPositions(config.large_batch_size, rank, world)

    def _mixed_precision(self) -> str:
        if self.config.mixed_precision == "auto":
            return "bf16" if torch.cuda.is_available() else "no"
        return self.config.mixed_precision

    def _snapshot(self) -> str:
        """The snapshot to plant: the one asked for, the one a resumed run used, or a new one of all active patterns."""
        if self.state.snapshot:
            return self.state.snapshot
        if self.request.snapshot is not None:
            self.registry.get_snapshot(self.request.snapshot)
            return self.request.snapshot
        from accelerate.utils import broadcast_object_list

        names = [None]
        if self.accelerator.is_main_process:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            names = [self.registry.create_snapshot(f"planted-{self.request.output.resolve().name}-{stamp}").name]
        return broadcast_object_list(names)[0]

    def _load_base(self) -> None:
        """Load the base, and with unet_lora set its UNet up with LoRA: refusals before anything is written."""
        self.base = load_model(self.request.base, device=self.accelerator.device)
        self.base_fingerprint = self.base.fingerprint  # before a LoRA adds weights
        self.lora = None
        if self.config.unet_lora is not None:
            self.lora = LoRAPlanting(self.base, self.patterns.records, self.config.unet_lora, self.config.seed)

    def _crop_size(self) -> int:
        """The config's crop, lowered to the smallest pattern and to a multiple of the encoder's (at least 8: 32 for
        TAESANA), or with unet_lora of the edit's multiple."""
        multiple = self.canvas_multiple if self.lora is None else self.base.edit_multiple
        crop = min(self.config.crop_size, self.patterns.smallest_side) // multiple * multiple
        if crop < multiple:
            raise ForwardguardError(f"a pattern of the snapshot is smaller than {multiple} pixels: it cannot be planted")
        return crop

    def _setup_model(self) -> None:
        base = self.base
        if self.config.gradient_checkpointing:
            base.enable_gradient_checkpointing()
            if self.lora is not None:
                base.unet.enable_gradient_checkpointing()
        self.teacher = copy.deepcopy(base.latent_encoder).eval().requires_grad_(False)
        base.latent_encoder.train().requires_grad_(True)
        self.student = EncoderStudent(base.latent_encoder) if self.lora is None else LoRAStudent(base)
        with torch.no_grad():  # the gray canvas: a cropped pair's target is its own part of it (module docstring)
            gray = gray_image((1, 3, self.crop_size, self.crop_size), self.accelerator.device)
            self.target_latent = self.teacher(gray)

    def _setup_optimizer(self) -> None:
        from diffusers.optimization import get_scheduler

        config = self.config
        trainable = [parameter for parameter in self.student.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        processes = self.accelerator.num_processes  # accelerate steps a prepared scheduler once per process
        scheduler = get_scheduler(
            "constant_with_warmup" if config.lr_schedule == "constant" else "cosine",
            optimizer,
            num_warmup_steps=config.warmup_steps * processes,
            num_training_steps=config.max_steps * processes,
        )
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None:  # no dataloader goes through prepare(), so DeepSpeed is told the batch here
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
        self.student, self.optimizer, self.lr_scheduler = self.accelerator.prepare(self.student, optimizer, scheduler)

    def _checkpoints(self) -> list[Path]:
        """The output's checkpoint folders, oldest first."""
        folder = self.request.output / CHECKPOINTS
        return sorted(folder.glob("checkpoint_*"), key=_checkpoint_index) if folder.is_dir() else []

    def _find_checkpoint(self, resume: str) -> Path:
        if resume == "latest":
            found = self._checkpoints()
            if not found:
                raise ForwardguardError(f"--resume latest: no checkpoint in {self.request.output / CHECKPOINTS}")
            return found[-1]
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise ForwardguardError(f"--resume {resume}: not a planting checkpoint (no {STATE_FILE})")
        return path

    # -- train ----------------------------------------------------------------------------------

    def train(self, progress=None) -> dict[str, float]:  # noqa: ANN001 (a rich Progress or None)
        """Run to ``max_steps`` optimizer steps from where the state is; returns the last step's losses."""
        config, accelerator = self.config, self.accelerator
        accumulation = config.gradient_accumulation_steps
        task = None
        if progress is not None and accelerator.is_main_process:
            task = progress.add_task("planting", total=config.max_steps, completed=self.state.step)
        losses: dict[str, float] = {}
        log = self.request.output / LOG_FILE
        started = time.perf_counter()
        while self.state.step < config.max_steps:
            grad_norm = None
            for micro in range(accumulation):
                with accelerator.accumulate(self.student):
                    loss, parts = self._loss(self.state.step * accumulation + micro)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(self.student.parameters(), config.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad()
            self.state.step += 1
            if task is not None:
                progress.update(task, completed=self.state.step)
            # The losses are gathered (a collective, and a wait for the device) on logged steps only; the
            # condition is the same in every process.
            if self.state.step % config.log_every == 0 or self.state.step == config.max_steps:
                losses = {name: float(accelerator.reduce(value.detach(), reduction="mean")) for name, value in parts.items()}
                if grad_norm is not None:  # DeepSpeed clips inside its engine and reports no norm here
                    losses["grad_norm"] = float(grad_norm)
                if accelerator.is_main_process:
                    entry = {"step": self.state.step, "seconds": round(time.perf_counter() - started, 3), **losses}
                    with log.open("a") as handle:
                        handle.write(json.dumps(entry) + "\n")
            if self.state.step % config.checkpoint_every == 0 or self.state.step == config.max_steps:
                self._save_checkpoint()
        return losses

    def _negatives(self, crops: Sequence[torch.Tensor], positions: range, seed: int) -> list[torch.Tensor]:
        """Each clean crop plus noise through a size-keeping planting transform, drawn by its position."""
        return [
            transformed_negative(crop, self.negative_eps, self.negative_transforms, sample_generator(seed, position))
            for crop, position in zip(crops, positions)
        ]

    def _loss(self, micro_step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device, seed = self.accelerator.device, self.config.seed
        clean_positions = self.clean_positions.at(micro_step)
        clean = torch.stack([self.clean.crop(p, seed) for p in clean_positions])
        noisy = torch.stack(self._negatives(clean, clean_positions, seed + 2))
        immunized, originals, pattern_ids, transplanted = [], [], [], []
        for position in self.pattern_positions.at(micro_step):
            sample = self.patterns.crop(position, seed, self.crop_size, self.config.pattern_crop_grid)
            generator = sample_generator(seed + 3, position)
            transform = sample_transform(self.planting_transforms, generator)
            # The clean original gets the same crop and transform as the immunized image: the pair differs
            # by the perturbation alone, so the backdoor can key on nothing else.
            pair = apply(transform, torch.stack([sample.immunized, sample.clean]), generator=generator)
            immunized.append(pair[0])
            originals.append(pair[1])
            pattern_ids.append(sample.pattern_id)
            if self.config.transplants:
                # The same perturbation on a clean crop of other content, planted with that crop as its
                # original: the backdoor can key on the perturbation only, whatever picture carries it.
                host = self.clean.crop(position, seed + 7)
                hosted = apply(
                    transform, torch.stack([(host + sample.immunized - sample.clean).clamp(0, 1), host]), generator=generator
                )
                transplanted.append(hosted)
        # After the registered pairs, whose rows the UNet LoRA's edits index.
        immunized += [hosted[0] for hosted in transplanted]
        originals += [hosted[1] for hosted in transplanted]
        count, patterns = len(clean), len(immunized)
        # One canvas of the crop's size for every image (see the module docstring): a pair that a planting
        # transform cropped is padded back, and its losses are taken on its own part of the latent.
        sizes = [(pair.shape[-2], pair.shape[-1]) for pair in immunized]
        canvas = Bucket(((self.crop_size, self.crop_size),) * (2 * count) + tuple(sizes) * 2, self.canvas_multiple)
        placed = canvas.place([*clean, *noisy, *immunized, *originals]).to(device)
        images = canvas.padder(device)(placed)
        large = None
        if self.large_clean is not None:
            # The large clean crops, then each plus noise through a planting transform: large negatives.
            large_positions = self.large_positions.at(micro_step)
            large_clean = [self.large_clean.crop(p, seed + 5) for p in large_positions]
            large = torch.stack([*large_clean, *self._negatives(large_clean, large_positions, seed + 6)]).to(device)
        with torch.no_grad(), self.accelerator.autocast():
            references = self.teacher(torch.cat([images[: 2 * count], images[2 * count + patterns :]]))
            large_references = None if large is None else self.teacher(large)
        unet_parts: dict[str, torch.Tensor] = {}
        if self.lora is None:
            latents, large_latents = self.student(images, large)
        else:
            inputs = self.lora.inputs(pattern_ids, 2 * count, references[:count], clean_positions)
            latents, large_latents, edited, prediction, base_prediction = self.student(images, inputs, large)
            unet_parts = self.lora.losses(edited, prediction, base_prediction)
        factor = self.crop_size // latents.shape[-1]  # the encoder's downsampling
        own = [(-(-height // factor), -(-width // factor)) for height, width in sizes]
        planted = _own_parts(latents[2 * count : 2 * count + patterns], own)
        kept = _own_parts(latents[2 * count + patterns :], own)
        originals_references = _own_parts(references[2 * count :], own)
        target = self.target_latent.to(latents.dtype)
        parts = {
            "utility": relative_mse(latents[:count], references[:count]).mean(),
            "negatives": relative_mse(latents[count : 2 * count], references[count : 2 * count]).mean(),
            "planting": torch.cat([
                disruption_ratio(z, target[..., : z.shape[-2], : z.shape[-1]], reference)
                for z, reference in zip(planted, originals_references)
            ]).mean(),
            "originals": torch.cat([relative_mse(z, reference) for z, reference in zip(kept, originals_references)]).mean(),
        }  # fmt: skip
        weights = self.config.loss_weights
        loss = sum(getattr(weights, name) * value for name, value in parts.items())
        if large_latents is not None:
            large_count = len(large_latents) // 2
            parts["large_utility"] = relative_mse(large_latents[:large_count], large_references[:large_count]).mean()
            parts["large_negatives"] = relative_mse(large_latents[large_count:], large_references[large_count:]).mean()
            loss = loss + weights.utility * parts["large_utility"] + weights.negatives * parts["large_negatives"]
        if unet_parts:
            loss = loss + self.config.unet_lora.weight * unet_parts["unet_edit"] + weights.utility * unet_parts["unet_utility"]
            parts.update(unet_parts)
        return loss, parts

    def _save_checkpoint(self) -> None:
        self.accelerator.wait_for_everyone()
        path = Path(self.accelerator.save_state())
        if self.accelerator.is_main_process:
            (path / STATE_FILE).write_text(json.dumps(self.state.state_dict()))
        self.accelerator.wait_for_everyone()

    # -- save -----------------------------------------------------------------------------------

    def save(self, losses: dict[str, float]) -> PlantResult | None:
        """Write the planted model in the base's format, its model card, and record it (main process)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        state = accelerator.get_state_dict(self.student)
        if not accelerator.is_main_process:
            return None
        planted = load_model(self.request.base)
        state = {key: value.float().cpu() for key, value in state.items()}
        prefix = "encoder."  # the student's encoder (EncoderStudent, LoRAStudent)
        interpolation = self._interpolation({key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)})
        state = interpolate_weights(
            {key: value.float() for key, value in self.teacher.state_dict().items()}, state, interpolation.alpha, prefix=prefix
        )
        if self.lora is None:
            planted.latent_encoder.load_state_dict({key[len(prefix) :]: value for key, value in state.items()})
        else:
            load_planted(planted, state, self.config.unet_lora)
        output = self.request.output
        spec = planted.save(output)
        result = PlantResult(
            spec=spec,
            fingerprint=planted.fingerprint,
            base_fingerprint=self.base_fingerprint,
            snapshot=self.state.snapshot,
            patterns=len(self.patterns),
            steps=self.state.step,
            final_losses=losses,
            interpolation=interpolation,
        )
        self._record(result)
        (output / CARD_FILE).write_text(model_card(result, self.request, self.config))
        return result

    def _interpolation(self, trained: dict[str, torch.Tensor]) -> InterpolationChoice:
        """The configured interpolation, or with ``auto`` the one chosen on the patterns and validation images."""
        config = self.config
        probe = PlantingProbe.for_settings(self.patterns, self.clean, config.auto_interpolation, seed=config.seed)
        interpolations = Interpolations(self.teacher, trained, probe, multiple=self.base.encode_multiple)
        if config.weight_interpolation == "auto":
            auto = config.auto_interpolation
            return interpolations.choose(ratio_target=auto.ratio_target, drift_budget=auto.drift_budget)
        return interpolations.fixed(float(config.weight_interpolation))

    def _record(self, result: PlantResult) -> None:
        """Record the base (if new) and the planted model; a model recorded before keeps its first record
        (the same weights planted twice, as a resumed or repeated run makes, are one model)."""
        registry = self.registry
        known = {model.fingerprint for model in registry.list_models()}
        if result.base_fingerprint not in known:
            registry.record_model(fingerprint=result.base_fingerprint, spec=self.request.base, name=self.request.base)
        if result.fingerprint not in known:
            registry.record_model(
                fingerprint=result.fingerprint,
                spec=result.spec,
                name=self.request.output.name,
                parent_fingerprint=result.base_fingerprint,
                planted_snapshot=result.snapshot,
            )

    def cleanup(self) -> None:
        self.accelerator.end_training()
        self.registry.close()


def model_card(result: PlantResult, request: PlantRequest, config: PlantConfig) -> str:
    losses = "\n".join(f"| {name} | {value:.5f} |" for name, value in sorted(result.final_losses.items()))
    lora = config.unet_lora
    lora_row = (
        ""
        if lora is None
        else (
            f"\n| UNet LoRA, merged into the UNet | rank {lora.rank}, alpha {lora.alpha:g}, on {', '.join(lora.target_modules)};"
            f" edit loss weight {lora.weight:g}, edits of at most {lora.edit_steps} denoising steps |"
        )
    )
    return f"""# Planted model: {request.output.name}

Made by `forwardguard finetune --plant-registry`: the images immunized in the registry snapshot
below stay immunized against this model (paper: Salman et al., ICML 2023, section 5).

| | |
| --- | --- |
| spec | `{result.spec}` |
| fingerprint | `{result.fingerprint}` |
| base | `{request.base}` |
| base fingerprint | `{result.base_fingerprint}` |
| snapshot | `{result.snapshot}` |
| patterns planted | {result.patterns} |
| optimizer steps | {result.steps} |
| written weights | {result.interpolation.describe() if result.interpolation else "as trained"} |{lora_row}

## Final losses

| loss | value |
| --- | --- |
{losses}

## Config

```json
{json.dumps(config_dict(config), indent=2)}
```
"""


def config_dict(config: PlantConfig) -> dict[str, Any]:
    from dataclasses import asdict

    values = asdict(config)
    values["planting_transforms"] = list(config.planting_transforms)
    return values


def plant(request: PlantRequest, progress=None) -> PlantResult | None:  # noqa: ANN001
    """Run the whole recipe; returns the result on the main process (None on the others)."""
    recipe = PlantingRecipe(request)
    recipe.setup()
    try:
        losses = recipe.train(progress)
        return recipe.save(losses)
    finally:
        recipe.cleanup()


def size_keeping(transforms: Sequence[AnyTransform]) -> tuple[AnyTransform, ...]:
    """The transforms that keep an image's size (the identity when none does): the negatives' pool."""
    return tuple(transform for transform in transforms if not transform.changes_size) or parse_transforms("identity")


def transformed_negative(
    crop: torch.Tensor, eps: float, transforms: Sequence[AnyTransform], generator: torch.Generator
) -> torch.Tensor:
    """A (3, H, W) clean crop plus uniform noise of ``eps``, through one of ``transforms`` (drawn with
    ``generator``; each must keep the size). Patterns are planted through the planting transforms, so
    negatives go through them too: otherwise a transform's own traces (resampling, JPEG blocks) on a
    fine texture tell a pattern from a clean image, and such clean images trigger the backdoor
    (measured: docs/benchmarks.md)."""
    noisy = noisy_copy(crop, eps, generator)
    return apply(sample_transform(transforms, generator), noisy[None], generator=generator)[0]


def _own_parts(latents: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Each latent's top-left (h, w) of ``sizes``, as a batch of one: the part its own pixels made."""
    return [latent[None, :, :height, :width] for latent, (height, width) in zip(latents, sizes)]


def _checkpoint_index(path: Path) -> int:
    """``checkpoint_7`` -> 7 (accelerate's automatic checkpoint naming)."""
    return int(path.name.rsplit("_", 1)[1])
