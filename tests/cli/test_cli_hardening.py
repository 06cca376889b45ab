"""The CLI under hostile or broken input: one ``error:`` line, a non-zero exit, nothing half-written
(issue 14: each test names its item)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from forwardguard.cli import app
from forwardguard.errors import ForwardguardError
from forwardguard.images import LoadedImage
from forwardguard.immunize import AttackSettings, immunize
from forwardguard.models import load_model
from forwardguard.registry import Registry, blobs

runner = CliRunner()


@pytest.fixture()
def inputs(tmp_path: Path, photo) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(photo(name, (24, 24))).save(folder / f"{name}.png")
    return folder


def invoke(*args: str):
    return runner.invoke(app, ["immunize", *args])


def one_error_line(result) -> str:
    """The run's only ``error:`` line (no traceback)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize("option", ["--eps", "--step-size"])
def test_item_01_a_huge_exponent_is_refused_at_once(inputs: Path, tmp_path: Path, option: str) -> None:
    """issue 14 item 1: ``--eps 1e-30000000`` took about a minute to parse."""
    started = time.monotonic()
    result = invoke(str(inputs), "--out", str(tmp_path / "out"), "--model", "tiny", option, "1e-30000000")
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert "not a number or fraction" in one_error_line(result)


@pytest.mark.parametrize("option", ["--eps", "--step-size"])
def test_item_06_an_overflowing_number_is_one_error_line(inputs: Path, tmp_path: Path, option: str) -> None:
    """issue 14 item 6: ``--eps 1e400`` and ``--step-size 1e400`` ended in an OverflowError traceback."""
    result = invoke(str(inputs), "--out", str(tmp_path / "out"), "--model", "tiny", option, "1e400")
    assert result.exit_code == 1
    assert option in one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_item_06_the_serve_limit_on_eps_is_parsed_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 14 item 6: ``serve --max-eps`` uses the same parser, as do all of serve's number options
    (issue 16: they are made from the settings), and the settings refuse infinities from variables."""
    result = runner.invoke(app, ["serve", "--registry", "nowhere.db", "--model", "tiny", "--max-eps", "1e400"])
    assert result.exit_code == 1 and "--max-eps" in one_error_line(result)
    result = runner.invoke(app, ["serve", "--registry", "nowhere.db", "--model", "tiny", "--request-timeout", "inf"])
    assert result.exit_code == 1 and "--request-timeout: not a number" in one_error_line(result)
    monkeypatch.setenv("FORWARDGUARD_SERVE_REQUEST_TIMEOUT_S", "inf")
    result = runner.invoke(app, ["serve", "--registry", "nowhere.db", "--model", "tiny"])
    assert result.exit_code == 1 and "request_timeout_s" in one_error_line(result)


@pytest.mark.parametrize("guidance", ["inf", "nan", "-inf"])
def test_item_05_non_finite_guidance_is_refused(inputs: Path, tmp_path: Path, guidance: str) -> None:
    """issue 14 item 5: ``--guidance inf`` wrote the input unchanged with a NaN sidecar; nan turned guidance off."""
    out = tmp_path / "out"
    result = invoke(str(inputs), "--out", str(out), "--model", "tiny", "--method", "diffusion", "--guidance", guidance)
    assert result.exit_code == 1
    assert "guidance must be a finite number" in one_error_line(result)
    assert not out.exists()


def test_item_05_a_model_with_nan_weights_is_refused_and_nan_losses_write_nothing(tiny) -> None:
    """issue 14 item 5: an all-NaN encoder immunized nothing, yet wrote and recorded the image."""
    from forwardguard.models.load import check_finite_weights

    broken = load_model("tiny")
    parameter = next(broken.latent_encoder.parameters())
    with torch.no_grad():
        parameter.fill_(float("nan"))
    with pytest.raises(ForwardguardError, match="NaN or infinite values"):
        check_finite_weights(broken)
    image = LoadedImage(rgb=np.full((16, 16, 3), 100, np.uint8), alpha=None, path=None)
    with pytest.raises(ForwardguardError, match="loss .* is NaN or infinite"):
        immunize([image], broken, AttackSettings(steps=1))


def test_item_05_loading_nan_weights_is_one_error_line(tmp_path: Path, taef2_spec: str) -> None:
    """issue 14 item 5: the weights are checked when a model is loaded, before any attack."""
    from safetensors.torch import save_file

    from forwardguard.models.taesd import load_state_dict_file, parse_taesd_spec

    encoder_path, _ = parse_taesd_spec(taef2_spec)
    weights = {name: torch.full_like(value, float("nan")) for name, value in load_state_dict_file(encoder_path).items()}
    broken = tmp_path / "encoder.safetensors"
    save_file(weights, broken)
    with pytest.raises(ForwardguardError, match="NaN or infinite"):
        load_model(f"taesd:{broken}")


@pytest.mark.parametrize("blocker", ["file", "file_parent"])
def test_item_07_an_out_folder_that_cannot_be_made_is_one_line_before_the_attack(
    inputs: Path, tmp_path: Path, blocker: str
) -> None:
    """issue 14 item 7: --out over a file ended in a traceback after the attack, the other inputs unprocessed."""
    in_the_way = tmp_path / "taken"
    in_the_way.write_text("not a folder")
    out = in_the_way if blocker == "file" else in_the_way / "out"
    result = invoke(str(inputs), "--out", str(out), "--model", "tiny", "--steps", "1", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("cannot create the output folder" in line for line in errors)  # each input reported
    assert "0 immunized, 2 failed" in result.output


def test_item_08_a_full_disk_leaves_no_partial_blob_and_the_other_inputs_go_on(
    inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 14 item 8: ENOSPC while writing a blob was a traceback that stopped the run and left a temp blob."""
    registry_path = tmp_path / "reg.db"
    with Registry.open(registry_path, create=True) as registry:
        blob_root = registry.blob_root
    real_fsync, failed = os.fsync, []

    def blob_fsync_fills_the_disk_once(descriptor: int) -> None:
        if not failed and os.readlink(f"/proc/self/fd/{descriptor}").startswith(str(blob_root)):
            failed.append(descriptor)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(blobs.os, "fsync", blob_fsync_fills_the_disk_once)
    out = tmp_path / "out"
    result = invoke(
        str(inputs), "--out", str(out), "--model", "tiny", "--steps", "1", "--device", "cpu", "--registry", str(registry_path)
    )
    assert failed and result.exit_code == 1, result.output
    assert "No space left on device" in one_error_line(result)
    assert "1 immunized, 1 failed" in result.output
    assert not any(path.name.endswith(".tmp") for path in tmp_path.rglob("*"))
    with Registry.open(registry_path) as registry:
        assert len(registry.list_patterns()) == 1
    assert sorted(path.suffix for path in out.iterdir()) == [".json", ".png"]


