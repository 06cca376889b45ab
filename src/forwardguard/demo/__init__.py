"""The offline demo: the whole flow on bundled photographs and bundled real weights, nothing downloaded.

immunize the photos against v1 and record them -> freeze a snapshot -> plant it into v2 ->
eval v1, v2 and the planted v2 -> gate the planted v2 and the unplanted v2.

v1 and v2 are, by default, TAEF2 and taef2-v2 (``models/``, MIT, see their LICENSE files): TAEF2 is a
real trained tiny autoencoder (FLUX.2's latent space); taef2-v2 is a "future version" of its encoder,
trained anew in the same latent space, on which the photos immunized against v1 are mostly no longer
protected. ``tiny`` and ``tiny:1`` (random weights) stay available for smoke tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from forwardguard.configs import GATE_POLICY
from forwardguard.errors import ForwardguardError

HERE = Path(__file__).parent
PHOTOS = HERE / "photos"
CLEAN = HERE / "clean"
"""Clean photos that planting distills on (its --data)."""
HELD_OUT = HERE / "heldout"
"""Clean photos no stage trains on: the eval's clean utility and false triggers are measured on them."""
MODELS = HERE / "models"
SNAPSHOT = "demo-v1"
MARKER = ".forwardguard-demo"
"""Written first into the demo's folder: ``--overwrite`` deletes only a folder that holds it."""

V1 = f"taesd:{MODELS / 'taef2'}"
V2 = f"taesd:{MODELS / 'taef2-v2' / 'encoder.safetensors'}:{MODELS / 'taef2' / 'decoder.safetensors'}"


def demo_photos() -> list[Path]:
    """The bundled photographs that the demo immunizes (see LICENSE.md)."""
    return sorted(PHOTOS.glob("*.png"))


DEMO_INTERPOLATION = 0.85
"""The demo's written weights: base + 0.85 x (trained - base), measured for its 300 steps (DemoSettings)."""


@dataclass(frozen=True)
class DemoSettings:
    """The demo's flow; the defaults are what ``forwardguard demo`` runs (a few minutes on a 2-core CPU).
    Planting uses the shipped recipe (``configs/plant.yaml``) cut to what a few minutes can train: the
    photometric transforms on the photos' own grid phase (``PLANTING_POOL``, what the demo's eval
    applies; every phase, mirrors and rotations take the recipe's 2,700 steps), ``plant_steps`` steps,
    and the weights written at ``DEMO_INTERPOLATION``: after 300 steps, ``auto`` finds synthetic
    validation images drifting beyond its budget and lowers the interpolation to 0.66, where the
    registered photos' ratios reach 0.17 (mean 0.11) (docs/benchmarks.md). It also leaves out the
    recipe's large clean crops (``large_batch_size: 0``), which make a step 1.5 times as long (more
    with their noisy copies), and the transplants, which double the crops a step plants; at 0.85 the
    demo's held-out images drift 0.62% without them, within the gate's 1% (they keep large flat colours
    clean: docs/benchmarks.md).

    ``references``: each eval model's reference for clean utility; v2 is its own (it is the model
    that would be released without planting), the planted v2's is v2, found through the registry.
    """

    out: Path
    v1: str = V1
    v2: str = V2
    policy: Path = GATE_POLICY
    attack_steps: int = 50
    plant_steps: int = 300
    edit_steps: int = 10
    transforms: tuple[str, ...] = ("jpeg_q95", "jpeg_q75", "resize_0.5")
    references: dict[str, str] = field(default_factory=lambda: {"v2": "v2"})
    device: str = "auto"
    overwrite: bool = False


@dataclass
class DemoResult:
    registry: Path
    immunized: list[Path]
    planted_spec: str
    report: Path
    gates: dict  # candidate name -> forwardguard.eval.gate.GateResult

    @property
    def verdicts(self) -> dict[str, bool]:
        return {name: result.released for name, result in self.gates.items()}


