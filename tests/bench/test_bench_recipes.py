"""The plant recipes the benchmarks measure (bench/recipes/) stay valid plant configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwardguard.finetune import PlantConfig
from forwardguard.transforms import GEOMETRIC_PLANTING_POOL, PLANTING_POOL

RECIPES = Path(__file__).resolve().parents[2] / "bench" / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda path: path.name)
def test_recipe_is_a_valid_plant_config(path: Path) -> None:
    assert path.read_text().startswith("#"), "each recipe says in its header how it is run"
    PlantConfig.from_yaml(path)


def test_free_edits_recipe_adds_every_grid_phase_and_the_geometric_edits_to_the_shipped_recipe() -> None:
    config, shipped = PlantConfig.from_yaml(RECIPES / "plant-free-edits.yaml"), PlantConfig()
    assert config.pattern_crop_grid == 1
    assert {t.name for t in (*PLANTING_POOL, *GEOMETRIC_PLANTING_POOL)} == set(config.planting_transforms)
    assert (config.loss_weights, config.synthetic_fraction) == (shipped.loss_weights, shipped.synthetic_fraction)
    assert config.max_steps == 3 * shipped.max_steps and config.weight_interpolation == 0.93  # measured: docs/benchmarks.md