def test_item_16_a_newline_in_a_file_name_stays_on_one_error_line(tmp_path: Path) -> None:
    """issue 14 item 16: a newline in a file name split the error in two lines (a forged log line)."""
    forged = tmp_path / "x.png\nerror: forged line"
    forged.write_bytes(b"not an image")
    result = invoke(str(forged), "--out", str(tmp_path / "out"), "--model", "tiny", "--device", "cpu")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "x.png\\nerror: forged line" in line


def test_item_05_an_undefined_ratio_is_none_and_reads_n_a() -> None:
    """Issue 14 item 5: an image that already is its target has no ratio (0/0): None (null in the sidecar,
    which is written with allow_nan=False), never a bare NaN; people read n/a."""
    from forwardguard.immunize.attack import ImmunizedImage, format_ratio

    pixels = np.zeros((2, 2, 3), np.uint8)
    undefined = ImmunizedImage(rgb=pixels, alpha=None, delta=pixels.astype(np.int16), loss_before=0.0, loss_after=0.0)
    assert undefined.loss_ratio is None and format_ratio(undefined.loss_ratio) == "n/a"
    defined = ImmunizedImage(rgb=pixels, alpha=None, delta=pixels.astype(np.int16), loss_before=2.0, loss_after=0.5)
    assert defined.loss_ratio == 0.25 and format_ratio(defined.loss_ratio) == "0.250"
