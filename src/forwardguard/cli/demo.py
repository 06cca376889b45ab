"""``forwardguard demo``: the whole flow, offline, on bundled photographs and bundled real weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypedDict

import typer

from forwardguard.cli.common import user_errors
from forwardguard.configs import GATE_POLICY


class _Given(TypedDict, total=False):
    """The options given (the others keep the settings' defaults)."""

    v1: str
    v2: str
    attack_steps: int
    plant_steps: int
    edit_steps: int
    transforms: tuple[str, ...]


def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes (must not exist, or see --overwrite).")] = Path(
        "forwardguard-demo"
    ),
    v1: Annotated[
        str | None,
        typer.Option(help="The model the photos are immunized against (default: the bundled TAEF2).", show_default=False),
    ] = None,
    v2: Annotated[
        str | None, typer.Option(help="The new model version to plant into (default: the bundled taef2-v2).", show_default=False)
    ] = None,
    policy: Annotated[
        Path, typer.Option(help="Release policy for the gate (default: the shipped configs/gate.yaml).", show_default=False)
    ] = GATE_POLICY,
    attack_steps: Annotated[int | None, typer.Option(min=1, help="PGD steps of the immunization.", show_default=False)] = None,
    plant_steps: Annotated[int | None, typer.Option(min=1, help="Planting steps.", show_default=False)] = None,
    edit_steps: Annotated[
        int | None, typer.Option(min=1, help="Denoising steps of the eval's edits.", show_default=False)
    ] = None,
    gauntlet: Annotated[
        str | None,
        typer.Option(
            help="The eval's transforms: default (eval's built-in gauntlet), none, or a gauntlet YAML file "
            "(default: jpeg_q95, jpeg_q75, resize_0.5).",
            show_default=False,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if an earlier demo made it.")] = False,
) -> None:
    """Immunize bundled photos against v1, record them, plant them into v2, eval, and gate v2 and the planted v2."""
    with user_errors():
        from rich.console import Console

        from forwardguard.cli.gate import print_gate
        from forwardguard.demo import DemoSettings, run_demo
        from forwardguard.eval.settings import resolve_gauntlet

        given: _Given = {}
        if v1 is not None:
            given["v1"] = v1
        if v2 is not None:
            given["v2"] = v2
        if attack_steps is not None:
            given["attack_steps"] = attack_steps
        if plant_steps is not None:
            given["plant_steps"] = plant_steps
        if edit_steps is not None:
            given["edit_steps"] = edit_steps
        if gauntlet is not None:
            given["transforms"] = resolve_gauntlet(gauntlet)
        settings = DemoSettings(
            out=out,
            policy=policy,
            device=device,
            overwrite=overwrite,
            **given,
        )
        console = Console(soft_wrap=True)
        if any(spec.startswith("tiny") for spec in (settings.v1, settings.v2)):
            console.print("models: tiny (random weights, built offline): the latents are real, the edits mean nothing")
        result = run_demo(settings, say=lambda text: console.print(text, markup=False, highlight=False))
    for gate_result in result.gates.values():
        console.print()
        print_gate(gate_result)
    console.print(f"\nreport: {result.report.with_name('report.html')}")
