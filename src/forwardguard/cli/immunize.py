"""``forwardguard immunize``: wires the options to :func:`forwardguard.immunize.immunize_files`.

Under ``accelerate launch ... -m forwardguard immunize ...`` (or torchrun) every process
runs this command and immunizes its own share of the files (:mod:`forwardguard.immunize.distributed`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forwardguard.cli.common import user_errors
from forwardguard.errors import ForwardguardError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def immunize_command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG, JPEG, WebP).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for NAME.png and NAME.json.")],
    model: Annotated[
        str, typer.Option(help="Model spec: SD folder or hub id, taesd:ENC[:DEC], taesd:DIR, tiny[:SEED].")
    ] = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(help="encoder, diffusion or noise.")] = "encoder",
    eps: Annotated[str, typer.Option(help="L-inf budget, a fraction of the pixel range.")] = "16/255",
    step_size: Annotated[
        str, typer.Option(help="PGD step size of the paper rule (the default rule scales its steps with eps).")
    ] = "2/255",
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 200,
    target: Annotated[str, typer.Option(help="'gray' or a target image file.")] = "gray",
    mask: Annotated[Path | None, typer.Option(help="Inpainting mask (white = edited), diffusion method.")] = None,
    prompt: Annotated[str, typer.Option(help="The edit's prompt (diffusion method).")] = "",
    strength: Annotated[float, typer.Option(help="img2img strength of the edit (diffusion method).")] = 0.7,
    edit_steps: Annotated[int, typer.Option(help="Denoising steps of the edit (diffusion method).")] = 4,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale of the edit.")] = 7.5,
    noise_draws: Annotated[int, typer.Option(help="Average the diffusion attack's gradient over this many noise draws.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the attack and of the edit's noise.")] = 0,
    step_rule: Annotated[
        str, typer.Option(help="momentum (faster, the default) or paper (the paper's fixed signed step, exactly).")
    ] = "momentum",
    target_loss: Annotated[float | None, typer.Option(help="Stop an image early once its loss is at most this.")] = None,
    target_ratio: Annotated[
        float | None, typer.Option(help="Stop an image early once its loss is at most this times its initial loss.")
    ] = None,
    check_every: Annotated[int, typer.Option(help="Steps between early-stopping checks.")] = 10,
    robust: Annotated[
        bool,
        typer.Option(
            help="Robust immunization: expectation over transforms (JPEG, resize, crop, blur, noise, flip, rotation, random shifts and crops) in every step."
        ),
    ] = False,
    robust_mix: Annotated[
        str | None,
        typer.Option(
            help="The robust mix, comma-separated transform names (repeats weight one; + chains, e.g. jpeg_q75+rshift_7); implies --robust."
        ),
    ] = None,
    robust_draws: Annotated[int, typer.Option(help="Transforms averaged per PGD step with --robust.")] = 1,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images attacked together (sizes that pad to the same shape share a batch).")
    ] = 1,
    bucket_growth: Annotated[
        float, typer.Option(min=1.0, help="Let a batch pad an image up to this times its own padded area (faster, less exact).")
    ] = 1.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA, else fp32), fp32 or bf16.")] = "auto",
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--no-channels-last", help="Channels-last memory format (default: on CUDA only).", show_default=False
        ),
    ] = None,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="torch.compile the attacked modules (pays off on many images).")
    ] = False,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse larger images before decoding them.")] = 64_000_000,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    resume: Annotated[
        bool, typer.Option(help="Skip inputs whose outputs are complete (a restarted run); redo partial ones.")
    ] = False,
    registry: Annotated[str | None, typer.Option(help="Record every written image in this registry (path or URL).")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant of the recorded patterns (with --registry).")] = None,
) -> None:
    """Immunize images: write DIR/NAME.png (8-bit, lossless, input size) and DIR/NAME.json per input."""
    with user_errors():
        from forwardguard.images import iter_image_files
        from forwardguard.immunize.attack import AttackSettings
        from forwardguard.immunize.compute import ComputeOptions
        from forwardguard.immunize.distributed import Shard
        from forwardguard.immunize.robust import mix_names
        from forwardguard.immunize.runner import RunOptions
        from forwardguard.models.edits import EditSettings
        from forwardguard.numbers import parse_number

        settings = AttackSettings(
            method=method,
            eps=parse_number(eps, what="--eps"),
            step_size=parse_number(step_size, what="--step-size"),
            steps=steps,
            seed=seed,
            edit=EditSettings(prompt=prompt, strength=strength, steps=edit_steps, guidance_scale=guidance, seed=seed),
            noise_draws=noise_draws,
            step_rule=step_rule,
            target_loss=target_loss,
            target_ratio=target_ratio,
            check_every=check_every,
            robust=mix_names(robust, robust_mix),
            robust_draws=robust_draws,
        )
        compute = ComputeOptions(precision=precision, channels_last=channels_last, compile=compile_model)
        options = RunOptions(
            out_dir=out,
            target=target,
            mask=mask,
            batch_size=batch_size,
            bucket_growth=bucket_growth,
            overwrite=overwrite,
            max_pixels=max_pixels,
            resume=resume,
            compute=compute,
        )
        files = iter_image_files(inputs)
        if not files:
            raise ForwardguardError("no images found in the inputs (PNG, JPEG or WebP)")
        shard = Shard.from_launcher(device)
        failures = _run(shard.select(files), model, shard, settings, options, registry, tenant)
    if failures:
        raise typer.Exit(1)


def _run(files: list[Path], model_spec: str, shard, settings, options, registry: str | None, tenant: str | None) -> int:  # noqa: ANN001
    """Immunize this process's files with progress bars (the first process's only); returns the number of failed inputs."""
    from contextlib import ExitStack, nullcontext

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from forwardguard.errors import one_line
    from forwardguard.immunize.attack import format_ratio
    from forwardguard.immunize.objectives import check_method
    from forwardguard.immunize.runner import immunize_files, registry_recorder
    from forwardguard.models import load_model

    console = Console(stderr=True, soft_wrap=True)
    who = f"process {shard.index}/{shard.count}: " if shard.distributed else ""
    with ExitStack() as stack:
        recorder = None
        if registry is not None:
            from forwardguard.registry import Registry

            recorder = registry_recorder(stack.enter_context(Registry.open(registry)), tenant=tenant)
        with console.status(f"loading {model_spec}") if shard.index == 0 else nullcontext():
            model = load_model(model_spec, device=shard.device)
        check_method(model, settings.method)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True, disable=shard.index != 0) as progress:
            images_task = progress.add_task("images", total=len(files))
            steps_task = progress.add_task("steps", total=None)

            def on_done(path: Path, error: str | None) -> None:
                if error is not None:
                    progress.console.print(f"{who}error: {one_line(error)}", markup=False, highlight=False)
                progress.advance(images_task)

            report = immunize_files(
                files,
                model,
                settings,
                options,
                on_step=lambda: progress.advance(steps_task),
                on_done=on_done,
                on_written=recorder,
            )
    for written in report.written:
        record = written.record
        pattern = f", pattern {record['pattern_id'][:12]}" if "pattern_id" in record else ""
        steps = f", {record['steps_run']} steps" if "steps_run" in record else ""
        console.print(
            f"{written.job.out_png}  loss {record['loss_before']:.4g} -> {record['loss_after']:.4g}"
            f" (ratio {format_ratio(record['loss_ratio'])}){steps}, linf {record['linf_255']}/255{pattern}",
            markup=False,
            highlight=False,
        )
    skipped = f"{len(report.skipped)} already done, " if options.resume else ""
    console.print(
        f"{who}{len(report.written)} immunized, {skipped}{len(report.failed)} failed, model {model.fingerprint[:12]}",
        markup=False,
        highlight=False,
    )
    return len(report.failed)
