"""``forwardguard immunize`` over many images: resuming a run, sharding it over processes, the speed options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from ports import free_port
from typer.testing import CliRunner

from forwardguard.cli import app

runner = CliRunner()
NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera")


@pytest.fixture()
def folder(tmp_path, photo) -> Path:
    """Five photos of three sizes."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    sizes = [(40, 24), (32, 32), (40, 24), (24, 40), (32, 32)]
    for name, size in zip(NAMES, sizes):
        Image.fromarray(photo(name, size)).save(inputs / f"{name}.png")
    return inputs


def invoke(*args: str):
    return runner.invoke(app, ["immunize", *args, "--model", "tiny", "--device", "cpu", "--steps", "2"])


def sources(out: Path) -> list[str]:
    return sorted(json.loads(path.read_text())["source"] for path in out.glob("*.json"))


def test_resume_skips_complete_outputs_and_redoes_partial_ones(folder, tmp_path):
    out = tmp_path / "out"
    assert invoke(str(folder), "--out", str(out), "--batch-size", "2").exit_code == 0
    kept = {name: (out / f"{name}.png").stat().st_mtime_ns for name in NAMES}
    (out / "coffee.json").unlink()  # interrupted before its sidecar: partial
    (out / "chelsea.png").write_bytes(b"torn")  # does not match its sidecar: partial

    refused = invoke(str(folder), "--out", str(out))
    assert refused.exit_code == 1 and "--resume" in refused.output

    resumed = invoke(str(folder), "--out", str(out), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "2 immunized, 3 already done, 0 failed" in resumed.output
    assert sources(out) == sorted(f"{name}.png" for name in NAMES)
    for name in ("astronaut", "rocket", "camera"):
        assert (out / f"{name}.png").stat().st_mtime_ns == kept[name]
    assert Image.open(out / "chelsea.png").size == (40, 24)

    other = invoke(str(folder), "--out", str(out), "--resume", "--step-rule", "paper")
    assert other.exit_code == 1 and "other settings (step_rule)" in other.output


def test_records_say_how_they_were_made(folder, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        str(folder / "astronaut.png"),
        "--out",
        str(out),
        "--target-ratio",
        "0.99",
        "--check-every",
        "1",
        "--precision",
        "fp32",
        "--no-channels-last",
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "astronaut.json").read_text())
    assert record["step_rule"] == "momentum" and record["target_ratio"] == 0.99 and record["check_every"] == 1
    assert 0 <= record["steps_run"] <= 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--step-rule", "adam"], "unknown step rule 'adam'"),
        (["--precision", "fp16"], "unknown precision 'fp16'"),
        (["--target-ratio", "2"], "target ratio must be in (0, 1]"),
        (["--resume", "--overwrite"], "give one of them"),
    ],
)
def test_bad_speed_options_are_one_line_errors(folder, tmp_path, args, message):
    result = invoke(str(folder), "--out", str(tmp_path / "out"), *args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output


def launch(processes: int, *args: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` on the CPU: ``--multi_gpu`` starts torchrun's processes, which run on the
    CPU here (``--cpu`` alone would start a single process unless mpirun is configured)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "forwardguard",
        "immunize",
        *args,
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--steps",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_two_processes_share_a_folder_and_resume_it(folder, tmp_path):
    out, registry = tmp_path / "out", tmp_path / "reg.db"
    assert runner.invoke(app, ["registry", "init", "--registry", str(registry)]).exit_code == 0
    # A first, interrupted run got two images done.
    first = invoke(str(folder / "astronaut.png"), str(folder / "rocket.png"), "--out", str(out), "--registry", str(registry))
    assert first.exit_code == 0, first.output
    done_before = {name: (out / f"{name}.png").read_bytes() for name in ("astronaut", "rocket")}

    launched = launch(2, str(folder), "--out", str(out), "--resume", "--registry", str(registry))
    assert launched.returncode == 0, launched.stdout + launched.stderr
    # files are sorted (astronaut, camera, chelsea, coffee, rocket): process 0 takes 0, 2, 4; process 1 takes 1, 3
    assert "process 0/2: 1 immunized, 2 already done, 0 failed" in launched.stderr
    assert "process 1/2: 2 immunized, 0 already done, 0 failed" in launched.stderr
    assert sources(out) == sorted(f"{name}.png" for name in NAMES)  # every input exactly once
    for name, png in done_before.items():
        assert (out / f"{name}.png").read_bytes() == png
    from forwardguard.registry import Registry

    with Registry.open(registry) as opened:
        recorded = {pattern.image_sha256 for pattern in opened.list_patterns()}
    written = {json.loads(path.read_text())["image_sha256"] for path in out.glob("*.json")}
    assert recorded == written and len(recorded) == len(NAMES)

    again = launch(2, str(folder), "--out", str(out), "--resume")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("0 immunized") == 2


def test_bf16_channels_last_and_mixed_buckets_run_on_the_cpu(folder, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        str(folder), "--out", str(out), "--precision", "bf16", "--channels-last", "--batch-size", "4", "--bucket-growth", "2"
    )  # 24x40, 32x32 and 40x24 share a 40x40 bucket
    assert result.exit_code == 0, result.output
    for name in NAMES:
        record = json.loads((out / f"{name}.json").read_text())
        assert record["loss_after"] < record["loss_before"] and record["linf_255"] <= 16
        written = np.asarray(Image.open(out / f"{name}.png"))
        assert written.shape == np.asarray(Image.open(folder / f"{name}.png")).shape