def prepare_folder(out: Path, overwrite: bool) -> None:
    """Make ``out`` for a new demo run. An existing folder is replaced only with ``overwrite``, and only
    when it is empty or a demo made it (it holds the marker): nothing else is ever deleted."""
    if out.exists():
        if not overwrite:
            raise ForwardguardError(f"{out} exists: give the demo a new folder with --out, or pass --overwrite to replace it")
        if not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file()):
            raise ForwardguardError(f"{out} is not a folder made by the demo: refusing to delete it, choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by forwardguard demo; --overwrite may delete this folder\n")


def run_demo(settings: DemoSettings, say: Callable[[str], None] = print) -> DemoResult:
    """Run every stage; ``say`` reports each one as it starts."""
    from forwardguard.eval.gate import gate, load_policy
    from forwardguard.eval.run import run_eval
    from forwardguard.eval.schema import load_report
    from forwardguard.eval.settings import EvalRequest, EvalSettings, ModelArg
    from forwardguard.finetune import PlantConfig, PlantRequest, plant
    from forwardguard.immunize import AttackSettings, RunOptions, immunize_files
    from forwardguard.immunize.attack import format_ratio
    from forwardguard.immunize.runner import registry_recorder
    from forwardguard.models import load_model
    from forwardguard.registry import Registry
    from forwardguard.transforms import PLANTING_POOL

    out = settings.out
    policy = load_policy(settings.policy)
    eval_settings = EvalSettings(transforms=settings.transforms, edit_steps=settings.edit_steps)  # checked before any work
    prepare_folder(out, settings.overwrite)
    registry_path = out / "registry.db"

    say(
        f"1/5 immunize {len(demo_photos())} bundled photos against v1 = {settings.v1} (encoder attack, {settings.attack_steps} steps)"
    )
    v1 = load_model(settings.v1, device=settings.device)
    with Registry.open(registry_path, create=True) as registry:
        report = immunize_files(
            demo_photos(),
            v1,
            AttackSettings(steps=settings.attack_steps),
            RunOptions(out_dir=out / "immunized"),
            on_written=registry_recorder(registry),
        )
        if report.failed:
            raise ForwardguardError(f"immunizing {report.failed[0][0]} failed: {report.failed[0][1]}")
        for written in report.written:
            say(
                f"    {written.job.out_png.name}: latent disruption ratio against v1 {format_ratio(written.record['loss_ratio'])}"
            )
        say(f"2/5 record them in {registry_path} and freeze snapshot {SNAPSHOT!r}")
        registry.create_snapshot(SNAPSHOT)

    say(
        f"3/5 plant the snapshot into v2 = {settings.v2} ({settings.plant_steps} steps, {len(list(CLEAN.glob('*.png')))} clean photos)"
    )
    config = PlantConfig.from_mapping(
        {
            "max_steps": settings.plant_steps,
            "checkpoint_every": settings.plant_steps,
            "weight_interpolation": DEMO_INTERPOLATION,
            "large_batch_size": 0,
            "transplants": False,
            "pattern_crop_grid": 8,
            "planting_transforms": [transform.name for transform in PLANTING_POOL],
            "auto_interpolation": {"edits": [transform.name for transform in PLANTING_POOL]},  # what it plants
        }
    )
    planted = plant(
        PlantRequest(
            base=settings.v2, registry=str(registry_path), data=CLEAN, output=out / "planted-v2", config=config, snapshot=SNAPSHOT
        )
    )
    assert planted is not None  # one process: plant returns its result
    if planted.interpolation is not None:
        say(f"    {planted.interpolation.describe()}")

    say("4/5 eval v1, v2 and the planted v2 on the snapshot, under the gauntlet")
    models = (ModelArg("v1", settings.v1), ModelArg("v2", settings.v2), ModelArg("planted-v2", planted.spec))
    report_path = run_eval(
        EvalRequest(
            registry=str(registry_path),
            models=models,
            out=out / "eval",
            clean=HELD_OUT,
            references=settings.references,
            settings=eval_settings,
            device=settings.device,
        )
    )

    say(f"5/5 gate the candidates with {settings.policy}")
    loaded = load_report(report_path)
    gates = {name: gate(loaded, policy, name) for name in ("planted-v2", "v2")}
    return DemoResult(registry_path, [w.job.out_png for w in report.written], planted.spec, report_path, gates)
