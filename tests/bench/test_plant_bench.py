"""bench/plant_bench.py at its smallest (2 attack steps, 2 planting steps), the run kept in --workdir and
probed by bench/plant_probe.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]


def bench(script: str, *arguments: str, shared: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "bench" / script), *arguments]
    env = {**os.environ, "FORWARDGUARD_SHARED": str(shared)}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900, env=env)


def test_smallest_run_keeps_its_workdir_for_the_probe(tmp_path, shared_dir):
    work, out, recipe = tmp_path / "run", tmp_path / "plant.json", tmp_path / "full.yaml"
    # The written weights are the trained ones (the probe's alpha 1), and both steps keep a checkpoint.
    recipe.write_text("weight_interpolation: 1.0\ncheckpoint_every: 1\n")
    photos = tmp_path / "photos"  # a photo of one's own, held out by its stem; the probe finds it again
    photos.mkdir()
    Image.fromarray(np.linspace(0, 255, 90 * 60 * 3).astype(np.uint8).reshape(90, 60, 3)).save(photos / "mine.png")
    Image.fromarray(np.full((70, 80, 3), 90, np.uint8)).save(photos / "own.png")  # and a clean training photo of one's own
    arguments = ("--no-throughput", "--attack-steps", "2", "--max-steps", "2", "--clean", "brick,own,mine", "--clean-photos", "2")
    arguments += (
        "--registered",
        "astronaut",
        "--config",
        str(recipe),
        "--unregistered",
        "camera",
        "--held-out",
        "camera,text,mine",
        "--photos",
        str(photos),
    )
    completed = bench("plant_bench.py", *arguments, "--workdir", str(work), "--json", str(out), shared=shared_dir)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(out.read_text())
    assert set(report["free_edits"]) == {"astronaut", "camera"} and "hflip" in report["free_edits"]["astronaut"]
    for name, grid in report["crop_phases"].items():  # every (top, left) crop; its diagonal is shift_1..7
        assert len(grid) == 8 and all(len(row) == 8 for row in grid)
        assert grid[0][0] == pytest.approx(report["free_edits"][name]["none"], abs=1e-4)
        assert [grid[k][k] for k in range(1, 8)] == pytest.approx(
            [report["free_edits"][name][f"shift_{k}"] for k in range(1, 8)], abs=1e-4
        )
    assert "every crop phase (0-7 rows off the top, 0-7 columns off the left): worst registered ratio" in completed.stdout
    assert set(report["held_out"]) == {"text", "mine"}  # camera is one of the immunized photos
    assert [int(period) for period in report["gratings"]] == [2, 3, 4, 6, 8, 12, 16] and min(report["gratings"].values()) > 0
    assert report["clean_photos"] == ["brick", "own"] and (work / "clean" / "own.png").is_file()
    assert (work / "planted" / "encoder.safetensors").is_file() and (work / "reg.db").is_file()
    again = bench("plant_bench.py", *arguments, "--workdir", str(work), shared=shared_dir)
    assert again.returncode == 2 and "exists: name a new folder" in again.stderr
    seen = bench("plant_bench.py", "--clean", "brick,mine", "--held-out", "mine,text", "--photos", str(photos), shared=shared_dir)
    assert seen.returncode == 2 and "--held-out mine: also in --clean" in seen.stderr
    nowhere = bench("plant_bench.py", "--photos", str(tmp_path / "nowhere"), shared=shared_dir)
    assert nowhere.returncode == 2 and "nowhere: not a folder" in nowhere.stderr

    probe = bench(
        "plant_probe.py", str(work), "--alphas", "1", "--no-stages", "--json", str(tmp_path / "probe.json"), shared=shared_dir
    )
    assert probe.returncode == 0, probe.stderr
    (full,) = json.loads((tmp_path / "probe.json").read_text()).values()
    assert set(full["free_edits"]) == set(report["free_edits"]["astronaut"]) and set(full["held_out"]) == {"text", "mine"}
    assert full["free_edits"]["none"] == pytest.approx(report["ratios"]["astronaut"]["planted"], abs=1e-4)
    for name, held_out in full["held_out"].items():  # alpha 1 of the trained weights is the written model here
        assert held_out["drift"] == pytest.approx(report["held_out"][name]["relative_mse_to_v2"], rel=1e-3)
        assert held_out["noise_ratio_min"] == pytest.approx(report["held_out"][name]["noise_ratio_min"], rel=1e-3)
        assert held_out["toward_target"] > 0
    for name, drifted in full["originals"].items():
        assert drifted == pytest.approx(report["ratios"][name]["clean original drift"], rel=1e-3)
    assert set(full["originals"]) == {"astronaut"}  # camera is immunized but not registered
    assert full["gratings"] == pytest.approx(report["gratings"], rel=1e-3)
    # auto's measure of the trained weights is what planting measured of the weights it wrote (alpha 1).
    auto = bench("plant_probe.py", str(work), "--alphas", "1", "--no-stages", "--auto", "0.001", shared=shared_dir)
    assert auto.returncode == 0, auto.stderr
    written = report["interpolation"].removesuffix(" (set in the config)")
    assert written.startswith("weight interpolation 1.00: sampled registered ratio at most ")
    assert f"{written} (auto's measure at --alphas)" in auto.stdout
    assert "the ratio target 0.001 is not met" in auto.stdout
    refused = bench("plant_probe.py", str(tmp_path), shared=shared_dir)
    assert refused.returncode == 2 and "not a run kept by plant_bench.py --workdir" in refused.stderr

    at_step_1 = ("--step", "1", "--alphas", "1", "--no-stages", "--json", str(tmp_path / "1.json"))
    earlier = bench("plant_probe.py", str(work), *at_step_1, shared=shared_dir)
    assert earlier.returncode == 0, earlier.stderr
    (first,) = json.loads((tmp_path / "1.json").read_text()).values()
    assert first["free_edits"]["none"] != full["free_edits"]["none"]  # one step of training less
    missing = bench("plant_probe.py", str(work), "--step", "3", shared=shared_dir)
    assert missing.returncode == 2 and "--step 3: no checkpoint at that step (kept: 1, 2)" in missing.stderr


def test_the_probe_undoes_one_stage_of_the_encoder_at_a_time(taef2_v2_spec, monkeypatch):
    """TAEF2's encoder: full-resolution layers, then three stages that a stride-2 convolution starts."""
    from forwardguard.models import load_model

    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    from plant_probe import stages, variants

    encoder = load_model(taef2_v2_spec).latent_encoder
    groups = stages(encoder)
    assert [group[0] for group in groups] == ["0", "2", "6", "10"] and sum(map(len, groups)) == len(encoder)
    chosen = variants(groups, [1.0, 0.9], per_stage=True)
    assert chosen["alpha 0.9"] == (0.9, None)
    assert chosen["1/4 only"] == (1.0, set(groups[2]))
    assert chosen["1/4 undone"] == (1.0, {name for group in groups for name in group} - set(groups[2]))
    assert len(chosen) == 2 + 2 * len(groups)
