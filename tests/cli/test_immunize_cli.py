"""``forwardguard immunize`` as a user runs it: outputs, sidecars, refusals and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from forwardguard.cli import app
from forwardguard.images import read_image

runner = CliRunner()


@pytest.fixture()
def inputs(tmp_path, photo) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo("astronaut", (40, 24))).save(folder / "astronaut.jpg", quality=95)
    rgba = np.dstack([photo("coffee", (24, 24)), np.linspace(0, 255, 24 * 24, dtype=np.uint8).reshape(24, 24)])
    Image.fromarray(rgba, "RGBA").save(folder / "coffee.png")
    return folder


def invoke(*args: str):
    return runner.invoke(app, ["immunize", *args])


def test_immunize_writes_png_and_json_per_input(inputs, tmp_path):
    out = tmp_path / "out"
    result = invoke(str(inputs), "--out", str(out), "--model", "tiny", "--steps", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.json", "astronaut.png", "coffee.json", "coffee.png"]
    record = json.loads((out / "astronaut.json").read_text())
    for key in ("method", "model_fingerprint", "eps", "steps", "seed", "loss_before", "loss_after", "linf_255"):
        assert key in record
    assert record["steps"] == 2 and record["eps_255"] == pytest.approx(16)
    written = read_image(out / "astronaut.png")
    assert (written.width, written.height) == (40, 24)
    coffee = read_image(out / "coffee.png")
    assert np.array_equal(coffee.alpha, read_image(inputs / "coffee.png").alpha)
    assert "2 immunized, 0 failed" in result.output


def test_existing_outputs_are_kept_unless_overwrite(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "astronaut.png").write_bytes(b"mine")
    result = invoke(str(inputs / "astronaut.jpg"), "--out", str(out), "--model", "tiny", "--steps", "1")
    assert result.exit_code == 1
    assert "exists" in result.output and "--overwrite" in result.output
    assert (out / "astronaut.png").read_bytes() == b"mine"
    result = invoke(str(inputs / "astronaut.jpg"), "--out", str(out), "--model", "tiny", "--steps", "1", "--overwrite")
    assert result.exit_code == 0, result.output
    assert read_image(out / "astronaut.png").width == 40


def test_bad_file_fails_alone_and_the_others_are_written(inputs, tmp_path):
    (inputs / "broken.png").write_bytes((inputs / "coffee.png").read_bytes()[:80])
    (inputs / "notes.jpg").write_text("not an image")
    out = tmp_path / "out"
    result = invoke(str(inputs), "--out", str(out), "--model", "tiny", "--steps", "1")
    assert result.exit_code == 1
    assert "broken.png" in result.output and "notes.jpg" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.json", "astronaut.png", "coffee.json", "coffee.png"]


def test_mask_of_the_wrong_size_is_named(inputs, tmp_path):
    Image.new("L", (10, 10), 255).save(tmp_path / "mask.png")
    result = invoke(
        str(inputs / "astronaut.jpg"),
        "--out",
        str(tmp_path / "out"),
        "--model",
        "tiny",
        "--method",
        "diffusion",
        "--mask",
        str(tmp_path / "mask.png"),
        "--steps",
        "1",
    )
    assert result.exit_code == 1
    assert "mask.png" in result.output and "10 x 10" in result.output
    assert not (tmp_path / "out" / "astronaut.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "blur"], "unknown method 'blur'"),
        (["--eps", "2"], "eps must be in (0, 1]"),
        (["--eps", "abc"], "not a number or fraction"),
        (["--model", "taesd:/no/such/encoder.pth"], "/no/such/encoder.pth"),
        (["--target", "/no/such/target.png"], "target image /no/such/target.png not found"),
    ],
)
def test_bad_arguments_are_one_line_errors(inputs, tmp_path, args, message):
    result = invoke(str(inputs), "--out", str(tmp_path / "out"), "--steps", "1", *args)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_cli_process_prints_one_line_and_no_traceback(tmp_path):
    (tmp_path / "bad.png").write_text("nope")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "forwardguard",
            "immunize",
            str(tmp_path / "bad.png"),
            "--out",
            str(tmp_path / "o"),
            "--model",
            "tiny",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert "error: " in completed.stderr and "bad.png: not a readable image" in completed.stderr


def test_help_does_not_import_torch():
    code = "import sys; from forwardguard.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_registry_records_every_written_image(inputs, tmp_path):
    from forwardguard.registry import Registry

    registry = tmp_path / "reg.db"
    assert runner.invoke(app, ["registry", "init", "--registry", str(registry)]).exit_code == 0
    (inputs / "broken.png").write_bytes(b"\x89PNG broken")
    result = invoke(
        str(inputs),
        "--out",
        str(tmp_path / "out"),
        "--model",
        "tiny",
        "--steps",
        "1",
        "--registry",
        str(registry),
        "--tenant",
        "acme",
    )
    assert result.exit_code == 1  # the broken file
    with Registry.open(registry) as opened:
        patterns = opened.list_patterns()
        assert len(patterns) == 2 and {p.tenant for p in patterns} == {"acme"}
        for name in ("astronaut", "coffee"):
            png = (tmp_path / "out" / f"{name}.png").read_bytes()
            [match] = [m for m in opened.lookup(png) if m.kind == "bytes"]
            sample = opened.load_sample(match.pattern)
            assert match.pattern.params["steps"] == 1
            assert np.array_equal(sample.clean, read_image(inputs / f"{name}.{'jpg' if name == 'astronaut' else 'png'}").rgb)
    assert "pattern " in result.output


def test_missing_registry_is_refused_before_any_work(inputs, tmp_path):
    result = invoke(str(inputs), "--out", str(tmp_path / "out"), "--model", "tiny", "--registry", str(tmp_path / "none.db"))
    assert result.exit_code == 1
    assert "no registry at" in result.output
    assert not (tmp_path / "out").exists()


def test_an_encoder_only_model_immunizes_with_the_encoder_attack(inputs, tmp_path, taesana_spec):
    """TAESANA (32x, no decoder): the encoder attack pads 40x24 and 24x24 images to 32 and writes them at their size."""
    from forwardguard.models import load_model

    out = tmp_path / "out"
    result = invoke(str(inputs), "--out", str(out), "--model", taesana_spec, "--steps", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "astronaut.json").read_text())
    assert record["model_fingerprint"] == load_model(taesana_spec).fingerprint
    assert record["loss_after"] < record["loss_before"] and record["linf_255"] <= 16
    assert (read_image(out / "astronaut.png").width, read_image(out / "astronaut.png").height) == (40, 24)
    assert "2 immunized, 0 failed" in result.output


def test_the_diffusion_attack_on_an_encoder_only_model_is_refused_before_any_work(inputs, tmp_path, taesana_spec):
    result = invoke(str(inputs), "--out", str(tmp_path / "out"), "--model", taesana_spec, "--method", "diffusion")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        f"error: the diffusion attack needs a Stable Diffusion model; {taesana_spec!r} is an encoder without a decoder"
        " (use --method encoder)"
    ], result.output
    assert not (tmp_path / "out").exists()
