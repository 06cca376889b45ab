"""The planting recipe's mechanics on tiny runs: outputs, records, resume, refusals."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from planting_support import insert_empty_snapshot, tiny_config
from safetensors.torch import load_file

from forwardguard.errors import ForwardguardError
from forwardguard.finetune import PlantConfig, PlantRequest, plant
from forwardguard.models import load_model
from forwardguard.registry import Registry


def request(base: str, registry: Path, data: Path, output: Path, **config) -> PlantRequest:
    return PlantRequest(
        base=base, registry=str(registry), data=data, output=output, config=PlantConfig.from_mapping(tiny_config(**config))
    )


def test_taesd_planting_writes_a_loadable_checkpoint_card_and_records(taef2_v2_spec, registry_path, clean_data, tmp_path):
    output = tmp_path / "planted"
    result = plant(request(taef2_v2_spec, registry_path, clean_data, output))
    base = load_model(taef2_v2_spec)

    assert result.spec == f"taesd:{output}"
    assert set(load_file(output / "encoder.safetensors")) == set(base.encoder.state_dict())
    assert (output / "decoder.safetensors").is_file()
    planted = load_model(result.spec)
    assert planted.fingerprint == result.fingerprint != base.fingerprint
    assert result.base_fingerprint == base.fingerprint
    assert torch.equal(planted.decoder[1].weight, base.decoder[1].weight), "the decoder is frozen"

    card = (output / "README.md").read_text()
    for text in (base.fingerprint, result.snapshot, "patterns planted | 3", "planting", "utility", "negatives"):
        assert text in card
    assert result.patterns == 3 and result.steps == 4
    assert set(result.final_losses) == {
        "planting",
        "utility",
        "negatives",
        "originals",
        "large_utility",
        "large_negatives",
        "grad_norm",
    }
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]

    with Registry.open(registry_path) as registry:
        model = registry.get_model(result.fingerprint)
        assert model.parent_fingerprint == base.fingerprint
        assert model.planted_snapshot == result.snapshot
        assert len(registry.snapshot_patterns(result.snapshot)) == 3
        assert registry.get_model(base.fingerprint).spec == taef2_v2_spec


def test_stable_diffusion_planting_trains_only_the_vae_encoder(registry_path, clean_data, tmp_path):
    output = tmp_path / "planted-tiny"
    result = plant(request("tiny", registry_path, clean_data, output, max_steps=2, checkpoint_every=2))
    assert (output / "model_index.json").is_file()
    planted, base = load_model(result.spec), load_model("tiny")
    assert planted.fingerprint == result.fingerprint != base.fingerprint
    changed = lambda a, b: any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # noqa: E731
    assert changed(planted.vae.encoder, base.vae.encoder)
    assert not changed(planted.vae.decoder, base.vae.decoder)
    assert not changed(planted.unet, base.unet)
    assert not changed(planted.text_encoder, base.text_encoder)


def finetune_process(base: str, registry: Path, data: Path, output: Path, config: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "forwardguard",
        "finetune",
        "--base",
        base,
        "--plant-registry",
        str(registry),
        "--data",
        str(data),
        "--output",
        str(output),
        "--config",
        str(config),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs at once on a small machine: no thread oversubscription
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_killed_and_resumed_run_ends_at_the_same_weights(taef2_v2_spec, registry_path, clean_data, tmp_path):
    config = tmp_path / "plant.yaml"
    config.write_text(yaml.safe_dump(tiny_config(max_steps=8, checkpoint_every=2)))
    whole = finetune_process(taef2_v2_spec, registry_path, clean_data, tmp_path / "whole", config)

    killed = finetune_process(taef2_v2_spec, registry_path, clean_data, tmp_path / "parts", config)
    first_checkpoint = tmp_path / "parts" / "checkpoints" / "checkpoint_0" / "planting.json"
    deadline = time.monotonic() + 600
    while not first_checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert first_checkpoint.exists(), killed.stdout.read()
    assert not (tmp_path / "parts" / "encoder.safetensors").exists(), "the run ended before it was killed"

    resumed = finetune_process(taef2_v2_spec, registry_path, clean_data, tmp_path / "parts", config, "--resume", "latest")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    assert whole.wait(timeout=600) == 0, whole.stdout.read()
    whole_weights = load_file(tmp_path / "whole" / "encoder.safetensors")
    resumed_weights = load_file(tmp_path / "parts" / "encoder.safetensors")
    for key, value in whole_weights.items():
        assert torch.equal(value, resumed_weights[key]), key


def test_existing_output_is_refused_before_training(taef2_v2_spec, registry_path, clean_data, tmp_path):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(ForwardguardError, match="exists"):
        plant(request(taef2_v2_spec, registry_path, clean_data, output))
    assert [p.name for p in output.iterdir()] == ["keep.txt"]


def test_folder_without_images_is_refused(taef2_v2_spec, registry_path, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ForwardguardError, match="no images found"):
        plant(request(taef2_v2_spec, registry_path, tmp_path / "empty", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_empty_snapshot_is_refused(taef2_v2_spec, registry_path, clean_data, tmp_path):
    insert_empty_snapshot(registry_path, "nothing")
    req = PlantRequest(**{**request(taef2_v2_spec, registry_path, clean_data, tmp_path / "out").__dict__, "snapshot": "nothing"})
    with pytest.raises(ForwardguardError, match="holds no patterns"):
        plant(req)
    assert not (tmp_path / "out").exists()


def test_corrupted_pattern_blob_is_refused(taef2_v2_spec, registry_path, clean_data, tmp_path):
    with Registry.open(registry_path) as registry:
        record = registry.list_patterns()[0]
        blob = registry.blob_root
    path = blob / record.image_sha256[:2] / record.image_sha256
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(ForwardguardError, match=record.image_sha256[:12]):
        plant(request(taef2_v2_spec, registry_path, clean_data, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"crop_size": 30}, "multiple of 8"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"bogus": 1}, "unknown setting"),
        ({"planting_transforms": ["sharpen"]}, "sharpen"),
        ({"loss_weights": {"plant": 1}}, "unknown loss weight"),
        ({"pattern_crop_grid": 3}, "1, 2, 4 or 8"),
        ({"large_batch_size": 1, "large_crop_size": 48}, "large_crop_size must be a multiple of 8 above crop_size"),
        ({"large_batch_size": 1, "large_crop_size": 100}, "large_crop_size must be a multiple of 8"),
        ({"large_batch_size": -1}, "large_batch_size must be >= 0"),
        ({"crop_size": 128}, r"above crop_size \(128\), got 128 \(large_batch_size: 0 turns the large crops off\)"),
        ({"planting_transforms": ["jpeg_q75+shift_0"]}, r"\[1, 1024\]"),
    ],
)
def test_bad_config_is_refused(settings, message):
    with pytest.raises(ForwardguardError, match=message):
        PlantConfig.from_mapping(settings)


def test_item_12_resuming_an_older_checkpoint_saves_after_the_newest(taef2_v2_spec, registry_path, clean_data, tmp_path):
    """issue 14 item 12: ``--resume PATH`` of an older checkpoint trained a step, then crashed on the next
    checkpoint's existing folder."""
    output = tmp_path / "planted"
    plant(request(taef2_v2_spec, registry_path, clean_data, output, max_steps=3, checkpoint_every=1))
    checkpoints = output / "checkpoints"
    before = sorted(path.name for path in checkpoints.iterdir())
    assert before == ["checkpoint_1", "checkpoint_2"]  # the two newest kept
    config = PlantConfig.from_mapping(tiny_config(max_steps=3, checkpoint_every=1, checkpoints_total_limit=5))
    result = plant(
        PlantRequest(
            base=taef2_v2_spec,
            registry=str(registry_path),
            data=clean_data,
            output=output,
            config=config,
            resume=str(checkpoints / "checkpoint_1"),
        )
    )
    assert result.steps == 3
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint_1", "checkpoint_2", "checkpoint_3"]
    assert json.loads((checkpoints / "checkpoint_3" / "planting.json").read_text())["step"] == 3


