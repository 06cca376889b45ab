"""``forwardguard finetune --plant-registry``: wires the options to :func:`forwardguard.finetune.plant`.

Under ``accelerate launch ... -m forwardguard finetune ...`` every process runs this command; the
recipe shards the data, and only the main process shows progress and writes the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forwardguard.cli.common import progress_bar, user_errors


def finetune_command(
    base: Annotated[str, typer.Option(help="The new checkpoint to plant into: any model spec.")],
    plant_registry: Annotated[str, typer.Option("--plant-registry", help="Registry whose patterns are planted.")],
    data: Annotated[Path, typer.Option(help="Clean images: a folder, or a saved datasets dataset with an 'image' column.")],
    output: Annotated[Path, typer.Option(help="Folder for the planted model, checkpoints, logs and model card.")],
    snapshot: Annotated[str | None, typer.Option(help="Snapshot to plant (default: a new one of all active patterns).")] = None,
    config: Annotated[Path | None, typer.Option(help="Plant config YAML (default: the built-in defaults).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override the config's max_steps.")] = None,
    resume: Annotated[str | None, typer.Option(help="'latest' or a checkpoint folder to continue from.")] = None,
) -> None:
    """Fine-tune --base so that the registry's immunized images stay immunized against it."""
    with user_errors():
        from forwardguard.finetune import PlantConfig, PlantRequest, plant

        overrides = {"max_steps": max_steps}
        if config is not None:
            if not config.is_file():
                from forwardguard.errors import ForwardguardError

                raise ForwardguardError(f"--config {config}: no such file")
            settings = PlantConfig.from_yaml(config, **overrides)
        else:
            settings = PlantConfig.from_mapping({k: v for k, v in overrides.items() if v is not None})
        request = PlantRequest(
            base=base, registry=plant_registry, data=data, output=output, config=settings, snapshot=snapshot, resume=resume
        )
        with progress_bar() as progress:
            result = plant(request, progress)
    if result is not None:
        progress.console.print(f"planted {result.patterns} patterns of snapshot {result.snapshot!r} in {result.steps} steps")
        progress.console.print(
            f"model: {result.spec}  fingerprint {result.fingerprint[:12]} (base {result.base_fingerprint[:12]})"
        )
        if result.interpolation is not None:
            progress.console.print(result.interpolation.describe())
        progress.console.print("final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.final_losses.items())))
