"""Every file under configs/ is validated by what reads it (the test walks the whole folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def check_plant(path: Path) -> None:
    from forwardguard.finetune import PlantConfig

    PlantConfig.from_yaml(path)


def check_accelerate(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.compute_environment.value == "LOCAL_MACHINE"
    assert config.mixed_precision in {"no", "bf16", "fp16"}
    expected = {"ddp": ("MULTI_GPU", None), "zero2": ("DEEPSPEED", 2), "zero3": ("DEEPSPEED", 3)}[path.stem]
    assert config.distributed_type.value == expected[0]
    if expected[1] is not None:
        deepspeed = config.deepspeed_config
        assert deepspeed["zero_stage"] == expected[1]
        assert deepspeed["gradient_accumulation_steps"] == 1, "must match the plant config's (accelerate refuses a mismatch)"


def check_gauntlet(path: Path) -> None:
    from forwardguard.eval.settings import EvalSettings, read_gauntlet
    from forwardguard.transforms import GAUNTLET

    names = read_gauntlet(path)
    EvalSettings(transforms=names)
    assert names == tuple(transform.name for transform in GAUNTLET), "the shipped gauntlet is the built-in default"


def check_gate(path: Path) -> None:
    from forwardguard.eval.gate import NO_TRANSFORM, load_policy
    from forwardguard.eval.settings import read_gauntlet

    policy = load_policy(path)
    gauntlet = read_gauntlet(CONFIGS / "gauntlet.yaml")
    assert set(policy.transforms) - {NO_TRANSFORM} <= set(gauntlet), "the gate checks transforms the shipped gauntlet evaluates"


VALIDATORS = {
    "plant.yaml": check_plant,
    "gauntlet.yaml": check_gauntlet,
    "gate.yaml": check_gate,
    "accelerate": check_accelerate,
}


def all_configs() -> list[Path]:
    return sorted(path for path in CONFIGS.rglob("*.yaml"))


def test_configs_hold_only_yaml_and_the_module_that_names_them():
    others = {path.relative_to(CONFIGS).as_posix() for path in CONFIGS.rglob("*") if path.is_file() and path.suffix != ".yaml"}
    assert others <= {"__init__.py"} | {p for p in others if "__pycache__" in p}


def test_the_package_names_the_shipped_configs():
    from forwardguard import configs

    for path in (configs.GATE_POLICY, configs.PLANT_CONFIG, configs.GAUNTLET):
        assert path.is_file() and path.parent == CONFIGS.resolve()


@pytest.mark.parametrize("path", all_configs(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_is_valid(path: Path):
    text = path.read_text()
    assert text.startswith("#"), "each config says in its header how it is used"
    assert isinstance(yaml.safe_load(text), dict)
    key = path.parent.name if path.parent != CONFIGS else path.name
    assert key in VALIDATORS, f"no validator for {path.relative_to(CONFIGS)}: add one"
    VALIDATORS[key](path)


def test_shipped_plant_config_is_the_built_in_default():
    from forwardguard.finetune import PlantConfig

    assert PlantConfig.from_yaml(CONFIGS / "plant.yaml") == PlantConfig()


def test_plant_config_default_plants_the_free_edits_at_every_grid_phase():
    """Issue 13: the default draws the geometric edits beside the photometric ones, from any offset."""
    from forwardguard.finetune.config import PlantConfig
    from forwardguard.transforms import FREE_EDITS, GEOMETRIC_PLANTING_POOL, PLANTING_POOL

    config = PlantConfig()
    assert sorted(config.planting_transforms) == sorted(t.name for t in (*PLANTING_POOL, *GEOMETRIC_PLANTING_POOL))
    assert config.planting_transforms[0] == "identity" and config.pattern_crop_grid == 1
    assert (config.max_steps, config.weight_interpolation) == (2700, "auto")  # measured: docs/benchmarks.md
    assert config.auto_interpolation.edits == tuple(edit.name for edit in FREE_EDITS)  # chosen per registry on them