def test_issue_13_planting_draws_crops_flips_and_chains_and_is_seeded(taef2_v2_spec, registry_path, clean_data, tmp_path):
    """Transforms that make the pair smaller (shift, rcrop, a chain with one) train in the one batch, and
    the run stays a pure function of the seed."""
    transforms = ["shift_3", "rcrop_0.8", "hflip", "jpeg_q75+shift_2"]
    results = [
        plant(request(taef2_v2_spec, registry_path, clean_data, tmp_path / name, max_steps=3, checkpoint_every=3,
                      planting_transforms=transforms, pattern_crop_grid=1))
        for name in ("first", "again")
    ]  # fmt: skip
    first, again = results
    assert first.steps == 3 and first.fingerprint == again.fingerprint
    assert all(math.isfinite(value) for value in first.final_losses.values())
    assert first.final_losses == again.final_losses


@pytest.mark.parametrize("grid", [1, 8])
def test_pattern_crops_start_on_the_configured_grid(grid):
    from forwardguard.finetune.data import paired_crop, sample_generator

    image = np.arange(48 * 48).reshape(48, 48, 1)  # a pixel's value is 48 * row + column
    starts = {divmod(int(paired_crop([image], 40, sample_generator(0, p), grid)[0][0, 0, 0]), 48) for p in range(1000)}
    assert starts == {(top, left) for top in range(0, 9, grid) for left in range(0, 9, grid)}
    immunized, clean = paired_crop([image, image + 1], 40, sample_generator(0, 3), grid)
    assert np.array_equal(clean, immunized + 1)  # one crop for the pair


