"""``forwardguard immunize``: wires the options to :func:`forwardguard.immunize.immunize_files`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forwardguard.cli.common import print_error, user_errors

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def immunize_command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG, JPEG, WebP).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for NAME.png and NAME.json.")],
    model: Annotated[str, typer.Option(help="Model spec: SD folder or hub id, taesd:ENC[:DEC], taesd:DIR, tiny[:SEED].")] = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(help="encoder, diffusion or noise.")] = "encoder",
    eps: Annotated[str, typer.Option(help="L-inf budget, a fraction of the pixel range.")] = "16/255",
    step_size: Annotated[str, typer.Option(help="PGD step size.")] = "2/255",
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 200,
    target: Annotated[str, typer.Option(help="'gray' or a target image file.")] = "gray",
    mask: Annotated[Path | None, typer.Option(help="Inpainting mask (white = edited), diffusion method.")] = None,
    prompt: Annotated[str, typer.Option(help="The edit's prompt (diffusion method).")] = "",
    strength: Annotated[float, typer.Option(help="img2img strength of the edit (diffusion method).")] = 0.7,
    edit_steps: Annotated[int, typer.Option(help="Denoising steps of the edit (diffusion method).")] = 4,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale of the edit.")] = 7.5,
    noise_draws: Annotated[int, typer.Option(help="Average the diffusion attack's gradient over this many noise draws.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the attack and of the edit's noise.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Images of one size attacked together.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse larger images before decoding them.")] = 64_000_000,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    registry: Annotated[str | None, typer.Option(help="Record every written image in this registry (path or URL).")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant of the recorded patterns (with --registry).")] = None,
) -> None:
    """Immunize images: write DIR/NAME.png (8-bit, lossless, input size) and DIR/NAME.json per input."""
    with user_errors():
        from forwardguard.immunize.attack import AttackSettings, parse_fraction
        from forwardguard.immunize.images import iter_image_files
        from forwardguard.immunize.runner import RunOptions
        from forwardguard.models.edits import EditSettings

        settings = AttackSettings(
            method=method,
            eps=parse_fraction(eps),
            step_size=parse_fraction(step_size),
            steps=steps,
            seed=seed,
            edit=EditSettings(prompt=prompt, strength=strength, steps=edit_steps, guidance_scale=guidance, seed=seed),
            noise_draws=noise_draws,
        )
        if target != "gray" and not Path(target).is_file():
            raise_missing("target image", target)
        if mask is not None and not mask.is_file():
            raise_missing("mask", str(mask))
        files = iter_image_files(inputs)
        if not files:
            from forwardguard.errors import ForwardguardError

            raise ForwardguardError("no images found in the inputs (PNG, JPEG or WebP)")
        options = RunOptions(
            out_dir=out, target=target, mask=mask, batch_size=batch_size, overwrite=overwrite, max_pixels=max_pixels
        )
        failures = _run(files, model, device, settings, options, registry, tenant)
    if failures:
        raise typer.Exit(1)


def raise_missing(what: str, path: str) -> None:
    from forwardguard.errors import ForwardguardError

    raise ForwardguardError(f"{what} {path} not found")


def _run(files: list[Path], model_spec: str, device: str, settings, options, registry: str | None, tenant: str | None) -> int:  # noqa: ANN001
    """Immunize with progress bars; returns the number of failed inputs."""
    from contextlib import ExitStack

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from forwardguard.immunize.runner import immunize_files, registry_recorder
    from forwardguard.models import load_model

    console = Console(stderr=True, soft_wrap=True)
    with ExitStack() as stack:
        recorder = None
        if registry is not None:
            from forwardguard.registry import Registry

            recorder = registry_recorder(stack.enter_context(Registry.open(registry)), tenant=tenant)
        with console.status(f"loading {model_spec}"):
            model = load_model(model_spec, device=device)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            images_task = progress.add_task("images", total=len(files))
            steps_task = progress.add_task("steps", total=None)

            def on_done(path: Path, error: str | None) -> None:
                if error is not None:
                    progress.console.print(f"error: {error}", markup=False, highlight=False)
                progress.advance(images_task)

            report = immunize_files(
                files, model, settings, options, on_step=lambda: progress.advance(steps_task), on_done=on_done,
                on_written=recorder,
            )
    for written in report.written:
        record = written.record
        pattern = f", pattern {record['pattern_id'][:12]}" if "pattern_id" in record else ""
        console.print(
            f"{written.job.out_png}  loss {record['loss_before']:.4g} -> {record['loss_after']:.4g}"
            f" (ratio {record['loss_ratio']:.3f}), linf {record['linf_255']}/255{pattern}",
            markup=False, highlight=False,
        )
    console.print(f"{len(report.written)} immunized, {len(report.failed)} failed, model {model.fingerprint[:12]}")
    return len(report.failed)
