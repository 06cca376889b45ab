"""``forwardguard demo``: immunize the bundled photographs offline and show what it did."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forwardguard.cli.common import user_errors


def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for the demo's outputs (must not exist yet).")] = Path("forwardguard-demo"),
    model: Annotated[str, typer.Option(help="Model spec to immunize against (default: the offline tiny model).")] = "tiny",
    steps: Annotated[int, typer.Option(min=1, help="PGD steps.")] = 50,
) -> None:
    """Immunize bundled photos with the encoder attack and the noise baseline; print the disruption ratios."""
    with user_errors():
        from rich.console import Console
        from rich.table import Table

        from forwardguard.demo import demo_photos
        from forwardguard.errors import ForwardguardError
        from forwardguard.immunize import AttackSettings, RunOptions, immunize_files
        from forwardguard.models import load_model

        if out.exists():
            raise ForwardguardError(f"{out} exists: give the demo a new folder with --out")
        console = Console(soft_wrap=True)
        if model == "tiny":
            console.print("model: tiny (random weights, offline): its latents are real, its edits mean nothing")
        loaded = load_model(model, device="auto")
        table = Table("photo", "method", "disruption ratio", "linf /255", "output")
        for method in ("encoder", "noise"):
            options = RunOptions(out_dir=out / method)
            with console.status(f"{method}: immunizing {len(demo_photos())} photos, {steps} steps"):
                report = immunize_files(demo_photos(), loaded, AttackSettings(method=method, steps=steps), options)
            for written in report.written:
                record = written.record
                table.add_row(
                    written.job.source.stem, method, f"{record['loss_ratio']:.3f}", str(record["linf_255"]),
                    str(written.job.out_png),
                )
        console.print(table)
        console.print(
            "disruption ratio = ||E(x_imm) - E(gray)||^2 / ||E(x) - E(gray)||^2: lower means the edit model"
            " sees the image as the gray target (the encoder attack); noise of the same budget barely moves it."
        )