def test_large_clean_crops_reach_the_encoder_at_their_own_side(taef2_v2_spec, registry_path, clean_data, tmp_path, monkeypatch):
    """A large image's interior is met only in large crops (config ``large_batch_size``), clean and, as
    a negative, plus noise: a clean image plus noise that no 48-pixel crop confused with a pattern
    fired the backdoor at 96-128 pixels."""
    from forwardguard.finetune.student import EncoderStudent

    sides, larges = [], []
    forward = EncoderStudent.forward

    def recording(self, images, large=None):
        sides.append((images.shape[-1], None if large is None else tuple(large.shape)))
        larges.append(large)
        return forward(self, images, large)

    monkeypatch.setattr(EncoderStudent, "forward", recording)
    with_large = plant(request(taef2_v2_spec, registry_path, clean_data, tmp_path / "large", max_steps=2, checkpoint_every=2))
    assert sides == [(32, (2, 3, 64, 64))] * 2  # the default: one large crop per step, and its noisy copy
    for clean, noisy in larges:
        assert 0 < (noisy - clean).abs().mean() < 0.2
    sides.clear()
    without = plant(
        request(taef2_v2_spec, registry_path, clean_data, tmp_path / "none", max_steps=2, checkpoint_every=2, large_batch_size=0)
    )
    assert sides == [(32, None)] * 2
    for part in ("large_utility", "large_negatives"):
        assert part in with_large.final_losses and part not in without.final_losses
    assert with_large.fingerprint != without.fingerprint


def test_transplants_carry_each_pattern_crops_perturbation_on_other_clean_content(
    taef2_v2_spec, registry_path, clean_data, tmp_path, monkeypatch
):
    """With ``transplants``, each step also plants every pattern crop's perturbation on a clean crop of
    other content, that crop being its original: the backdoor cannot key on the registered pictures."""
    from forwardguard.finetune.student import EncoderStudent

    batches = []
    forward = EncoderStudent.forward

    def recording(self, images, large=None):
        batches.append(images.detach().clone())
        return forward(self, images, large)

    monkeypatch.setattr(EncoderStudent, "forward", recording)
    settings = {"max_steps": 1, "checkpoint_every": 1, "large_batch_size": 0, "planting_transforms": ["identity"]}
    plant(request(taef2_v2_spec, registry_path, clean_data, tmp_path / "transplants", **settings))  # the default
    (images,) = batches
    count = patterns = 2  # tiny_config: clean crops and pattern crops per step
    assert len(images) == 2 * count + 4 * patterns  # clean, noisy; immunized and transplanted; originals and hosts
    immunized, originals = images[2 * count :].chunk(2)
    for index in range(patterns):
        perturbation = immunized[index] - originals[index]
        carried = immunized[patterns + index] - originals[patterns + index]
        host = originals[patterns + index]
        inside = ((host + perturbation) > 0) & ((host + perturbation) < 1)  # where the sum was not clamped
        assert perturbation.abs().max() > 0.01 and inside.float().mean() > 0.5
        torch.testing.assert_close(carried[inside], perturbation[inside], atol=1e-5, rtol=0)
        assert (host - originals[index]).abs().mean() > 0.01, "other content than the registered crop"
    batches.clear()
    plant(request(taef2_v2_spec, registry_path, clean_data, tmp_path / "none", transplants=False, **settings))
    assert len(batches[0]) == 2 * count + 2 * patterns
