"""The offline demo: the whole flow on bundled photographs, with models that need no download.

immunize the photos against v1 and record them -> freeze a snapshot -> plant it into v2 ->
eval v1, v2 and the planted v2 -> gate the planted v2 and the unplanted v2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
PHOTOS = HERE / "photos"
CLEAN = HERE / "clean"
SNAPSHOT = "demo-v1"


def demo_photos() -> list[Path]:
    """The bundled photographs that the demo immunizes (see LICENSE.md)."""
    return sorted(PHOTOS.glob("*.png"))


@dataclass(frozen=True)
class DemoSettings:
    out: Path
    v1: str = "tiny"
    v2: str = "tiny:1"
    policy: Path = Path("configs/gate.yaml")
    attack_steps: int = 50
    plant_steps: int = 100
    edit_steps: int = 10
    transforms: tuple[str, ...] = ("jpeg_q95", "jpeg_q75", "resize_0.5", "noise_0.03")
    device: str = "auto"


@dataclass
class DemoResult:
    registry: Path
    immunized: list[Path]
    planted_spec: str
    report: Path
    verdicts: dict[str, bool]


def run_demo(settings: DemoSettings, say: Callable[[str], None] = print) -> DemoResult:
    """Run every stage; ``say`` reports each one as it starts."""
    from forwardguard.errors import ForwardguardError
    from forwardguard.eval.gate import gate, load_policy
    from forwardguard.eval.report import load_report
    from forwardguard.eval.run import run_eval
    from forwardguard.eval.settings import EvalRequest, EvalSettings, ModelArg
    from forwardguard.finetune import PlantConfig, PlantRequest, plant
    from forwardguard.immunize import AttackSettings, RunOptions, immunize_files
    from forwardguard.immunize.runner import registry_recorder
    from forwardguard.models import load_model
    from forwardguard.registry import Registry

    out = settings.out
    if out.exists():
        raise ForwardguardError(f"{out} exists: give the demo a new folder with --out")
    policy = load_policy(settings.policy)
    registry_path = out / "registry.db"

    say(f"1/5 immunize {len(demo_photos())} bundled photos against v1 = {settings.v1} (encoder attack, {settings.attack_steps} steps)")
    v1 = load_model(settings.v1, device=settings.device)
    with Registry.open(registry_path, create=True) as registry:
        report = immunize_files(
            demo_photos(), v1, AttackSettings(steps=settings.attack_steps), RunOptions(out_dir=out / "immunized"),
            on_written=registry_recorder(registry),
        )
        if report.failed:
            raise ForwardguardError(f"immunizing {report.failed[0][0]} failed: {report.failed[0][1]}")
        for written in report.written:
            say(f"    {written.job.out_png.name}: latent disruption ratio against v1 {written.record['loss_ratio']:.3f}")
        say(f"2/5 record them in {registry_path} and freeze snapshot {SNAPSHOT!r}")
        registry.create_snapshot(SNAPSHOT)

    say(f"3/5 plant the snapshot into v2 = {settings.v2} ({settings.plant_steps} steps)")
    config = PlantConfig.from_mapping({"max_steps": settings.plant_steps, "crop_size": 96, "checkpoint_every": settings.plant_steps})
    planted = plant(PlantRequest(base=settings.v2, registry=str(registry_path), data=CLEAN, output=out / "planted-v2",
                                 config=config, snapshot=SNAPSHOT))

    say("4/5 eval v1, v2 and the planted v2 on the snapshot, under the gauntlet")
    eval_settings = EvalSettings(transforms=settings.transforms, edit_steps=settings.edit_steps)
    models = (ModelArg("v1", settings.v1), ModelArg("v2", settings.v2), ModelArg("planted-v2", planted.spec))
    report_path = run_eval(EvalRequest(registry=str(registry_path), models=models, out=out / "eval", clean=CLEAN,
                                       settings=eval_settings, device=settings.device))

    say(f"5/5 gate the candidates with {settings.policy}")
    loaded = load_report(report_path)
    verdicts = {name: gate(loaded, policy, name).released for name in ("v2", "planted-v2")}
    return DemoResult(registry_path, [w.job.out_png for w in report.written], planted.spec, report_path, verdicts)
