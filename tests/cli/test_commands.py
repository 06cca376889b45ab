"""``forwardguard eval``, ``gate`` and ``demo`` run as a user runs them: real processes, their output,
their files and their exit status (the verdict)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from forwardguard.cli import app

POLICY = """\
immunity:
  transforms: [none]
  limits: {ratio: 0.9}
clean_utility:
  max_latent_relative_mse: 0.01
false_trigger:
  max_rate: 0.05
clean_originals:
  max_latent_relative_mse: 0.01
  max_false_trigger_rate: 0.0
"""
"""The backward model, its own reference, meets it; tiny:1 against tiny (random weights apart) can't."""


def forwardguard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forwardguard", *args], cwd=cwd, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, photo) -> Path:  # noqa: ANN001
    """A registry with snapshot s1 of two photos immunized against tiny, and a clean photo."""
    folder = tmp_path_factory.mktemp("cli-eval")
    (folder / "photos").mkdir()
    (folder / "clean").mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(photo(name, (40, 32))).save(folder / "photos" / f"{name}.png")
    Image.fromarray(photo("chelsea", (32, 32))).save(folder / "clean" / "chelsea.png")
    registry = str(folder / "reg.db")
    for args in (
        ["registry", "init", "--registry", registry],
        [
            "immunize",
            str(folder / "photos"),
            "--out",
            str(folder / "immunized"),
            "--model",
            "tiny",
            "--steps",
            "5",
            "--registry",
            registry,
        ],
        ["registry", "snapshot", "--registry", registry, "--name", "s1"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    (folder / "policy.yaml").write_text(POLICY)
    return folder


def test_eval_then_gate_from_the_command_line(folder: Path) -> None:
    result = forwardguard(
        "eval",
        "--registry",
        "reg.db",
        "--model",
        "v1=tiny",
        "--model",
        "v2=tiny:1",
        "--reference",
        "v1=v1",
        "--reference",
        "v2=v1",
        "--clean",
        "clean",
        "--gauntlet",
        "none",
        "--edit-steps",
        "2",
        "--out",
        "eval",
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr
    assert "report: eval/report.json" in result.stderr and "html:   eval/report.html" in result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads((folder / "eval" / "report.json").read_text())
    assert [model["name"] for model in report["models"]] == ["v2", "v1"]
    cells = {(cell["model"], cell["transform"]): cell for cell in report["cells"]}
    assert set(cells) == {("v1", "none"), ("v2", "none")}
    assert cells["v1", "none"]["relation"] == "backward" and cells["v2", "none"]["relation"] == "forward"
    assert cells["v1", "none"]["ratio"]["immunized"]["n"] == 2
    assert (folder / "eval" / "report.html").is_file()

    released = forwardguard("gate", "--report", "eval/report.json", "--candidate", "v1", "--policy", "policy.yaml", cwd=folder)
    assert released.returncode == 0, released.stdout + released.stderr
    assert released.stdout.splitlines()[-1].startswith("RELEASE v1: all ")
    held = forwardguard("gate", "--report", "eval/report.json", "--candidate", "v2", "--policy", "policy.yaml", cwd=folder)
    assert held.returncode == 1, held.stdout + held.stderr
    assert held.stdout.splitlines()[-1].startswith("HOLD v2: ")
    assert "clean_utility" in held.stdout and held.stderr == ""


def test_eval_refuses_an_unknown_gauntlet_in_one_line(folder: Path) -> None:
    result = forwardguard(
        "eval", "--registry", "reg.db", "--model", "v1=tiny", "--gauntlet", "missing.yaml", "--out", "x", cwd=folder
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: --gauntlet missing.yaml: cannot read") and result.stderr.count("\n") == 1


def test_tiny_demo_from_the_command_line(tmp_path: Path) -> None:
    """The demo on random-weight models, with a short gauntlet from a YAML file: every stage runs, both
    candidates get a verdict, and each printed verdict is the one ``gate`` gives for the written report."""
    from forwardguard.configs import GATE_POLICY
    from forwardguard.demo import demo_photos
    from forwardguard.eval.gate import gate, load_policy
    from forwardguard.eval.schema import load_report
    from forwardguard.registry import Registry

    (tmp_path / "gauntlet.yaml").write_text("transforms: [jpeg_q95]\n")
    result = forwardguard(
        "demo", "--v1", "tiny", "--v2", "tiny:1", "--attack-steps", "3", "--plant-steps", "3", "--edit-steps", "2",
        "--gauntlet", "gauntlet.yaml", "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("models: tiny (random weights")
    assert [line[:3] for line in lines if line[1:2] == "/"] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert lines[-1] == "report: forwardguard-demo/eval/report.html"
    out = tmp_path / "forwardguard-demo"
    assert sorted(path.name for path in (out / "immunized").glob("*.png")) == sorted(path.name for path in demo_photos())
    with Registry.open(out / "registry.db") as registry:
        assert len(registry.snapshot_patterns("demo-v1")) == len(demo_photos())
        assert any(model.planted_snapshot == "demo-v1" for model in registry.list_models())
    report = load_report(out / "eval" / "report.json")
    assert [(m.name, m.reference) for m in report.models] == [("planted-v2", "v2"), ("v2", "v2"), ("v1", None)]
    assert (out / "eval" / "report.html").is_file()

    verdicts = {line.split()[1].rstrip(":"): line.split()[0] for line in lines if line.startswith(("RELEASE ", "HOLD "))}
    assert verdicts == {"v2": "HOLD", "planted-v2": "HOLD"}
    policy = load_policy(GATE_POLICY)
    for candidate, verdict in verdicts.items():
        printed = forwardguard("gate", "--report", "forwardguard-demo/eval/report.json", "--candidate", candidate, cwd=tmp_path)
        assert printed.returncode == {"RELEASE": 0, "HOLD": 1}[verdict], printed.stdout + printed.stderr
        # tiny:1 was never planted, and three planting steps do not immunize it: both are held on immunity
        # alone, while their clean utility, false triggers and clean originals pass
        rules = gate(report, policy, candidate).rules
        assert len(rules) == 12, [rule.rule for rule in rules]
        held = {(rule.rule, rule.snapshot, rule.transform) for rule in rules if not rule.passed}
        assert held == {(rule, "demo-v1", t) for rule in ("immunity.ratio", "immunity.ssim") for t in ("none", "jpeg_q95")}
