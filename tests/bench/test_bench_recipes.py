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


def test_photometric_recipe_is_the_shipped_one_without_the_geometric_edits() -> None:
    """The recipe shipped until issue 13, kept so that the figures measured with it can be run again."""
    config, shipped = PlantConfig.from_yaml(RECIPES / "plant-photometric.yaml"), PlantConfig()
    assert config.planting_transforms == tuple(t.name for t in PLANTING_POOL)
    assert set(shipped.planting_transforms) - set(config.planting_transforms) == {t.name for t in GEOMETRIC_PLANTING_POOL}
    assert (config.pattern_crop_grid, config.max_steps, config.weight_interpolation) == (8, 900, "auto")
    assert (config.auto_interpolation.ratio_target, config.auto_interpolation.edits) == (0.045, ("identity",))
    for name in ("loss_weights", "crop_size", "learning_rate", "synthetic_fraction"):
        assert getattr(config, name) == getattr(shipped, name)
