"""Robust immunization benchmark: plain and robust attacks after every gauntlet transform, on v1 and planted v2.

    .venv/bin/python bench/robust_bench.py --out robust-bench/                     # the whole flow, shipped plant config
    .venv/bin/python bench/robust_bench.py --out robust-bench/ --plant-steps 150 --crop-size 96 --no-v2

Photographs from scikit-image are immunized against TAEF2 (v1) twice, with the plain encoder attack
and with ``--robust`` (the default mix, or ``--mix``), both with the default step rule; each set is
recorded in one registry under its own tenant and frozen as snapshot ``plain`` or ``robust``. Each
snapshot is then planted into taef2-v2 with configs/plant.yaml or ``--config`` (``--plant-steps``,
``--crop-size`` shorten it), and ``forwardguard eval``'s Python API evaluates both snapshots on v1, taef2-v2 and the
two planted models over the default gauntlet: ``--out`` gets the report (report.json, report.html
with the robustness table). The script prints, per model and transform, the mean latent
disruption ratio of the plain and the robust snapshot and their difference, and checks issue 8's
targets on v1: after real JPEG q75 the robust ratio is at most 0.45, after q50 at most 0.55, and
untransformed it is at most the plain one + 0.05; and issue 13's: at most 0.45 after a crop of 1 to 7
pixels off the top and left (shift_1..7, added to the gauntlet here), after every crop of 0 to 7 rows
off the top and 0 to 7 columns off the left (the mean over photos of each of the 63 crops, measured here
beside the eval) and after a mirror (exit status 1 when one is missed, unless ``--no-fail``: a run too
short to reach them, as the test's three steps on 32-pixel photos).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from plant_bench import crop_phases, worst_crop_phase
from rich.console import Console
from rich.table import Table
from skimage import data

from forwardguard.eval.run import run_eval
from forwardguard.eval.schema import NO_TRANSFORM
from forwardguard.eval.settings import EvalRequest, EvalSettings, ModelArg
from forwardguard.finetune import PlantConfig, PlantRequest, plant
from forwardguard.images import LoadedImage, encode_png
from forwardguard.immunize import AttackSettings, immunize
from forwardguard.immunize.recording import record_immunized
from forwardguard.immunize.robust import DEFAULT_MIX, mix_names
from forwardguard.models import load_model
from forwardguard.registry import Registry
from forwardguard.transforms import GAUNTLET

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")
CLEAN_TRAINING = ("astronaut", "coffee", "chelsea", "brick", "grass", "gravel", "moon", "coins", "clock", "hubble_deep_field")
TARGETS = {"jpeg_q75": 0.45, "jpeg_q50": 0.55, **{f"shift_{k}": 0.45 for k in range(1, 8)}, "hflip": 0.45}
"""Issue 8's JPEG targets and issue 13's free edits (the diagonal crops of the 8-pixel grid, a mirror) on v1."""
FREE_SHIFTS = tuple(f"shift_{k}" for k in range(1, 8))
PHASE_TARGET = TARGETS["shift_1"]
"""Issue 13's shift target, held at every crop of 0-7 rows off the top and 0-7 columns off the left: shift_1..7
are the diagonal of these 64, and a mix of the diagonal alone passes them and fails off it (docs/benchmarks.md)."""
UNTRANSFORMED_LOSS = 0.05


def photo(name: str, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(data, name)()).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))


def record(registry: Registry, model, rgbs: list[np.ndarray], settings: AttackSettings, tenant: str) -> list[np.ndarray]:  # noqa: ANN001
    """Immunize ``rgbs`` as one batch and record them under ``tenant``, as ``immunize --registry --tenant`` does;
    the immunized images."""
    results = immunize([LoadedImage(rgb=rgb, alpha=None, path=None) for rgb in rgbs], model, settings)
    for result in results:
        record_immunized(
            registry,
            result,
            png=encode_png(result.rgb),
            settings=settings,
            model_fingerprint=model.fingerprint,
            model_spec=model.spec,
            tenant=tenant,
        )
    return [result.rgb for result in results]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (registry, planted models, report); must not exist")
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("FORWARDGUARD_SHARED", REPO.parent / "shared")))
    parser.add_argument("--photos", default=",".join(PHOTOS), help="scikit-image photo names, comma-separated")
    parser.add_argument("--size", type=int, default=128, help="photo side in pixels")
    parser.add_argument("--steps", type=int, default=200, help="PGD steps of both attacks")
    parser.add_argument("--mix", default=None, help="robust mix, comma-separated (default: the --robust default)")
    parser.add_argument("--draws", type=int, default=1, help="transforms per step of the robust attack")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "plant.yaml", help="the plant recipe (YAML)")
    parser.add_argument("--plant-steps", type=int, default=None, help="override the recipe's max_steps")
    parser.add_argument("--crop-size", type=int, default=None, help="override the recipe's crop_size")
    parser.add_argument("--no-v2", action="store_true", help="v1 only: no planting, no taef2-v2")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 when a target is missed (a run too short to reach them)")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"--out {args.out} exists: choose a new folder")
    models_dir = args.shared / "models"
    v1_spec = f"taesd:{models_dir / 'taef2'}"
    v2_spec = f"taesd:{models_dir / 'taef2-v2' / 'encoder.safetensors'}:{models_dir / 'taef2' / 'taef2_decoder.pth'}"
    console = Console()

    args.out.mkdir(parents=True)
    registry_path = args.out / "registry.db"
    v1 = load_model(v1_spec, device="cpu")
    names = [name.strip() for name in args.photos.split(",") if name.strip()]
    rgbs = [photo(name, args.size) for name in names]
    mix = mix_names(True, args.mix)
    attacks = {
        "plain": AttackSettings(steps=args.steps),
        "robust": AttackSettings(steps=args.steps, robust=mix, robust_draws=args.draws),
    }
    phases = {}
    with Registry.open(registry_path, create=True) as registry:
        for name, settings in attacks.items():
            with console.status(f"immunizing {len(rgbs)} photos at {args.size}px, {name}"):
                immunized = record(registry, v1, rgbs, settings, tenant=name)
            registry.create_snapshot(name, tenant=name)
            phases[name] = np.mean([crop_phases(v1, *pair) for pair in zip(immunized, rgbs)], axis=0).tolist()

    models = [ModelArg("v1", v1_spec)]
    if not args.no_v2:
        models.append(ModelArg("v2", v2_spec))
        clean = args.out / "clean"
        clean.mkdir()
        for name in CLEAN_TRAINING:
            Image.fromarray(photo(name, 160)).save(clean / f"{name}.png")
        overrides = {key: value for key, value in (("max_steps", args.plant_steps), ("crop_size", args.crop_size)) if value}
        config = PlantConfig.from_yaml(args.config, **overrides)
        for name in attacks:
            with console.status(f"planting snapshot {name} into taef2-v2"):
                result = plant(
                    PlantRequest(
                        base=v2_spec,
                        registry=str(registry_path),
                        data=clean,
                        output=args.out / f"planted-{name}",
                        config=config,
                        snapshot=name,
                    )
                )
            models.append(ModelArg(f"planted-{name}", result.spec))

    gauntlet = [transform.name for transform in GAUNTLET]
    settings = EvalSettings(transforms=(*gauntlet, *(name for name in FREE_SHIFTS if name not in gauntlet)), grid_images=2)
    with console.status("evaluating"):
        report_path = run_eval(
            EvalRequest(
                registry=str(registry_path),
                models=tuple(models),
                out=args.out / "report",
                snapshots=tuple(attacks),
                settings=settings,
            )
        )
    report = json.loads(report_path.read_text())
    ratios = {
        (cell["model"], cell["snapshot"], cell["transform"]): cell["ratio"]["immunized"]["mean"] for cell in report["cells"]
    }
    worst = {(cell["model"], cell["snapshot"], cell["transform"]): cell["ratio"]["immunized"]["max"] for cell in report["cells"]}
    transforms = [NO_TRANSFORM, *settings.transforms]
    summary = {}
    for model in models:
        table = Table(title=f"{model.name}: mean latent disruption ratio, {len(rgbs)} photos (lower: more immunized)")
        for column in ("transform", "plain", "robust", "robust - plain", "robust, worst photo"):
            table.add_column(column, justify="left" if column == "transform" else "right")
        for transform in transforms:
            plain, robust = ratios[(model.name, "plain", transform)], ratios[(model.name, "robust", transform)]
            robust_max = worst[(model.name, "robust", transform)]
            summary[f"{model.name}/{transform}"] = {"plain": plain, "robust": robust, "robust_max": robust_max}
            table.add_row(transform, f"{plain:.3f}", f"{robust:.3f}", f"{robust - plain:+.3f}", f"{robust_max:.3f}")
        console.print(table)

    checks = {
        f"v1 {transform} robust <= {limit}": ratios[("v1", "robust", transform)] <= limit for transform, limit in TARGETS.items()
    }
    worst_crops = {name: worst_crop_phase(grid) for name, grid in phases.items()}
    for name, (worst, (top, left)) in worst_crops.items():
        console.print(
            f"v1, {name}: mean ratio after every crop of 0-7 rows off the top and 0-7 columns off the left:"
            f" at most {worst:.3f} ({top} off the top, {left} off the left)",
            soft_wrap=True,
        )
    checks[f"v1 every crop phase robust <= {PHASE_TARGET}"] = worst_crops["robust"][0] <= PHASE_TARGET
    loss = ratios[("v1", "robust", NO_TRANSFORM)] - ratios[("v1", "plain", NO_TRANSFORM)]
    checks[f"v1 untransformed: robust - plain = {loss:+.3f} <= {UNTRANSFORMED_LOSS}"] = loss <= UNTRANSFORMED_LOSS
    for check, passed in checks.items():
        console.print(f"{'PASS' if passed else 'FAIL'}  {check}", markup=False, soft_wrap=True)
    (args.out / "robust_bench.json").write_text(
        json.dumps(
            {
                "size": args.size,
                "steps": args.steps,
                "mix": list(mix),
                "draws": args.draws,
                "photos": names,
                "ratios": summary,
                "crop_phases": phases,
                "checks": checks,
                "default_mix": list(DEFAULT_MIX),
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"report: {report_path.parent / 'report.html'}")
    return 0 if args.no_fail or all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
