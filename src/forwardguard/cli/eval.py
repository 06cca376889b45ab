"""``forwardguard eval``: wires the options to :func:`forwardguard.eval.run.run_eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypedDict

import typer

from forwardguard.cli.common import progress_bar, user_errors


class _Prompts(TypedDict, total=False):
    """The prompts file's prompts, when one is given (else the settings' default)."""

    prompts: tuple[str, ...]


def eval_command(
    registry: Annotated[str, typer.Option(help="Registry path or URL.")],
    model: Annotated[list[str], typer.Option(help="NAME=SPEC of a model version; repeat for each.")],
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.html and the grid images.")],
    snapshot: Annotated[list[str] | None, typer.Option(help="Snapshot to evaluate; repeat; default: all.")] = None,
    gauntlet: Annotated[str, typer.Option(help="Gauntlet YAML, 'default' (the built-in gauntlet) or 'none'.")] = "default",
    clean: Annotated[Path | None, typer.Option(help="Clean images for clean utility and false triggers.")] = None,
    reference: Annotated[
        list[str] | None, typer.Option(help="MODEL=REF: compare MODEL's clean behaviour with REF (a --model name or a spec).")
    ] = None,
    prompts: Annotated[Path | None, typer.Option(help="Edit prompts, one per line (cycled over images).")] = None,
    edit_steps: Annotated[int, typer.Option(help="Denoising steps of the SD edits.")] = 25,
    trigger_threshold: Annotated[
        float, typer.Option(help="A clean + noise image with a ratio below this is a false trigger.")
    ] = 0.5,
    protection_threshold: Annotated[
        float,
        typer.Option(help="An immunized image with a ratio at or below this counts as protected (each cell's protection rate)."),
    ] = 0.3,
    max_images: Annotated[int | None, typer.Option(min=1, help="Evaluate at most this many images per snapshot.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the edits, the noise and the transforms.")] = 0,
    inception: Annotated[
        Path | None,
        typer.Option(help="Inception-v3 state dict (torchvision layout, .pth or .safetensors): FID and precision/recall."),
    ] = None,
    clip: Annotated[
        Path | None, typer.Option(help="Local CLIP model folder (CLIPModel + CLIPProcessor): CLIP image-prompt similarity.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty --out.")] = False,
) -> None:
    """Backward and forward immunity of the registry's snapshots across model versions, as report.json and report.html."""
    with user_errors():
        from forwardguard.eval.run import run_eval
        from forwardguard.eval.settings import EvalRequest, EvalSettings, ModelArg, read_prompts, resolve_gauntlet

        prompts_given: _Prompts = {"prompts": read_prompts(prompts)} if prompts is not None else {}
        settings = EvalSettings(
            transforms=resolve_gauntlet(gauntlet),
            seed=seed,
            edit_steps=edit_steps,
            trigger_threshold=trigger_threshold,
            protection_threshold=protection_threshold,
            max_images=max_images,
            **prompts_given,
        )
        references = dict((arg.name, arg.spec) for arg in (ModelArg.parse(text, "--reference") for text in reference or []))
        request = EvalRequest(
            registry=registry,
            models=tuple(ModelArg.parse(text) for text in model),
            out=out,
            snapshots=tuple(snapshot or ()),
            clean=clean,
            references=references,
            settings=settings,
            device=device,
            inception=inception,
            clip=clip,
        )
        with progress_bar() as progress:
            task = progress.add_task("eval", total=None)
            path = run_eval(
                request, overwrite=overwrite, on_progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
    progress.console.print(f"report: {path}")
    progress.console.print(f"html:   {path.with_name('report.html')}")
