"""Immunization benchmark: forwardguard's encoder and diffusion attacks beside a naive loop, in one run.

    .venv/bin/python bench/immunize_bench.py                      # CPU: TAEF2 at 256x256, tiny at 64x64, 100 steps
    .venv/bin/python bench/immunize_bench.py --gpu --json out.json  # CUDA: SD-1.5-shaped, 512x512, batch 1 and 8

Every row runs in a fresh subprocess, so that its peak memory is its own. A row is one attack
(``encoder``: paper algorithm 1; ``diffusion``: algorithm 2 through an img2img edit) by one
implementation:

- ``forwardguard``: :func:`forwardguard.immunize.immunize` with its defaults (the ``momentum`` step
  rule; bf16 autocast and channels_last on CUDA), batched (``--batch``);
- ``naive``: the loop of the paper's notebooks: one image at a time, fp32, a fresh graph per step,
  ``(model(X_adv) - target).norm()``, ``torch.autograd.grad``, a signed step, clamps; for the
  diffusion attack an img2img written with the same components and the same noise draws, without
  gradient checkpointing.

Both start from the same photographs and are scored the same way, one image at a time, by this
script rather than by the code it measures: the final loss is the paper's objective of the 8-bit
result (mean squared error of the latent against the gray image's latent, or of the edited image
against the gray image). Columns: seconds per image, PGD steps per second (per image: steps x images /
seconds), peak memory (the weights the attack uses plus its peak working memory: CUDA max
allocated, or on the CPU the increase of the process's max RSS), TFLOP/s (the FLOPs of one naive
step, forward and backward, counted by torch's FlopCounterMode, times the steps taken, over the
time), the final loss. CPU rows are not warmed up (a warm-up would hide the attack's peak RSS);
CUDA rows are, with one step.

A second table compares the step rules: forwardguard with ``--step-rule paper`` for ``--rule-steps``
(200, the paper's) steps, then with the default rule stopped early (checked every step) once its loss
reaches the paper rule's final loss: the steps and the time each took, and their ratios.

To add an implementation, write a function with the signature of :func:`forwardguard_attack` and add
it to ``IMPLEMENTATIONS``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from forwardguard.demo import demo_photos
from forwardguard.errors import ForwardguardError
from forwardguard.images import LoadedImage, read_image
from forwardguard.immunize import AttackSettings, immunize
from forwardguard.immunize.compute import ComputeOptions
from forwardguard.immunize.step_rules import DEFAULT_RULE
from forwardguard.models import load_model, resolve_device
from forwardguard.models.base import ImageModel
from forwardguard.models.edits import EditSettings, img2img
from forwardguard.models.stable_diffusion import DiffusionModel

REPO_ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("encoder", "diffusion")
SD15_SHAPED = "sd15-shaped"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 peaks (SXM parts), by a word of ``torch.cuda.get_device_name()``: the share of peak reported."""


@dataclass(frozen=True)
class Case:
    """One row of the table: what to run, where, and how big."""

    attack: str
    implementation: str
    model: str
    device: str
    size: int
    batch: int
    images: int
    steps: int
    edit_steps: int
    strength: float
    guidance: float
    step_rule: str = DEFAULT_RULE
    target_loss: float | None = None
    precision: str = "auto"
    compile: bool = False

    @property
    def denoising_steps(self) -> int:
        """UNet evaluations per edit that the gradient goes through (img2img runs steps x strength)."""
        return min(int(self.edit_steps * self.strength), self.edit_steps)


# ----------------------------------------------------------------------------------------------
# The implementations: (model, clean (N, H, W, 3) uint8, settings, batch, compute)
#   -> (immunized uint8, PGD steps run over all images)
# ----------------------------------------------------------------------------------------------


def forwardguard_attack(
    model: ImageModel, clean: np.ndarray, settings: AttackSettings, batch: int, compute: ComputeOptions
) -> tuple[np.ndarray, int]:
    """forwardguard's public API, ``batch`` images per call."""
    results, steps = [], 0
    for start in range(0, len(clean), batch):
        chunk = [LoadedImage(rgb=rgb, alpha=None, path=None) for rgb in clean[start : start + batch]]
        immunized = immunize(chunk, model, settings, compute=compute)
        results += [result.rgb for result in immunized]
        steps += sum(result.steps_run for result in immunized)
    return np.stack(results), steps


