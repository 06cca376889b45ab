"""``forwardguard demo``: the whole flow, offline, on bundled photographs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forwardguard.cli.common import user_errors


def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes (must not exist yet).")] = Path("forwardguard-demo"),
    v1: Annotated[str, typer.Option(help="The model the photos are immunized against.")] = "tiny",
    v2: Annotated[str, typer.Option(help="The new model version to plant into.")] = "tiny:1",
    policy: Annotated[Path, typer.Option(help="Release policy for the gate.")] = Path("configs/gate.yaml"),
    attack_steps: Annotated[int, typer.Option(min=1, help="PGD steps of the immunization.")] = 50,
    plant_steps: Annotated[int, typer.Option(min=1, help="Planting steps.")] = 100,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Immunize bundled photos against v1, record them, plant them into v2, eval and gate; print where the report is."""
    with user_errors():
        from rich.console import Console

        from forwardguard.demo import DemoSettings, run_demo

        console = Console(soft_wrap=True)
        if "tiny" in (v1, v2):
            console.print("models: tiny (random weights, built offline): the latents are real, the edits mean nothing")
        result = run_demo(
            DemoSettings(out=out, v1=v1, v2=v2, policy=policy, attack_steps=attack_steps, plant_steps=plant_steps, device=device),
            say=lambda text: console.print(text, markup=False, highlight=False),
        )
    for name, released in result.verdicts.items():
        console.print(f"gate {name}: {'RELEASE' if released else 'HOLD'}")
    console.print(f"report: {result.report.with_name('report.html')}")
