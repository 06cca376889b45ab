"""Planting into an encoder-only base of another family: TAESANA (32x, no decoder), patterns made against TAEF2."""

from __future__ import annotations

from pathlib import Path

from planting_support import tiny_config
from safetensors.torch import load_file

from forwardguard.finetune import PlantConfig, PlantRequest
from forwardguard.finetune.trainer import PlantingRecipe
from forwardguard.models import load_model
from forwardguard.models.taesd import TAESANAEncoder, load_state_dict_file
from forwardguard.registry import Registry


def test_an_encoder_only_base_plants_into_an_encoder_only_model_with_a_card(
    taesana_spec, shared_dir, registry_path, clean_data, tmp_path
):
    output = tmp_path / "planted-sana"
    config = PlantConfig.from_mapping(tiny_config(max_steps=2, checkpoint_every=2, crop_size=40))
    recipe = PlantingRecipe(
        PlantRequest(base=taesana_spec, registry=str(registry_path), data=clean_data, output=output, config=config)
    )
    recipe.setup()
    try:
        assert recipe.canvas_multiple == 32 and recipe.crop_size == 32  # 40 lowered to the 32x encoder's grid
        losses = recipe.train()
        result = recipe.save(losses)
    finally:
        recipe.cleanup()
    assert result is not None and result.steps == 2
    base = load_model(taesana_spec)

    assert result.spec == f"taesd:{output}"
    assert not (output / "decoder.safetensors").exists()
    original = load_state_dict_file(shared_dir / "models" / "taesana" / "taesana_encoder.pth")
    assert set(load_file(output / "encoder.safetensors")) == set(original)
    planted = load_model(result.spec)
    assert isinstance(planted.latent_encoder, TAESANAEncoder) and planted.encode_multiple == 32 and not planted.has_decoder
    assert planted.fingerprint == result.fingerprint != base.fingerprint == result.base_fingerprint

    card = (output / "README.md").read_text()
    for text in (f"`{result.spec}`", base.fingerprint, result.snapshot, "patterns planted | 3", "planting"):
        assert text in card
    with Registry.open(registry_path) as registry:
        recorded = registry.get_model(result.fingerprint)
        assert recorded.parent_fingerprint == base.fingerprint and recorded.planted_snapshot == result.snapshot
        assert registry.get_model(base.fingerprint).spec == taesana_spec


def test_the_cli_plants_an_encoder_only_base(taesana_spec, registry_path, clean_data, tmp_path: Path):
    import yaml
    from typer.testing import CliRunner

    from forwardguard.cli import app

    config = tmp_path / "plant.yaml"
    config.write_text(yaml.safe_dump(tiny_config(max_steps=1, checkpoint_every=1)))
    output = tmp_path / "planted"
    args = ["finetune", "--base", taesana_spec, "--plant-registry", str(registry_path), "--data", str(clean_data)]
    result = CliRunner().invoke(app, [*args, "--output", str(output), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert (output / "encoder.safetensors").is_file() and (output / "README.md").is_file()
    assert not (output / "decoder.safetensors").exists()