def naive_attack(
    model: ImageModel, clean: np.ndarray, settings: AttackSettings, batch: int, compute: ComputeOptions
) -> tuple[np.ndarray, int]:
    """The paper's notebooks: a Python loop over images, batch 1 and fp32 whatever ``batch`` and ``compute`` say."""
    del batch, compute  # the notebooks attack one image at a time, in float32
    results = []
    for rgb in clean:
        X = _to_tensor(rgb, model.device)
        loss_fn = _naive_loss(model, settings, target=torch.full_like(X, 0.5))
        X_adv = _naive_pgd(X, loss_fn, eps=settings.eps, step_size=settings.step_size, iters=settings.steps)
        results.append(torch.round(X_adv[0] * 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy())
    return np.stack(results), settings.steps * len(clean)


Implementation = Callable[[ImageModel, np.ndarray, AttackSettings, int, ComputeOptions], tuple[np.ndarray, int]]
IMPLEMENTATIONS: dict[str, Implementation] = {
    "forwardguard": forwardguard_attack,
    "naive": naive_attack,
}


def _naive_pgd(X: torch.Tensor, loss_fn, *, eps: float, step_size: float, iters: int) -> torch.Tensor:
    """The notebooks' L-inf PGD as the paper's algorithms state it: start at X, a fixed signed step.

    (The notebooks' encoder loop also starts at a random point of the ball and shrinks its step.)
    """
    X_adv = X.clone().detach()
    for _ in range(iters):
        X_adv.requires_grad_(True)
        loss = loss_fn(X_adv)
        (grad,) = torch.autograd.grad(loss, [X_adv])
        X_adv = X_adv - grad.detach().sign() * step_size
        X_adv = torch.minimum(torch.maximum(X_adv, X - eps), X + eps)
        X_adv = torch.clamp(X_adv, min=0, max=1).detach()
    return X_adv


def _naive_loss(model: ImageModel, settings: AttackSettings, target: torch.Tensor):
    """``loss(X_adv)`` as the notebooks write it: the L2 norm of the difference (same sign of gradient as the MSE)."""
    if settings.method == "encoder":
        with torch.no_grad():
            target_latent = model.encode(target)
        return lambda X_adv: (model.encode(X_adv) - target_latent).norm()
    return lambda X_adv: (_naive_img2img(model, X_adv, settings.edit) - target).norm()


def _naive_img2img(model, X: torch.Tensor, edit: EditSettings) -> torch.Tensor:
    """img2img in the notebooks' style (text embeddings every call, no checkpointing), same noise as forwardguard's."""
    from diffusers import DDIMScheduler  # as forwardguard.models.edits: diffusers only when a diffusion attack runs

    tokenizer, text_encoder, unet, vae = model.tokenizer, model.text_encoder, model.unet, model.vae
    guided = edit.guidance_scale > 1

    def embed(prompt: str) -> torch.Tensor:
        ids = tokenizer(
            [prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return text_encoder(ids.to(X.device))[0]

    text_embeddings = torch.cat([embed(""), embed(edit.prompt)]) if guided else embed(edit.prompt)
    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(edit.steps, device=X.device)
    init_timestep = min(int(edit.steps * edit.strength), edit.steps)
    timesteps = scheduler.timesteps[edit.steps - init_timestep :]
    generator = torch.Generator().manual_seed(edit.seed)

    latents = vae.encode(X * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator).to(X.device)
    variance_noise = [torch.randn(latents.shape, generator=generator).to(X.device) for _ in timesteps]
    latents = scheduler.add_noise(latents, noise, timesteps[:1])
    for i, t in enumerate(timesteps):
        latent_model_input = torch.cat([latents] * 2) if guided else latents
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)
        noise_pred = unet(latent_model_input, t, encoder_hidden_states=text_embeddings).sample
        if guided:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + edit.guidance_scale * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(noise_pred, t, latents, eta=edit.eta, variance_noise=variance_noise[i]).prev_sample
    image = vae.decode(latents / vae.config.scaling_factor).sample
    return ((image + 1) / 2).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# One row, in its own process
# ----------------------------------------------------------------------------------------------


def run_case(case: Case) -> dict:
    """Load, attack (timed, peak memory), then score the result and count the FLOPs of one step."""
    device = torch.device(case.device)
    model = _load(case.model, device)
    _check_fits(model, case)
    clean = _photos(case.images, case.size)
    edit = EditSettings(strength=case.strength, steps=case.edit_steps, guidance_scale=case.guidance)
    settings = AttackSettings(
        method=case.attack,
        steps=case.steps,
        edit=edit,
        step_rule=case.step_rule,
        target_loss=case.target_loss,
        check_every=1,
    )
    compute = ComputeOptions(precision=case.precision, compile=case.compile)
    attack = IMPLEMENTATIONS[case.implementation]
    if device.type == "cuda":  # also where torch.compile compiles
        attack(model, clean[: case.batch], replace(settings, steps=1, target_loss=None), case.batch, compute)
    memory = _PeakMemory(device)
    start = time.perf_counter()
    immunized, steps_run = attack(model, clean, settings, case.batch, compute)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    working_mb = memory.peak_mb()
    used = [model.latent_encoder] if case.attack == "encoder" else list(model.modules().values())
    weights_mb = sum(p.numel() * p.element_size() for module in used for p in module.parameters()) / 2**20
    loss_before, loss_after = _losses(model, settings, clean, immunized)
    flops = _step_flops(model, settings, clean[0])
    return {
        **asdict(case),
        "denoising_steps": case.denoising_steps if case.attack == "diffusion" else None,
        "seconds": seconds,
        "seconds_per_image": seconds / case.images,
        "steps_run": steps_run / case.images,
        "steps_per_second": steps_run / seconds,
        "peak_memory_mb": weights_mb + working_mb,
        "weights_mb": weights_mb,
        "working_memory_mb": working_mb,
        "flops_per_step": flops,
        "tflops": flops * steps_run / seconds / 1e12,
        "loss_before": loss_before,
        "final_loss": loss_after,
        "linf_255": int(np.abs(immunized.astype(int) - clean).max()),
    }


def _load(spec: str, device: torch.device) -> ImageModel:
    if spec == SD15_SHAPED:
        from sd15_shaped import sd15_shaped_model  # bench/ is this script's folder, first on sys.path

        return sd15_shaped_model(device)
    return load_model(spec, device=device)


def _check_fits(model: ImageModel, case: Case) -> None:
    """The naive loop does not pad: the size must suit the model as it is."""
    if case.attack == "diffusion" and not isinstance(model, DiffusionModel):
        raise ForwardguardError(f"the diffusion attack needs a Stable Diffusion model; {case.model!r} is not one")
    multiple = model.edit_multiple if case.attack == "diffusion" else model.encode_multiple
    if case.size % multiple:
        raise ForwardguardError(f"size {case.size} is not a multiple of {multiple}, which {case.model!r} needs here")


def _photos(count: int, size: int) -> np.ndarray:
    """``count`` of forwardguard's bundled photographs (cycled), resized to size x size: (N, H, W, 3) uint8."""
    paths = demo_photos()
    resized = []
    for index in range(count):
        image = Image.fromarray(read_image(paths[index % len(paths)]).rgb)
        resized.append(np.asarray(image.resize((size, size), Image.Resampling.BICUBIC)))
    return np.stack(resized)


def _to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], in the memory layout of ``immunize``'s batches (kernels may round differently)."""
    return torch.from_numpy(rgb[None].copy()).permute(0, 3, 1, 2).float().div(255).to(device)


class _PeakMemory:
    """Peak working memory from now on: CUDA max allocated, or the rise of the process's max RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
        else:
            self.base = _max_rss_bytes()

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _max_rss_bytes()
        return (peak - self.base) / 2**20


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def _losses(model: ImageModel, settings: AttackSettings, clean: np.ndarray, immunized: np.ndarray) -> tuple[float, float]:
    """Mean loss of the clean and of the immunized 8-bit images, one image at a time, the same for every row.

    The paper's objective, written here rather than taken from forwardguard (the thing measured):
    the mean squared error of the latent against the gray image's latent, or of the edited image
    (forwardguard's img2img, which the naive one equals) against the gray image.
    """

    def loss(rgb: np.ndarray) -> float:
        image = _to_tensor(rgb, model.device)
        target = torch.full_like(image, 0.5)
        if settings.method == "encoder":
            return float((model.encode(image) - model.encode(target)).pow(2).mean())
        return float((img2img(model, image, settings.edit) - target).pow(2).mean())

    with torch.no_grad():
        before = [loss(rgb) for rgb in clean]
        after = [loss(rgb) for rgb in immunized]
    return sum(before) / len(before), sum(after) / len(after)


def _step_flops(model: ImageModel, settings: AttackSettings, rgb: np.ndarray) -> int:
    """FLOPs of one PGD step on one image (forward and backward, no recomputation): the naive step's."""
    X = _to_tensor(rgb, model.device)
    loss_fn = _naive_loss(model, settings, target=torch.full_like(X, 0.5))
    X.requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        loss_fn(X).backward()  # not autograd.grad: the counter's module hooks refuse it on a leaf input
    return counter.get_total_flops()


# ----------------------------------------------------------------------------------------------
# The run: plan the rows, run each in a subprocess, print the table
# ----------------------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[Case]:
    """Every row: per attack, forwardguard at each batch size, then the naive loop (batch 1)."""
    cases = []
    for attack in args.attack:
        for implementation in args.impl:
            naive = implementation == "naive"
            for batch in [1] if naive else args.batch:
                images = args.naive_images if naive else args.images
                rule = "paper" if naive else DEFAULT_RULE  # the naive loop is the paper's rule, written as the notebooks do
                cases.append(_case(args, attack, implementation, batch=batch, images=images, steps=args.steps, step_rule=rule))
    return cases


def _case(args: argparse.Namespace, attack: str, implementation: str, **fields) -> Case:
    model, size = (args.model, args.size) if attack == "encoder" else (args.diffusion_model, args.diffusion_size)
    return Case(
        attack=attack,
        implementation=implementation,
        model=model,
        device=args.device,
        size=size,
        edit_steps=args.edit_steps,
        strength=args.strength,
        guidance=args.guidance,
        precision=args.precision,
        compile=args.compile,
        **fields,
    )


def run_step_rules(args: argparse.Namespace) -> list[dict]:
    """Per attack: the paper rule for ``--rule-steps``, then the default rule until it reaches that loss."""
    rows = []
    for attack in args.rule_attack:
        paper = _case(args, attack, "forwardguard", batch=1, images=1, steps=args.rule_steps, step_rule="paper")
        _announce("step rules", paper)
        paper_row = run_in_subprocess(paper)
        rows.append(paper_row)
        if "error" in paper_row:
            continue
        fast = replace(paper, step_rule=DEFAULT_RULE, target_loss=paper_row["final_loss"])
        _announce("step rules", fast)
        fast_row = run_in_subprocess(fast)
        if "error" not in fast_row:
            fast_row["steps_vs_paper"] = fast_row["steps_run"] / paper_row["steps_run"]
            fast_row["time_vs_paper"] = fast_row["seconds"] / paper_row["seconds"]
            fast_row["reached"] = fast_row["final_loss"] <= paper_row["final_loss"]
        rows.append(fast_row)
    return rows


def compare_with_naive(rule_rows: list[dict], rows: list[dict]) -> None:
    """Add ``time_vs_naive`` to the default rule's rows where the main table timed the naive loop for as many steps."""

    def key(row: dict) -> tuple:
        return row["attack"], row["model"], row["size"], row["steps"]

    for row in rule_rows:
        naive = [
            other
            for other in rows
            if other["implementation"] == "naive" and "error" not in other and "time_vs_paper" in row and key(other) == key(row)
        ]
        if naive:
            row["time_vs_naive"] = row["seconds"] / naive[0]["seconds_per_image"]


def _announce(phase: str, case: Case) -> None:
    target = f", until loss {case.target_loss:.4g}" if case.target_loss is not None else ""
    rule = "" if case.implementation == "naive" else f" ({case.step_rule} rule)"
    print(
        f"[{phase}] {case.attack} {case.implementation}{rule}: {case.model} {case.size}x{case.size}, "
        f"batch {case.batch}, {case.images} image(s), at most {case.steps} steps{target}",
        file=sys.stderr,
        flush=True,
    )


def run_in_subprocess(case: Case) -> dict:
    """Run one row in a fresh interpreter; a failed row (an out-of-memory, say) is reported, not raised."""
    command = [sys.executable, str(Path(__file__).resolve()), "--row", json.dumps(asdict(case))]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr)
        lines = [line for line in completed.stderr.splitlines() if line.strip()]
        return {**asdict(case), "error": lines[-1] if lines else f"exit status {completed.returncode}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def environment(args: argparse.Namespace) -> dict:
    info = {
        "mode": "gpu" if args.gpu else "cpu",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "peak_tflops": args.peak_tflops,
        "precision": args.precision,
        "compile": args.compile,
        "load_average_1m": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "argv": sys.argv[1:],
    }
    if args.device == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return info


def peak_tflops(args: argparse.Namespace) -> float | None:
    """``--peak-tflops``, else the dense bf16 peak of a known GPU (an H100, H200 or A100), else None."""
    if args.peak_tflops is not None or args.device != "cuda":
        return args.peak_tflops
    name = torch.cuda.get_device_name()
    return next((peak for word, peak in PEAK_BF16_TFLOPS.items() if word in name), None)


def print_table(rows: list[dict], peak_tflops: float | None) -> None:
    table = Table(
        "attack",
        "impl",
        "model",
        "size",
        "batch",
        "images",
        "steps",
        "s/image",
        "steps/s",
        "peak MB",
        "TFLOP/s",
        *(["% peak"] if peak_tflops else []),
        "final loss",
        title="immunization: forwardguard beside the naive loop",
        caption="peak MB: weights the attack uses + peak working memory (CUDA max allocated; CPU max-RSS rise)",
    )
    for row in rows:
        model = _label(row["model"]) + (f", {row['denoising_steps']}-step edit" if row.get("denoising_steps") else "")
        head = [
            row["attack"],
            row["implementation"],
            model,
            f"{row['size']}x{row['size']}",
            str(row["batch"]),
            str(row["images"]),
            str(row["steps"]),
        ]
        if "error" in row:
            table.add_row(*head, "[red]failed[/red]", *[""] * (len(table.columns) - len(head) - 1))
            continue
        share = [f"{100 * row['tflops'] / peak_tflops:.1f}"] if peak_tflops else []
        table.add_row(
            *head,
            f"{row['seconds_per_image']:.3g}",
            f"{row['steps_per_second']:.3g}",
            f"{row['peak_memory_mb']:.0f}",
            f"{row['tflops']:.3g}",
            *share,
            f"{row['final_loss']:.4g}",
        )
    console = Console(width=max(Console().width, 160))
    console.print(table)
    for row in rows:
        if "error" in row:
            what = f"{row['attack']} {row['implementation']} batch {row['batch']}"
            console.print(f"[red]failed[/red] {what}: {row['error']}")


def print_rules_table(rows: list[dict]) -> None:
    table = Table(
        "attack",
        "model",
        "size",
        "step rule",
        "stops at",
        "steps",
        "seconds",
        "final loss",
        "steps vs paper",
        "time vs paper",
        "time vs naive",
        title="step rules: the default rule until it reaches the paper rule's final loss",
        caption="stops at: the paper rule's final loss (checked every step); vs: default rule / paper rule, "
        "or / the naive loop's time for as many steps (when the first table ran it, --steps = --rule-steps)",
    )
    for row in rows:
        head = [row["attack"], _label(row["model"]), f"{row['size']}x{row['size']}", row["step_rule"]]
        target = f"{row['target_loss']:.4g}" if row.get("target_loss") is not None else f"({row['steps']} steps)"
        if "error" in row:
            table.add_row(*head, target, "[red]failed[/red]", *[""] * 5)
            continue
        ratios = [f"{row[key]:.2f}" if key in row else "" for key in ("steps_vs_paper", "time_vs_paper", "time_vs_naive")]
        loss = f"{row['final_loss']:.4g}" + ("" if row.get("reached", True) else " (not reached)")
        table.add_row(*head, target, f"{row['steps_run']:.0f}", f"{row['seconds']:.3g}", loss, *ratios)
    Console(width=max(Console().width, 160)).print(table)


def _label(spec: str) -> str:
    """A model spec short enough for the table, paths cut to their last part (the JSON keeps the whole spec)."""
    prefix, _, rest = spec.partition(":")
    if prefix == "taesd":
        return f"taesd:{Path(rest.split(':')[0]).name}"
    return Path(spec).name or spec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA, SD-1.5-shaped components at 512x512, batch 1 and 8")
    parser.add_argument("--model", help="encoder attack's model spec (default: TAEF2 in the shared folder; --gpu: sd15-shaped)")
    parser.add_argument("--diffusion-model", help="diffusion attack's model spec (default: tiny; --gpu: sd15-shaped)")
    parser.add_argument("--attack", action="append", choices=ATTACKS, help="run only this attack (repeatable)")
    parser.add_argument("--impl", action="append", choices=list(IMPLEMENTATIONS), help="run only this one (repeatable)")
    parser.add_argument("--size", type=int, help="image side of the encoder attack (default 256; --gpu 512)")
    parser.add_argument("--diffusion-size", type=int, help="image side of the diffusion attack (default 64; --gpu 512)")
    parser.add_argument("--batch", type=_sizes, help="forwardguard batch sizes, comma-separated (default 1; --gpu 1,8)")
    parser.add_argument("--images", type=int, help="images per forwardguard row (default: the largest batch)")
    parser.add_argument("--naive-images", type=int, default=1, help="images per naive row (default 1)")
    parser.add_argument("--steps", type=int, help="PGD steps (default 100; --gpu 200, the paper's)")
    parser.add_argument("--edit-steps", type=int, default=4, help="img2img steps of the diffusion attack's edit")
    parser.add_argument("--strength", type=float, default=1.0, help="img2img strength (1: every edit step runs)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance of the edit (default 7.5)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="forwardguard's precision (auto: bf16 autocast on CUDA, fp32 on the CPU)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile forwardguard's attacked modules")
    parser.add_argument(
        "--rule-steps",
        type=int,
        default=200,
        help="the paper rule's steps in the step-rules table (default 200; 0 skips the table)",
    )
    parser.add_argument(
        "--rule-attack", action="append", choices=ATTACKS, help="attack of the step-rules table (repeatable; default encoder)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's peak TFLOP/s, for the share reached (default: known for H100, H200, A100)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows and the environment to this JSON file")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one Case (JSON) and print its row
    args = parser.parse_args(argv)
    if args.row:
        return args

    def default(value, cpu, gpu):
        return value if value is not None else (gpu if args.gpu else cpu)

    args.device = "cuda" if args.gpu else "cpu"
    args.attack = args.attack or list(ATTACKS)
    args.impl = args.impl or list(IMPLEMENTATIONS)
    args.model = args.model or (SD15_SHAPED if args.gpu else _default_encoder_model(parser))
    args.diffusion_model = default(args.diffusion_model, "tiny", SD15_SHAPED)
    args.size = default(args.size, 256, 512)
    args.diffusion_size = default(args.diffusion_size, 64, 512)
    args.batch = default(args.batch, [1], [1, 8])
    args.images = max(args.batch) if args.images is None else args.images
    args.steps = default(args.steps, 100, 200)
    args.rule_attack = args.rule_attack or ["encoder"]
    if args.rule_steps < 0:
        parser.error("--rule-steps must be at least 0")
    for name in ("size", "diffusion_size", "images", "naive_images", "steps", "edit_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(int(args.edit_steps * args.strength), args.edit_steps) < 1:
        parser.error("--edit-steps x --strength must leave at least one denoising step")
    return args


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be at least 1")
    return sizes


def _default_encoder_model(parser: argparse.ArgumentParser) -> str:
    """TAEF2 in the shared folder: FORWARDGUARD_SHARED, else ../shared beside the checkout (as the tests)."""
    shared = Path(os.environ.get("FORWARDGUARD_SHARED", REPO_ROOT.parent / "shared"))
    taef2 = shared / "models" / "taef2"
    if not taef2.is_dir():
        parser.error(f"TAEF2 weights not found at {taef2}: set FORWARDGUARD_SHARED or give --model SPEC")
    return f"taesd:{taef2}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.row:
        print(json.dumps(run_case(Case(**json.loads(args.row)))))
        return 0

    try:
        resolve_device(args.device)
    except ForwardguardError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    env = environment(args)
    if env["load_average_1m"] > (env["cpu_count"] or 1):
        load = f"load average {env['load_average_1m']:.1f} on {env['cpu_count']} CPUs"
        print(f"warning: {load}: timings will be slow and noisy", file=sys.stderr)
    cases = plan(args)
    rows = []
    for index, case in enumerate(cases, 1):
        _announce(f"{index}/{len(cases)}", case)
        rows.append(run_in_subprocess(case))
    rule_rows = run_step_rules(args) if args.rule_steps else []
    compare_with_naive(rule_rows, rows)
    env["peak_tflops"] = peak_tflops(args)
    print_table(rows, env["peak_tflops"])
    if rule_rows:
        print_rules_table(rule_rows)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows, "step_rules": rule_rows}, indent=2) + "\n")
    return 1 if any("error" in row for row in rows + rule_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
