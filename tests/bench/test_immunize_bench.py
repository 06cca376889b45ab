"""bench/immunize_bench.py in its smallest mode, its naive edit beside forwardguard's, the SD-1.5 shapes of --gpu."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forwardguard.models.edits import EditSettings, img2img

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = REPO_ROOT / "bench"


def test_smallest_run_prints_and_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(BENCH / "immunize_bench.py"),
        "--model",
        "tiny",
        "--size",
        "32",
        "--diffusion-size",
        "32",
        "--steps",
        "6",
        "--edit-steps",
        "2",
        "--rule-steps",
        "12",
        "--json",
        str(out),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "forwardguard beside the naive loop" in completed.stdout
    written = json.loads(out.read_text())
    rows = written["rows"]
    assert [(row["attack"], row["implementation"], row["batch"]) for row in rows] == [
        ("encoder", "forwardguard", 1),
        ("encoder", "naive", 1),
        ("diffusion", "forwardguard", 1),
        ("diffusion", "naive", 1),
    ]
    for row in rows:
        assert (row["model"], row["size"], row["steps"], row["images"]) == ("tiny", 32, 6, 1)
        assert row["seconds_per_image"] > 0 and row["steps_per_second"] > 0
        assert row["peak_memory_mb"] >= row["weights_mb"] > 0
        assert row["flops_per_step"] > 0 and row["tflops"] > 0
        assert 0 < row["final_loss"] < row["loss_before"]
        assert 0 < row["linf_255"] <= 16
    for attack in ("encoder", "diffusion"):
        fast, naive = (row for row in rows if row["attack"] == attack)
        # The same image, scored the same way, so that the rows compare.
        assert fast["loss_before"] == pytest.approx(naive["loss_before"], rel=1e-6)
        assert fast["flops_per_step"] == naive["flops_per_step"]
    assert rows[2]["denoising_steps"] == 2 and rows[0]["denoising_steps"] is None
    paper, default = written["step_rules"]
    assert (paper["step_rule"], paper["steps_run"]) == ("paper", 12) and default["step_rule"] != "paper"
    assert default["target_loss"] == paper["final_loss"] and default["steps_run"] <= 12
    assert default["reached"] == (default["final_loss"] <= paper["final_loss"])
    assert default["steps_vs_paper"] == default["steps_run"] / 12


EDITS = [EditSettings(steps=3, strength=1.0), EditSettings(steps=4, guidance_scale=1.0, prompt="a cat")]


@pytest.mark.parametrize("edit", EDITS)
def test_naive_edit_is_forwardguards_img2img(tiny, edit):
    """The naive baseline attacks the very edit forwardguard attacks: same components, same noise draws."""
    naive_img2img = runpy.run_path(str(BENCH / "immunize_bench.py"))["_naive_img2img"]
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(naive_img2img(tiny, images, edit), img2img(tiny, images, edit))


def test_sd15_shaped_components_have_sd15_sizes():
    build = runpy.run_path(str(BENCH / "sd15_shaped.py"))["sd15_shaped_model"]
    model = build("meta")  # shapes only: no weights are allocated

    def millions(module: torch.nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    assert millions(model.unet) == pytest.approx(859.5, abs=1)
    assert millions(model.vae) == pytest.approx(83.7, abs=0.5)
    assert model.text_encoder.config.num_hidden_layers == 12 and model.text_encoder.config.hidden_size == 768
    assert model.text_encoder.config.vocab_size == len(model.tokenizer) and model.tokenizer.model_max_length == 77
    assert model.unet.config.cross_attention_dim == 768 and model.latent_scale == 0.18215
    assert (model.vae_scale_factor, model.edit_multiple) == (8, 64)
    assert type(model.scheduler).__name__ == "PNDMScheduler" and not model.scheduler.config.clip_sample
