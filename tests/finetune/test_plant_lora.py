"""Planting diffusion-attack patterns into the UNet through LoRA (plant config ``unet_lora``), on tiny models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from planting_support import REGISTERED, record_immunized, tiny_config
from ports import free_port
from safetensors.torch import load_file

from forwardguard.errors import ForwardguardError
from forwardguard.finetune import PlantConfig, PlantRequest, UNetLoRA, plant
from forwardguard.finetune.lora import LoRAStudent, add_lora, load_planted, short_edit
from forwardguard.immunize import AttackSettings
from forwardguard.models import load_model
from forwardguard.models.edits import EditSettings, img2img
from forwardguard.registry import Registry

SIZE = 32  # a multiple of tiny's edit multiple (16): the crop is the whole image
EDITS = (  # two denoising steps each (int(steps * strength)): planting runs the patterns' own edits
    EditSettings(prompt="a painting", strength=1.0, steps=2, guidance_scale=3.0, seed=1),
    EditSettings(prompt="", strength=0.7, steps=3, guidance_scale=1.0, seed=2),
)
LORA_STEPS = 8
LORA = {"edit_steps": 2, "alpha": 32, "weight": 30}
"""On tiny's random weights the edit loss is small (about 0.02) and the encoder terms pull against it
(E(gray) does not decode to gray), so the test weighs the edit up and scales the LoRA up to see it move."""


def diffusion_attack(edit: EditSettings) -> AttackSettings:
    return AttackSettings(method="diffusion", steps=2, edit=edit)


@pytest.fixture(scope="module")
def diffusion_registry(tmp_path_factory, tiny, photo) -> Path:
    """Two photos immunized against ``tiny`` with the diffusion attack, each with its own edit."""
    path = tmp_path_factory.mktemp("diffusion-registry") / "reg.db"
    with Registry.open(path, create=True) as registry:
        for name, edit in zip(REGISTERED, EDITS):
            record_immunized(registry, tiny, [photo(name, (SIZE, SIZE))], diffusion_attack(edit))
    return path


def private_copy(registry: Path, folder: Path) -> Path:
    """Planting records snapshots and models: each run gets its own copy of a registry."""
    shutil.copytree(registry.parent, folder)
    return folder / registry.name


def request(base: str, registry: Path, data: Path, output: Path, unet_lora: dict | None = None, **config: object) -> PlantRequest:
    settings = tiny_config(crop_size=SIZE, unet_lora=unet_lora or LORA, **config)
    return PlantRequest(base=base, registry=str(registry), data=data, output=output, config=PlantConfig.from_mapping(settings))


@pytest.fixture(scope="module")
def lora_planting(diffusion_registry, clean_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-planting")
    registry = private_copy(diffusion_registry, root / "registry")
    output = root / "planted"
    result = plant(
        request(
            "tiny:1",
            registry,
            clean_data,
            output,
            max_steps=LORA_STEPS,
            checkpoint_every=LORA_STEPS,
            batch_size=1,
            learning_rate=1e-3,
            lr_schedule="constant",
            planting_transforms=["identity"],
        )
    )
    return result, output, registry


@pytest.fixture(scope="module")
def planted_and_base(lora_planting):
    return load_model(str(lora_planting[1])), load_model("tiny:1")


def changed(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    assert first.keys() == second.keys()
    return any(not torch.equal(first[key], second[key]) for key in first)


def test_output_is_a_plain_sd_folder_with_the_lora_merged_into_the_unet(lora_planting, planted_and_base):
    result, output, registry = lora_planting
    planted, base = planted_and_base
    assert result.spec == str(output) and planted.fingerprint == result.fingerprint != base.fingerprint
    assert result.base_fingerprint == base.fingerprint, "the base fingerprint is taken before the LoRA is added"
    assert changed(planted.unet, base.unet), "the LoRA is merged into the UNet's own weights"
    assert changed(planted.vae.encoder, base.vae.encoder)
    assert not changed(planted.vae.decoder, base.vae.decoder)
    assert not changed(planted.text_encoder, base.text_encoder)
    with Registry.open(registry) as opened:
        assert opened.get_model(result.fingerprint).parent_fingerprint == base.fingerprint


def test_lora_losses_are_reported_and_the_unet_edit_loss_decreases(lora_planting):
    result, output, _ = lora_planting
    assert {"planting", "utility", "negatives", "unet_edit", "unet_utility"} <= set(result.final_losses)
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, LORA_STEPS + 1))
    edit_losses = [entry["unet_edit"] for entry in log]
    print("unet_edit per step", [round(value, 5) for value in edit_losses])
    assert edit_losses[-1] < 0.97 * edit_losses[0], edit_losses
    assert log[0]["unet_utility"] == 0, "the LoRA starts as the identity (its B matrices are zero)"
    assert all(entry["unet_utility"] < 0.01 for entry in log), "the LoRA UNet stays close to the base UNet on clean latents"
    card = (output / "README.md").read_text()
    assert "UNet LoRA, merged into the UNet | rank 4, alpha 32, on to_q, to_k, to_v, to_out.0" in card
    assert "| unet_edit |" in card and "| unet_utility |" in card


def test_planted_model_edits_the_registered_images_closer_to_gray(lora_planting, planted_and_base):
    result, _, registry = lora_planting
    planted, base = planted_and_base
    with Registry.open(registry) as opened:
        records = opened.snapshot_patterns(result.snapshot)
        samples = [opened.load_sample(record) for record in records]
    for record, sample in zip(records, samples):
        edit = EditSettings(**record.params["edit"])
        image = torch.from_numpy(sample.immunized).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            distances = {
                name: float((img2img(model, image, edit) - 0.5).pow(2).mean())
                for name, model in (("planted", planted), ("base", base))
            }
        assert distances["planted"] < distances["base"], (record.params["edit"], distances)


def test_two_processes_plant_the_same_lora_as_one_with_the_same_global_batch(diffusion_registry, clean_data, tmp_path):
    """The encoder and the LoRA UNet are one DDP module whose forward runs every UNet call of the step:
    two gloo processes (torchrun) with half the batch each plant the same UNet as one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = {}
    for name, per_process, launcher in (
        ("one", 2, []),
        ("two", 1, ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]),
    ):
        config = tmp_path / f"{name}.yaml"
        config.write_text(
            yaml.safe_dump(
                tiny_config(
                    max_steps=2,
                    batch_size=per_process,
                    pattern_batch_size=per_process,
                    crop_size=SIZE,
                    unet_lora=LORA,
                    planting_transforms=["identity"],
                )
            )
        )
        registry = private_copy(diffusion_registry, tmp_path / f"registry-{name}")
        outputs[name] = tmp_path / name
        command = [
            sys.executable,
            *launcher,
            "-m",
            "forwardguard",
            "finetune",
            "--base",
            "tiny:1",
            "--plant-registry",
            str(registry),
            "--data",
            str(clean_data),
            "--output",
            str(outputs[name]),
            "--config",
            str(config),
        ]
        run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
    logs = {
        name: [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
        for name, output in outputs.items()
    }
    for a, b in zip(logs["one"], logs["two"], strict=True):
        for key in ("planting", "unet_edit", "unet_utility"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["step"], key)
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    single, parallel = load_file(outputs["one"] / unet_file), load_file(outputs["two"] / unet_file)
    for key in single:
        # Reduced in another order, a near-zero gradient becomes a different Adam step, which the merged
        # LoRA spreads along a row (measured: up to 1.2% of a layer's weights off by more than 2e-5, with
        # every logged loss equal to 1e-4). A sharding error moves the losses above and most weights.
        close = torch.isclose(parallel[key], single[key], atol=2e-5, rtol=1e-4)
        assert close.float().mean() >= 0.95, (key, int((~close).sum()))


def test_a_long_edit_is_cut_to_edit_steps_denoising_steps_from_about_the_same_noise_level():
    assert short_edit(EDITS[1], 2) == EDITS[1], "an edit of at most edit_steps steps is the pattern's own"
    paper = EditSettings(steps=50, strength=0.7)
    assert short_edit(paper, 2) == EditSettings(steps=3, strength=0.7)  # int(3 * 0.7) = 2 steps, from t ~ 0.67
    assert short_edit(paper, 5) == EditSettings(steps=8, strength=0.7)  # int(8 * 0.7) = 5
    assert short_edit(EditSettings(steps=10, strength=1.0), 2) == EditSettings(steps=2, strength=1.0)


def test_loaded_student_state_merges_into_a_unet_with_the_same_outputs():
    settings = UNetLoRA(rank=2, alpha=3.0)
    trained = load_model("tiny:1")
    add_lora(trained.unet, settings)
    with torch.no_grad():
        for name, parameter in trained.unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    planted = load_model("tiny:1")
    load_planted(planted, LoRAStudent(trained).state_dict(), settings)
    assert not any("lora" in key or "base_layer" in key for key in planted.unet.state_dict())
    latents, context = torch.randn(2, 4, 4, 4), torch.randn(2, 16, 32)
    with torch.no_grad():
        expected = trained.unet(latents, 500, encoder_hidden_states=context).sample
        merged = planted.unet(latents, 500, encoder_hidden_states=context).sample
        trained.unet.disable_adapters()
        without_lora = trained.unet(latents, 500, encoder_hidden_states=context).sample
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(without_lora, expected, atol=1e-3), "the LoRA changes the UNet's output"


def random_taesd(folder: Path) -> str:
    from forwardguard.models.taesd import TAESDDecoder, TAESDEncoder, save_taesd

    save_taesd(TAESDEncoder(), TAESDDecoder(), folder)
    return f"taesd:{folder}"


@pytest.fixture
def encoder_registry(tmp_path, tiny, photo) -> Path:
    path = tmp_path / "encoder-registry" / "reg.db"
    with Registry.open(path, create=True) as registry:
        record_immunized(registry, tiny, [photo("coffee", (SIZE, SIZE))], AttackSettings(steps=1))
    return path


@pytest.mark.parametrize("case", ["autoencoder base", "no diffusion patterns", "unknown target modules"])
def test_refused_before_training(case, diffusion_registry, encoder_registry, clean_data, tmp_path):
    registry = private_copy(diffusion_registry, tmp_path / "registry")
    base, lora = "tiny:1", None
    if case == "autoencoder base":
        base, message = random_taesd(tmp_path / "taesd"), "autoencoder without one"
    elif case == "no diffusion patterns":
        registry, message = encoder_registry, "no diffusion-attack patterns"
    else:
        lora, message = {"target_modules": ["to_nothing"]}, "to_nothing"
    with pytest.raises(ForwardguardError, match=message) as error:
        plant(request(base, registry, clean_data, tmp_path / "out", unet_lora=lora))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "lora, message",
    [
        ({"rank": 0}, "rank must be >= 1"),
        ({"alpha": 0}, "alpha must be positive"),
        ({"weight": -1}, "weight must be positive"),
        ({"edit_steps": 0}, "edit_steps must be >= 1"),
        ({"target_modules": []}, "target_modules must be a non-empty list"),
        ({"rank": 4, "dropout": 0.1}, "unknown unet_lora setting"),
        ({"rank": "four"}, "unet_lora"),
        ("on", "null or a mapping"),
    ],
)
def test_bad_lora_settings_are_refused(lora, message):
    with pytest.raises(ForwardguardError, match=message) as error:
        PlantConfig.from_mapping({"unet_lora": lora})
    assert "\n" not in str(error.value)


def test_lora_is_off_by_default_and_on_with_defaults_for_an_empty_mapping():
    assert PlantConfig().unet_lora is None
    assert PlantConfig.from_mapping({"unet_lora": None}).unet_lora is None
    assert PlantConfig.from_mapping({"unet_lora": {}}).unet_lora == UNetLoRA()
    assert UNetLoRA().target_modules == ("to_q", "to_k", "to_v", "to_out.0")
