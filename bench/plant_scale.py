"""Planting at scale: ratios, clean drift, throughput and peak memory of planting N registered patterns.

    .venv/bin/python bench/plant_scale.py --n 10,100 --max-steps 100 --attack-steps 10
    .venv/bin/python bench/plant_scale.py --n 100,1000 --size 64 --attack-steps 5 --max-steps 20 --measure 20   # memory only
    .venv/bin/python bench/plant_scale.py --base taesd:../shared/models/taesana/taesana_encoder.pth
    .venv/bin/python bench/plant_scale.py --device cuda --json scale.json

Random crops (seeded) of scikit-image photos are immunized against TAEF2 (encoder attack, eps 16/255).
For each N, the first N are recorded in a fresh registry and planted into ``--base`` with ``--config``
(in a child process of its own, whose peak RSS is the planting's memory); crops of other photos,
which no registered crop and no clean training image shows, immunized the same way and never
recorded, are the unregistered ones. Reported, as min, median, p90 and max, for the planted model
beside the base: the disruption ratio of the registered crops (at most ``--measure`` of them) and of
the unregistered ones; the latent relative MSE to the base on held-out images of every kind (photos
of other subjects, dark, flat, graphics and text, gray), at ``--size`` and at ``LARGE`` times it (a
flat area's drift grows with the image: planting crops are small); the ratio of those images plus
uniform noise of eps, gray left out (it is the target; a low ratio is a false trigger), by kind, and
over the base's ratio of the same noisy image (the planting's own effect: a flat image's ratio is far
from 1 on any model); the unregistered ratio after each free edit of ``--edits`` (a 1-pixel shift, a
flip: the pair edited alike, the immunized crop as an adversary would upload it). Also the
planting's samples per second (between its first and last logged steps) and wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table
from skimage import data
from skimage.io import imread

from forwardguard.eval.matrix import to_batch
from forwardguard.eval.metrics import latent_disruption_ratio, relative_mse
from forwardguard.finetune import PlantConfig, PlantRequest, plant
from forwardguard.finetune.data import cover
from forwardguard.images import LoadedImage, encode_png, to_tensor, to_uint8
from forwardguard.immunize import AttackSettings, immunize
from forwardguard.immunize.recording import record_immunized
from forwardguard.measures import gray_image, noisy_copy
from forwardguard.models import load_model
from forwardguard.models.padding import encode
from forwardguard.registry import Registry
from forwardguard.transforms import AnyTransform, apply, parse_transforms

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "moon", "coins", "clock", "hubble_deep_field")
"""Registered crops, and the clean --data planting distills on, come from these."""
UNREGISTERED_PHOTOS = ("cat", "motorcycle_left", "microaneurysms", "camera", "retina")
"""Unregistered crops: immunized the same way, of photos that no registered crop and no clean
training image shows."""
HELD_OUT_PHOTOS = ("camera", "retina", "immunohistochemistry", "cell")
"""Held-out photos, for the clean drift: subjects no registered crop and no clean training image shows."""
EPS = 16 / 255
LARGE = 4
"""The large held-out images' side, in multiples of ``--size``."""
BATCH = 16
"""Crops immunized per call."""
STATS = ("min", "median", "p90", "max")
"""Each figure's summary; a noise ratio's min is where a false trigger would show."""


def photo(name: str) -> np.ndarray:
    """A scikit-image photo by its loader's name, or by its file's stem (``motorcycle_left``), as RGB."""
    loader = getattr(data, name, None)
    pixels = loader() if callable(loader) else imread(next(Path(data.data_dir).glob(f"{name}.*")))
    return np.asarray(Image.fromarray(pixels).convert("RGB"))


