"""Where a kept planting run's protection and clean drift live: its weights at other interpolations,
and with one encoder stage's change undone.

    .venv/bin/python bench/plant_bench.py --workdir run/ ...     # a run kept in run/
    .venv/bin/python bench/plant_probe.py run/
    .venv/bin/python bench/plant_probe.py run/ --alphas 1.0,0.9,0.8 --no-stages
    .venv/bin/python bench/plant_probe.py run/ --step 900 --alphas 1 --no-stages   # an earlier checkpoint
    .venv/bin/python bench/plant_probe.py run/ --auto 0.09,0.1 --no-stages          # what auto would choose

The trained weights are the last checkpoint's, or with ``--step`` those of the checkpoint taken at that
training step (a run keeps ``checkpoints_total_limit`` of them: raise it in the recipe to follow a run's
course). A variant is taef2-v2's weights plus ``alpha`` times the run's change (the trained weights minus
taef2-v2's; WiSE-FT), optionally only in some stages of the encoder: a stage is the layers at one
resolution (a stride-2 convolution starts the next). For each: the worst ratio over the run's
registered photos after each of plant_bench's free edits; the clean drift (latent relative MSE to
taef2-v2) of the registered photos' clean originals, of its held-out photos and of clean gratings
(plant_bench's); on the held-out photos, how far the clean latent moved toward the gray target,
||E'(x) - g'||^2 / ||E(x) - g||^2 (below 1, the backdoor fires on a clean image: a false trigger),
and the lowest ratio of three copies with uniform noise of eps 16/255 (near 1: noise is no trigger).
With ``--auto``, also what ``weight_interpolation: auto`` measures (the default ``auto_interpolation``:
its free edits, drift budget and samples, on the run's registry and clean photos, as planting measures
them) at each of ``--alphas``, and the interpolation it would write for each ratio target given.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from plant_bench import (
    FREE_EDITS,
    NOISE_EPS,
    PAIRS,
    REPO,
    SNAPSHOT,
    drift,
    grating_drift,
    noise_ratio_min,
    photo,
    ratio,
    taef2_v2,
)
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file
from torch import nn

from forwardguard.eval.matrix import to_batch
from forwardguard.finetune import PlantConfig
from forwardguard.finetune.config import AutoInterpolation
from forwardguard.finetune.data import CROP_MULTIPLE, CleanImages, SnapshotPatterns
from forwardguard.finetune.interpolation import InterpolationChoice, Interpolations, PlantingProbe, interpolate_weights
from forwardguard.finetune.trainer import CHECKPOINTS, STATE_FILE, TrainState
from forwardguard.measures import gray_image, relative_mse, squared_norm
from forwardguard.models import load_model
from forwardguard.models.padding import encode
from forwardguard.registry import Registry


def stages(encoder: nn.Sequential) -> list[list[str]]:
    """The encoder's top-level layers grouped by resolution: a stride-2 convolution starts a stage."""
    groups: list[list[str]] = [[]]
    for name, layer in encoder.named_children():
        if isinstance(layer, nn.Conv2d) and layer.stride == (2, 2):
            groups.append([])
        groups[-1].append(name)
    return groups


def variants(stage_names: list[list[str]], alphas: list[float], per_stage: bool) -> dict[str, tuple[float, set[str] | None]]:
    """Label -> (alpha, the layers that get the change; None: all)."""
    chosen: dict[str, tuple[float, set[str] | None]] = {f"alpha {alpha:g}": (alpha, None) for alpha in alphas}
    if per_stage:
        for index, layers in enumerate(stage_names):
            others = {name for group in stage_names if group is not layers for name in group}
            chosen[f"1/{2**index} undone"] = (1.0, others)
            chosen[f"1/{2**index} only"] = (1.0, set(layers))
    return chosen


