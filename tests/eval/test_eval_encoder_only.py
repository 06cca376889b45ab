"""``eval`` and ``gate`` with encoder-only models (``taesd:ENCODER``): every latent figure, the edit metrics
marked "not computed: no decoder" in report.json and report.html, and a verdict from the latent rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from planting_support import record_immunized
from typer.testing import CliRunner

from forwardguard.cli import app
from forwardguard.eval.edits import NO_DECODER
from forwardguard.eval.run import run_eval
from forwardguard.eval.schema import load_report
from forwardguard.eval.settings import EvalRequest, EvalSettings, ModelArg
from forwardguard.immunize import AttackSettings
from forwardguard.models.taesd import TAESANAEncoder, save_taesd
from forwardguard.registry import Registry

POLICY = """
immunity:
  transforms: [none, jpeg_q75]
  limits: {{ratio: {ratio}, ssim: 0.8}}
clean_utility: {{max_latent_relative_mse: 1000000}}
false_trigger: {{max_rate: 1.0}}
clean_originals: {{max_latent_relative_mse: 1000000, max_false_trigger_rate: 1.0}}
"""


@pytest.fixture(scope="module")
def report_path(tmp_path_factory, taef2, taef2_spec, taesana_spec, shared_dir, photo) -> Path:
    """Patterns made against TAEF2; models: TAEF2 (with its decoder) against TAEF2's encoder alone as its
    reference, and TAESANA (32x, no decoder) against a random TAESANA-shaped encoder as its reference."""
    folder = tmp_path_factory.mktemp("encoder-only")
    registry = folder / "reg.db"
    with Registry.open(registry, create=True) as opened:
        record_immunized(opened, taef2, [photo("astronaut", (48, 40)), photo("coffee", (48, 40))], AttackSettings(steps=3))
        opened.create_snapshot("s1")
    torch.manual_seed(0)
    save_taesd(TAESANAEncoder(32), None, folder / "random-sana")
    (folder / "clean").mkdir()
    Image.fromarray(photo("chelsea", (40, 40))).save(folder / "clean" / "chelsea.png")
    request = EvalRequest(
        registry=str(registry),
        models=(
            ModelArg("v1", taef2_spec),
            ModelArg("v1-enc", f"taesd:{shared_dir / 'models' / 'taef2' / 'taef2_encoder.pth'}"),
            ModelArg("sana", taesana_spec),
        ),
        out=folder / "out",
        snapshots=("s1",),
        clean=folder / "clean",
        references={"v1": "v1-enc", "sana": f"taesd:{folder / 'random-sana'}"},
        settings=EvalSettings(transforms=("jpeg_q75",), noise_draws=1),
    )
    return run_eval(request)


def test_the_report_has_every_latent_figure_and_marks_the_edit_metrics(report_path):
    report = json.loads(report_path.read_text())
    models = {model["name"]: model for model in report["models"]}
    assert NO_DECODER == "not computed: no decoder"
    assert (models["sana"]["edits"], models["sana"]["edits_not_computed"]) == ([], NO_DECODER)
    assert (models["v1-enc"]["edits"], models["v1-enc"]["edits_not_computed"]) == ([], NO_DECODER)
    assert (models["v1"]["edits"], models["v1"]["edits_not_computed"]) == (["reconstruction"], None)
    cells = {(cell["model"], cell["transform"]): cell for cell in report["cells"]}
    assert set(cells) == {(model, transform) for model in models for transform in ("none", "jpeg_q75")}
    for (model, _), cell in cells.items():
        assert cell["ratio"]["immunized"]["n"] == 2 and cell["ratio"]["noise"]["n"] == 2
        assert cell["ratio"]["immunized"]["mean"] is not None and cell["ratio"]["immunized"]["p90"] is not None
        assert cell["protection"]["rate"] is not None
        if model == "v1":
            assert set(cell["edits"]) == {"reconstruction"} and cell["edits_not_computed"] is None
        else:
            assert cell["edits"] == {} and cell["edits_not_computed"] == NO_DECODER
    assert cells["sana", "none"]["relation"] == "forward" and cells["v1", "none"]["relation"] == "backward"
    assert cells["sana", "none"]["clean_originals"]["latent_relative_mse"]["mean"] > 0  # against the random reference
    assert cells["v1", "none"]["clean_originals"]["latent_relative_mse"]["mean"] == 0  # the same encoder
    clean = {entry["model"]: entry for entry in report["clean"]}
    assert clean["sana"]["edits"] == {} and clean["sana"]["edits_not_computed"] == NO_DECODER
    assert clean["sana"]["latent_relative_mse"]["mean"] > 0 and clean["sana"]["false_trigger"]["samples"] == 1
    assert clean["v1"]["edits"] == {} and clean["v1"]["edits_not_computed"] == f"{NO_DECODER} in the reference v1-enc"
    assert "NaN" not in report_path.read_text()
    load_report(report_path)  # the gate's strict reader


def test_the_html_page_says_why_the_edit_metrics_are_missing(report_path):
    page = (report_path.parent / "report.html").read_text()
    assert "<li><b>edit metrics of sana</b>: not computed: no decoder</li>" in page
    assert "<p>sana: not computed: no decoder</p>" in page
    assert "v1 edit PSNR/SSIM: not computed: no decoder in the reference v1-enc" in page


@pytest.mark.parametrize(("ratio", "exit_code", "verdict"), [(2.0, 0, "RELEASE sana"), (0.3, 1, "HOLD sana")])
def test_gate_on_an_encoder_only_candidate_gives_a_verdict(report_path, tmp_path, ratio, exit_code, verdict):
    """TAESANA is not immunized by patterns made against TAEF2 (ratio about 1): a 0.3 limit holds it, 2.0 releases it."""
    policy = tmp_path / "gate.yaml"
    policy.write_text(POLICY.format(ratio=ratio))
    result = CliRunner().invoke(app, ["gate", "--report", str(report_path), "--policy", str(policy), "--candidate", "sana"])
    assert result.exit_code == exit_code, result.output
    assert verdict in result.stdout and "(1 skipped: not applicable)" in result.stdout
    assert "not computed: no decoder" in result.stdout