def random_crops(names: tuple[str, ...], count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` crops of ``size`` pixels at random places of random photos of ``names``, each at a random scale."""
    photos = [photo(name) for name in names]
    crops = []
    for _ in range(count):
        rgb = cover(photos[rng.integers(len(photos))], size, float(rng.uniform(0.3, 1.0)))
        top, left = (int(rng.integers(side - size + 1)) for side in rgb.shape[:2])
        crops.append(np.ascontiguousarray(rgb[top : top + size, left : left + size]))
    return crops


def held_out_images(size: int, per_kind: int, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Clean images no stage trains on, by kind."""
    photos = random_crops(HELD_OUT_PHOTOS, per_kind, size, rng)
    flat = [np.full((size, size, 3), rng.integers(256, size=3), np.uint8) for _ in range(per_kind)]
    gray = [np.full((size, size, 3), 128 + 16 * index, np.uint8) for index in range(per_kind)]
    return {
        "photo": photos,
        "dark": [(crop * float(rng.uniform(0.05, 0.2))).astype(np.uint8) for crop in photos],
        "flat": flat,
        "graphics": [graphic(size, rng) for _ in range(per_kind)],
        "gray": gray,
    }


def graphic(size: int, rng: np.random.Generator) -> np.ndarray:
    """Shapes and text on a plain background."""
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(256, size=3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(size // 2, size=2))
        x1, y1 = x0 + int(rng.integers(8, size // 2)), y0 + int(rng.integers(8, size // 2))
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(256, size=3)))
    draw.text((4, size // 2), "forwardguard 123", fill=tuple(int(v) for v in rng.integers(256, size=3)))
    return np.asarray(image)


def immunize_all(model, crops: list[np.ndarray], attack: AttackSettings) -> list:  # noqa: ANN001
    results = []
    for start in range(0, len(crops), BATCH):
        batch = [LoadedImage(rgb=rgb, alpha=None, path=None) for rgb in crops[start : start + BATCH]]
        results.extend(immunize(batch, model, attack))
    return results


def plant_child(request: PlantRequest) -> dict:
    """Plant in this (fresh) process; its peak RSS is the planting's memory."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    started = time.perf_counter()
    result = plant(request)
    seconds = time.perf_counter() - started
    log = [json.loads(line) for line in (request.output / "train_log.jsonl").read_text().splitlines()]
    config = request.config
    samples = (2 * config.batch_size + config.pattern_batch_size + config.large_batch_size) * (log[-1]["step"] - log[0]["step"])
    span = log[-1]["seconds"] - log[0]["seconds"]
    return {
        "spec": result.spec,
        "steps": result.steps,
        "interpolation": result.interpolation.describe() if result.interpolation else None,
        "plant_seconds": seconds,
        "samples_per_second": samples / span if span > 0 else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # kB on Linux
    }


def stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {
        "min": float(array.min()),
        "median": float(np.median(array)),
        "p90": float(np.percentile(array, 90)),
        "max": float(array.max()),
    }


@torch.no_grad()
def ratios(model, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:  # noqa: ANN001
    """Each (immunized, clean) pair's disruption ratio under ``model``."""
    values = []
    for immunized, clean in pairs:
        x = to_batch(clean, model.device)
        target = encode(model, gray_image(x.shape, x.device))
        values.append(
            float(latent_disruption_ratio(encode(model, to_batch(immunized, model.device)), encode(model, x), target)[0])
        )
    return values


@torch.no_grad()
def drifts(model, base, images: list[np.ndarray]) -> list[float]:  # noqa: ANN001
    return [
        float(relative_mse(encode(model, to_batch(rgb, model.device)), encode(base, to_batch(rgb, base.device)))[0])
        for rgb in images
    ]


def noisy_pairs(images: list[np.ndarray], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each image plus uniform noise of eps, beside the image."""
    return [
        (to_uint8(noisy_copy(to_tensor(rgb), EPS, torch.Generator().manual_seed(seed + index))), rgb)
        for index, rgb in enumerate(images)
    ]


def edited_pairs(
    pairs: list[tuple[np.ndarray, np.ndarray]], edit: AnyTransform, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each (immunized, clean) pair through ``edit``, both alike (a seeded generator per pair)."""
    edited = []
    for index, pair in enumerate(pairs):
        immunized, clean = to_uint8(
            apply(edit, torch.stack([to_tensor(rgb) for rgb in pair]), generator=torch.Generator().manual_seed(seed + index))
        )
        edited.append((immunized, clean))
    return edited


def figures(
    model,
    base,
    registered,
    unregistered,
    edited: dict[str, list],
    held_out: dict[str, list[np.ndarray]],
    large: dict[str, list[np.ndarray]],
    noisy: dict[str, list],
    base_noise: list[float],
) -> dict:  # noqa: ANN001
    """Every summary of one model; ``base`` is the drift's reference; ``edited``: the unregistered pairs
    after each free edit, by its name; ``large``: held-out images of ``LARGE`` times the side;
    ``noisy``: the held-out images plus eps noise, beside them, by kind; ``base_noise``: the base's
    ratios of those pairs, in the same order."""
    clean = [rgb for images in held_out.values() for rgb in images]
    noise_by_kind = {kind: ratios(model, pairs) for kind, pairs in noisy.items()}
    noise = [value for values in noise_by_kind.values() for value in values]
    return {
        "registered": stats(ratios(model, registered)),
        "unregistered": stats(ratios(model, unregistered)),
        "unregistered_after_edit": {name: stats(ratios(model, pairs)) for name, pairs in edited.items()},
        "held_out_drift": stats(drifts(model, base, clean)),
        "held_out_drift_by_kind": {kind: stats(drifts(model, base, images)) for kind, images in held_out.items()},
        "large_held_out_drift_by_kind": {kind: stats(drifts(model, base, images)) for kind, images in large.items()},
        "noise_ratio": stats(noise),
        "noise_ratio_by_kind": {kind: stats(values) for kind, values in noise_by_kind.items()},
        "noise_ratio_over_base": stats([mine / theirs for mine, theirs in zip(noise, base_noise)]),
    }


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    sizes = sorted(int(n) for n in args.n.split(","))
    rng = np.random.default_rng(args.seed)
    crops = random_crops(PHOTOS, sizes[-1], args.size, rng) + random_crops(UNREGISTERED_PHOTOS, args.unregistered, args.size, rng)
    held_out = held_out_images(args.size, args.held_out, rng)
    large = held_out_images(LARGE * args.size, args.held_out, rng)
    attacked = load_model(args.attack_model, device=device)
    attack = AttackSettings(steps=args.attack_steps, eps=EPS)
    started = time.perf_counter()
    results = immunize_all(attacked, crops, attack)
    immunize_seconds = time.perf_counter() - started
    pairs = [(result.rgb, clean) for result, clean in zip(results, crops)]
    unregistered = pairs[sizes[-1] :]
    edited = {edit.name: edited_pairs(unregistered, edit, args.seed) for edit in parse_transforms(args.edits)}
    noisy = {kind: noisy_pairs(images, args.seed) for kind, images in held_out.items() if kind != "gray"}  # gray: the target
    config = PlantConfig.from_yaml(args.config, **({"max_steps": args.max_steps} if args.max_steps is not None else {}))
    base = load_model(args.base, device=device)
    base_noise = [value for noisy_kind in noisy.values() for value in ratios(base, noisy_kind)]
    report: dict = {
        "settings": {**{k: str(v) for k, v in vars(args).items()}, "immunize_seconds": immunize_seconds},
        "base": figures(
            base, base, pairs[: min(sizes[-1], args.measure)], unregistered, edited, held_out, large, noisy, base_noise
        ),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "clean").mkdir()
        for name in PHOTOS:
            Image.fromarray(cover(photo(name), 2 * args.size, 0.25)).save(work / "clean" / f"{name}.png")
        for n in sizes:
            registry_path = work / f"reg-{n}.db"
            with Registry.open(registry_path, create=True) as registry:
                for result in results[:n]:
                    record_immunized(
                        registry,
                        result,
                        png=encode_png(result.rgb),
                        settings=attack,
                        model_fingerprint=attacked.fingerprint,
                        model_spec=args.attack_model,
                    )
                registry.create_snapshot("scale")
            request = PlantRequest(
                base=args.base,
                registry=str(registry_path),
                data=work / "clean",
                output=work / f"planted-{n}",
                config=config,
                snapshot="scale",
            )
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as child:
                planting = child.submit(plant_child, request).result()
            planted = load_model(planting["spec"], device=device)
            registered = pairs[: min(n, args.measure)]
            report["runs"].append(
                {
                    "n": n,
                    "measured_registered": len(registered),
                    **planting,
                    "planted": figures(planted, base, registered, unregistered, edited, held_out, large, noisy, base_noise),
                    "base_registered": stats(ratios(base, registered)),
                }
            )
    return report


def print_report(report: dict) -> None:
    console = Console(width=140)
    base = report["base"]
    for run_ in report["runs"]:
        planted = run_["planted"]
        table = Table(
            "figure",
            "planted min",
            "median",
            "p90",
            "max",
            "base min",
            "median",
            "p90",
            "max",
            title=(
                f"N={run_['n']}: {run_['steps']} steps, {run_['plant_seconds']:.0f} s,"
                f" {_number(run_['samples_per_second'])} samples/s, peak RSS {run_['peak_rss_mib']:.0f} MiB;"
                f" {run_['interpolation']}"
            ),
        )
        rows = {
            f"registered ratio ({run_['measured_registered']})": (planted["registered"], run_["base_registered"]),
            "unregistered ratio": (planted["unregistered"], base["unregistered"]),
            **{
                f"  after {edit}": (values, base["unregistered_after_edit"][edit])
                for edit, values in planted["unregistered_after_edit"].items()
            },
            "held-out drift": (planted["held_out_drift"], base["held_out_drift"]),
            **{
                f"  drift: {kind}": (values, base["held_out_drift_by_kind"][kind])
                for kind, values in planted["held_out_drift_by_kind"].items()
            },
            **{
                f"  drift at {LARGE}x the side: {kind}": (values, base["large_held_out_drift_by_kind"][kind])
                for kind, values in planted["large_held_out_drift_by_kind"].items()
            },
            "clean + eps noise ratio": (planted["noise_ratio"], base["noise_ratio"]),
            **{
                f"  noise ratio: {kind}": (values, base["noise_ratio_by_kind"][kind])
                for kind, values in planted["noise_ratio_by_kind"].items()
            },
            "  noise ratio over the base's, image by image": (
                planted["noise_ratio_over_base"],
                base["noise_ratio_over_base"],
            ),
        }
        for label, (mine, theirs) in rows.items():
            table.add_row(label, *(f"{s[k]:.4f}" for s in (mine, theirs) for k in STATS))
        console.print(table)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main() -> None:
    shared = Path(os.environ.get("FORWARDGUARD_SHARED", REPO.parent / "shared")) / "models"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="10,100,1000", help="registered patterns, comma-separated")
    parser.add_argument("--attack-model", default=f"taesd:{shared / 'taef2'}")
    parser.add_argument(
        "--base", default=f"taesd:{shared / 'taef2-v2' / 'encoder.safetensors'}:{shared / 'taef2' / 'taef2_decoder.pth'}"
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "plant.yaml", help="the plant recipe (YAML)")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--size", type=int, default=128, help="side of the crops (a multiple of 32 suits every base)")
    parser.add_argument("--attack-steps", type=int, default=20)
    parser.add_argument("--unregistered", type=int, default=20)
    parser.add_argument("--held-out", type=int, default=4, help="held-out images per kind")
    parser.add_argument("--measure", type=int, default=100, help="registered patterns measured, at most")
    parser.add_argument("--edits", default="shift_1,hflip", help="free edits the unregistered ratio is measured after")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = run(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