def held_out_references(  # noqa: ANN001
    base, names: list[str], photos: Path | None
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each held-out photo as a batch, with taef2-v2's latent of it and of gray: the same for every variant."""
    references = {}
    with torch.no_grad():
        for name in names:
            x = to_batch(photo(name, 128, photos), base.device)
            references[name] = (x, encode(base, x), encode(base, gray_image(x.shape, x.device)))
    return references


def measure(model, base, pairs: dict, registered: list[str], references: dict) -> dict:  # noqa: ANN001
    worst = {edit: max(ratio(model, *pairs[name], edit=edit) for name in registered) for edit in FREE_EDITS}
    held_out = {}
    with torch.no_grad():
        for index, (name, (x, before, before_gray)) in enumerate(references.items()):
            planted, planted_gray = encode(model, x), encode(model, gray_image(x.shape, x.device))
            toward = squared_norm(planted - planted_gray) / squared_norm(before - before_gray)
            held_out[name] = {
                "drift": float(relative_mse(planted, before)[0]),
                "toward_target": float(toward[0]),
                "noise_ratio_min": noise_ratio_min(model, x, planted, planted_gray, index),
            }
    originals = {name: drift(model, base, pairs[name][1]) for name in registered}
    return {"free_edits": worst, "originals": originals, "held_out": held_out, "gratings": grating_drift(model, base)}


def auto_interpolations(workdir: Path, base, trained: dict[str, torch.Tensor]) -> tuple[Interpolations, float]:  # noqa: ANN001
    """What ``weight_interpolation: auto`` (default settings) measures on the run's trained weights: its
    registry's snapshot and the clean photos it trained on (plant_bench keeps both); and the drift budget."""
    settings = AutoInterpolation()
    clean = CleanImages(workdir / "clean", CROP_MULTIPLE)
    with Registry.open(str(workdir / "reg.db")) as registry:
        probe = PlantingProbe.for_settings(SnapshotPatterns(registry, SNAPSHOT), clean, settings, seed=PlantConfig().seed)
    return Interpolations(base.latent_encoder, trained, probe, multiple=base.encode_multiple), settings.drift_budget


def checkpoint_steps(workdir: Path) -> dict[int, Path]:
    """The kept checkpoints' weights by the training step they were taken at."""
    found = {}
    for weights in (workdir / "planted" / CHECKPOINTS).glob("checkpoint_*/model.safetensors"):
        state = TrainState()
        state.load_state_dict(json.loads((weights.parent / STATE_FILE).read_text()))
        found[state.step] = weights
    return dict(sorted(found.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a run kept by plant_bench.py --workdir")
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("FORWARDGUARD_SHARED", REPO.parent / "shared")))
    parser.add_argument("--alphas", default="1.0,0.95,0.9", help="interpolations, comma-separated")
    parser.add_argument("--no-stages", action="store_true", help="skip the variants with one stage's change undone or alone")
    parser.add_argument("--step", type=int, help="the checkpoint taken at this training step (default: the last)")
    parser.add_argument("--auto", help="ratio targets, comma-separated: print what weight_interpolation: auto chooses for each")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    checkpoints = checkpoint_steps(args.workdir)
    pairs_path = args.workdir / PAIRS
    if not checkpoints or not pairs_path.is_file():
        parser.error(f"{args.workdir}: not a run kept by plant_bench.py --workdir (no checkpoint or no {PAIRS})")
    step = max(checkpoints) if args.step is None else args.step
    if step not in checkpoints:
        parser.error(f"--step {step}: no checkpoint at that step (kept: {', '.join(map(str, checkpoints))})")
    with np.load(pairs_path) as saved:
        registered = [str(name) for name in saved["registered"]]
        held_out_names = [str(name) for name in saved["held_out"]]
        folder = str(saved["photos"]) if "photos" in saved.files else ""
        photos = {key.split("/")[0] for key in saved.files if "/" in key}
        pairs = {name: (saved[f"{name}/immunized"], saved[f"{name}/clean"]) for name in photos}
    base, model = load_model(taef2_v2(args.shared)), load_model(taef2_v2(args.shared))
    before = base.latent_encoder.state_dict()
    # The trained weights are a checkpoint's (the written ones are interpolated); its keys are the student's.
    trained = {key.removeprefix("encoder."): value for key, value in load_file(str(checkpoints[step])).items()}
    alphas = [float(value) for value in args.alphas.split(",")]
    if args.auto:
        interpolations, budget = auto_interpolations(args.workdir, base, trained)
        for alpha in alphas:
            measured = interpolations.ratio(alpha), interpolations.drift(alpha), "auto's measure at --alphas"
            print(InterpolationChoice(alpha, *measured, interpolations.worst_edit(alpha)).describe())
        for target in (float(value) for value in args.auto.split(",")):
            print(interpolations.choose(ratio_target=target, drift_budget=budget).describe())
    held_out_names = [name for name in held_out_names if name not in pairs]
    references = held_out_references(base, held_out_names, Path(folder) if folder else None)
    results = {}
    for label, (alpha, layers) in variants(stages(base.latent_encoder), alphas, not args.no_stages).items():
        changed = {key: trained[key] if layers is None or key.split(".")[0] in layers else value for key, value in before.items()}
        model.latent_encoder.load_state_dict(interpolate_weights(before, changed, alpha))
        results[label] = measure(model, base, pairs, registered, references)
    table = Table(
        "weights",
        "worst ratio, free edit",
        "none",
        "originals' drift",
        "largest drift",
        "nearest to target",
        f"noise ({NOISE_EPS * 255:.0f}/255)",
        "gratings' drift",
        title=f"{args.workdir}, step {step}",
    )
    for label, result in results.items():
        edits, held_out = result["free_edits"], result["held_out"]
        worst = max(edits, key=edits.get)
        drifted = max(held_out, key=lambda name: held_out[name]["drift"])
        nearest = min(held_out, key=lambda name: held_out[name]["toward_target"])
        noisiest = min(held_out, key=lambda name: held_out[name]["noise_ratio_min"])
        period = max(result["gratings"], key=result["gratings"].get)
        table.add_row(
            label,
            f"{edits[worst]:.3f} ({worst})",
            f"{edits['none']:.3f}",
            f"{max(result['originals'].values()):.2%}",
            f"{held_out[drifted]['drift']:.2%} ({drifted})",
            f"{held_out[nearest]['toward_target']:.3f} ({nearest})",
            f"{held_out[noisiest]['noise_ratio_min']:.3f} ({noisiest})",
            f"{result['gratings'][period]:.2%} ({period} px)",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
