"""The README's first command: ``forwardguard demo``, the whole flow offline on bundled photos and weights."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from forwardguard.cli import app
from forwardguard.demo import MARKER, DemoSettings, demo_photos, run_demo
from forwardguard.errors import ForwardguardError
from forwardguard.registry import Registry

runner = CliRunner()


def test_default_demo_releases_the_planted_v2_and_holds_v2_from_any_folder(tmp_path, monkeypatch):
    """The demo as a newcomer runs it, with no options, from a folder that is not the checkout."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "forwardguard-demo"
    lines = result.stdout.splitlines()
    assert [line[:3] for line in lines if line[1:2] == "/"] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert any(line.startswith("RELEASE planted-v2: all") for line in lines), result.stdout
    assert any(line.startswith("HOLD v2: ") for line in lines), result.stdout
    assert "immunity.ratio" in result.stdout and "clean_originals.false_trigger" in result.stdout
    assert "report: forwardguard-demo/eval/report.html" in result.stdout

    report = json.loads((out / "eval" / "report.json").read_text())
    ratios = {cell["model"]: cell["ratio"]["immunized"]["mean"] for cell in report["cells"] if cell["transform"] == "none"}
    assert ratios["planted-v2"] <= 0.10 and ratios["v2"] > 0.5, ratios
    [planted_none] = [c for c in report["cells"] if (c["model"], c["transform"]) == ("planted-v2", "none")]
    assert planted_none["clean_originals"]["reference"] == "v2"
    assert planted_none["clean_originals"]["latent_relative_mse"]["max"] <= 0.01

    again = runner.invoke(app, ["demo"])
    assert again.exit_code == 1 and "--overwrite" in again.stderr and again.stderr.count("\n") == 1


def test_tiny_demo_runs_every_stage(tmp_path):
    said: list[str] = []
    settings = DemoSettings(
        out=tmp_path / "demo",
        v1="tiny",
        v2="tiny:1",
        attack_steps=3,
        plant_steps=3,
        edit_steps=2,
        transforms=("jpeg_q95",),
        device="cpu",
    )
    result = run_demo(settings, say=said.append)
    assert [line[:3] for line in said if line[1] == "/"] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert sorted(path.name for path in result.immunized) == sorted(path.name for path in demo_photos())
    with Registry.open(result.registry) as registry:
        assert len(registry.snapshot_patterns("demo-v1")) == len(demo_photos())
        assert any(model.planted_snapshot == "demo-v1" for model in registry.list_models())
    report = json.loads(result.report.read_text())
    assert [m["name"] for m in report["models"]] == ["planted-v2", "v2", "v1"]
    assert {m["name"]: m["reference"] for m in report["models"]} == {"planted-v2": "v2", "v2": "v2", "v1": None}
    assert result.report.with_name("report.html").is_file()
    assert result.verdicts == {"v2": False, "planted-v2": False}
    # tiny:1 was never planted, and three planting steps do not immunize it: both are held on immunity alone,
    # while their clean utility, false triggers and clean originals pass
    for name in ("v2", "planted-v2"):
        rules = result.gates[name].rules
        assert len(rules) == 12, [rule.rule for rule in rules]
        held = {(rule.rule, rule.snapshot, rule.transform) for rule in rules if not rule.passed}
        assert held == {
            (rule, "demo-v1", transform) for rule in ("immunity.ratio", "immunity.ssim") for transform in ("none", "jpeg_q95")
        }
        assert all(rule.passed for rule in rules if not rule.rule.startswith("immunity."))


def test_overwrite_replaces_only_a_demo_folder(tmp_path):
    from forwardguard.demo import prepare_folder

    demo = tmp_path / "demo"
    prepare_folder(demo, overwrite=False)
    (demo / "old.txt").write_text("from the last run")
    with pytest.raises(ForwardguardError, match="exists: .* --overwrite"):
        prepare_folder(demo, overwrite=False)
    prepare_folder(demo, overwrite=True)
    assert sorted(path.name for path in demo.iterdir()) == [MARKER]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    with pytest.raises(ForwardguardError, match="not a folder made by the demo"):
        prepare_folder(mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "keep"
