"""What an eval measures: the gauntlet, the edits, the seed, the trigger threshold, the models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from forwardguard.errors import ForwardguardError
from forwardguard.models.edits import EditSettings

DEFAULT_PROMPTS = ("a photo of a person in a hospital bed", "a photo taken on the beach", "a painting in the style of van gogh")


@dataclass(frozen=True)
class EvalSettings:
    """``transforms``: gauntlet transform names ("none", the untransformed image, always comes first).

    SD models are edited with img2img and inpainting (the paper's appendix A: guidance 7.5, eta 1,
    ``edit_steps`` denoising steps, a fixed seed per image); an autoencoder's edit is D(E(x)).
    ``trigger_threshold``: a clean image plus eps-noise whose disruption ratio falls below it counts
    as a false trigger. ``protection_threshold``: an immunized image whose ratio is at or below it
    counts as protected (each cell's protection rate). ``grid_images``: images per snapshot and model shown in the HTML report.
    """

    transforms: tuple[str, ...] = ()
    seed: int = 0
    edit_steps: int = 25
    strength: float = 0.7
    guidance_scale: float = 7.5
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    trigger_threshold: float = 0.5
    protection_threshold: float = 0.3
    noise_draws: int = 2
    grid_images: int = 4
    max_images: int | None = None

    def __post_init__(self) -> None:
        from forwardguard.transforms import parse_transform

        for name in self.transforms:
            parse_transform(name)
        if self.edit_steps < 1:
            raise ForwardguardError(f"edit steps must be >= 1, got {self.edit_steps}")
        if not self.prompts:
            raise ForwardguardError("the prompt list is empty")
        if not 0 < self.trigger_threshold < 1:
            raise ForwardguardError(f"trigger threshold must be in (0, 1), got {self.trigger_threshold}")
        if not 0 < self.protection_threshold <= 1:
            raise ForwardguardError(f"protection threshold must be in (0, 1], got {self.protection_threshold}")

    def edit(self, index: int) -> EditSettings:
        """The edit of the ``index``-th image: its prompt (cycled) and a seed derived from the eval's."""
        return EditSettings(
            prompt=self.prompts[index % len(self.prompts)],
            strength=self.strength,
            steps=self.edit_steps,
            guidance_scale=self.guidance_scale,
            eta=1.0,
            seed=self.seed * 100_003 + index,
        )


def read_prompts(path: Path) -> tuple[str, ...]:
    """One prompt per non-empty line."""
    try:
        prompts = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except OSError as error:
        raise ForwardguardError(f"--prompts {path}: cannot read ({error.strerror})") from None
    if not prompts:
        raise ForwardguardError(f"--prompts {path}: no prompts in the file")
    return prompts


def resolve_gauntlet(gauntlet: str) -> tuple[str, ...]:
    """The transform names of ``--gauntlet``: ``default`` (the built-in gauntlet), ``none`` (no
    transforms) or the path of a gauntlet YAML file (see :func:`read_gauntlet`)."""
    if gauntlet == "none":
        return ()
    if gauntlet == "default":
        from forwardguard.transforms import GAUNTLET

        return tuple(transform.name for transform in GAUNTLET)
    return read_gauntlet(Path(gauntlet))


def read_gauntlet(path: Path) -> tuple[str, ...]:
    """``configs/gauntlet.yaml``: ``transforms: [jpeg_q95, ...]``."""
    import yaml

    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ForwardguardError(f"--gauntlet {path}: cannot read ({error})".splitlines()[0]) from None
    if not isinstance(values, dict) or set(values) != {"transforms"} or not isinstance(values["transforms"], list):
        raise ForwardguardError(f"--gauntlet {path}: expected one key, transforms: [names]")
    return tuple(str(name) for name in values["transforms"])


@dataclass(frozen=True)
class ModelArg:
    """``NAME=SPEC`` from the command line."""

    name: str
    spec: str

    @classmethod
    def parse(cls, text: str, option: str = "--model") -> ModelArg:
        name, sep, spec = text.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise ForwardguardError(f"{option} {text!r}: write NAME=SPEC, e.g. v2=taesd:models/v2")
        return cls(name.strip(), spec.strip())


@dataclass(frozen=True)
class EvalRequest:
    registry: str
    models: tuple[ModelArg, ...]
    out: Path
    snapshots: tuple[str, ...] = ()
    clean: Path | None = None
    references: dict[str, str] = field(default_factory=dict)
    settings: EvalSettings = field(default_factory=EvalSettings)
    device: str = "cpu"
    inception: Path | None = None  # Inception-v3 state dict: FID and precision/recall
    clip: Path | None = None  # local CLIP model folder: CLIP image-prompt similarity
