"""The README's first command: ``forwardguard demo``, the whole flow offline on bundled photos and weights."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from forwardguard.cli import app
from forwardguard.demo import MARKER
from forwardguard.errors import ForwardguardError

runner = CliRunner()


@pytest.mark.xdist_group("default_demo")
def test_default_demo_releases_the_planted_v2_and_holds_v2_from_any_folder(default_demo, monkeypatch):
    """The demo as a newcomer runs it, with no options, from a folder that is not the checkout."""
    lines = default_demo.stdout.splitlines()
    assert [line[:3] for line in lines if line[1:2] == "/"] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert any(line.startswith("RELEASE planted-v2: all") for line in lines), default_demo.stdout
    assert any(line.startswith("HOLD v2: ") for line in lines), default_demo.stdout
    assert "immunity.ratio" in default_demo.stdout and "clean_originals.false_trigger" in default_demo.stdout
    assert "report: forwardguard-demo/eval/report.html" in default_demo.stdout

    cells = {(cell.model, cell.transform): cell for cell in default_demo.report.cells}
    assert cells["planted-v2", "none"].ratio.immunized.mean <= 0.10 and cells["v2", "none"].ratio.immunized.mean > 0.5
    originals = cells["planted-v2", "none"].clean_originals
    assert originals is not None and originals.reference == "v2" and originals.latent_relative_mse.max <= 0.01

    monkeypatch.chdir(default_demo.folder)
    again = runner.invoke(app, ["demo"])
    assert again.exit_code == 1 and "--overwrite" in again.stderr and again.stderr.count("\n") == 1


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
