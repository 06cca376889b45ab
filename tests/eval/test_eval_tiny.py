"""``eval`` on tiny: the SD edit path (img2img and inpainting), the report's shape, seeds, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from planting_support import insert_empty_snapshot, record_immunized

from forwardguard.errors import ForwardguardError
from forwardguard.eval.metric_names import METRICS
from forwardguard.eval.report import NOT_COMPUTED
from forwardguard.eval.run import run_eval
from forwardguard.eval.schema import load_report
from forwardguard.eval.settings import EvalRequest, EvalSettings, ModelArg
from forwardguard.immunize import AttackSettings
from forwardguard.registry import Registry


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory, tiny, photo) -> Path:
    path = tmp_path_factory.mktemp("eval-registry") / "reg.db"
    with Registry.open(path, create=True) as registry:
        record_immunized(registry, tiny, [photo("astronaut", (40, 32)), photo("coffee", (40, 32))], AttackSettings(steps=3))
        registry.create_snapshot("tiny-v1")
    insert_empty_snapshot(path, "empty")
    return path


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory, photo) -> Path:
    folder = tmp_path_factory.mktemp("eval-clean")
    Image.fromarray(photo("chelsea", (32, 32))).save(folder / "chelsea.png")
    return folder


def request(registry: Path, out: Path, clean: Path | None = None, **settings) -> EvalRequest:
    return EvalRequest(
        registry=str(registry),
        models=(ModelArg("v1", "tiny"), ModelArg("v2", "tiny:1")),
        out=out,
        snapshots=("tiny-v1",),
        clean=clean,
        references={"v2": "v1"},
        settings=EvalSettings(transforms=("jpeg_q75",), edit_steps=2, **settings),
    )


def test_report_has_every_cell_edit_and_metric(tiny_registry, clean_folder, tmp_path):
    path = run_eval(request(tiny_registry, tmp_path / "out", clean_folder))
    load_report(path)  # the gate's reader: strict models
    report = json.loads(path.read_text())
    assert report["schema_version"] == 1
    assert [m["name"] for m in report["models"]] == ["v2", "v1"]  # v2, unknown to the registry, is a candidate: newest
    cells = {(c["model"], c["transform"]): c for c in report["cells"]}
    assert set(cells) == {(m, t) for m in ("v1", "v2") for t in ("none", "jpeg_q75")}
    assert cells["v1", "none"]["relation"] == "backward" and cells["v2", "none"]["relation"] == "forward"
    for cell in cells.values():
        assert cell["ratio"]["immunized"]["n"] == 2 and cell["ratio"]["noise"]["n"] == 2
        assert set(cell["edits"]) == {"img2img", "inpaint"}
        for versions in cell["edits"].values():
            assert set(versions["immunized"]) == set(METRICS) == set(versions["noise"])
    assert cells["v1", "none"]["ratio"]["immunized"]["mean"] < cells["v1", "none"]["ratio"]["noise"]["mean"]
    [v2_clean] = [c for c in report["clean"] if c["model"] == "v2"]
    assert v2_clean["reference"] == "v1" and v2_clean["latent_relative_mse"]["mean"] > 0
    assert set(v2_clean["edits"]) == {"img2img", "inpaint"}
    trigger = v2_clean["false_trigger"]
    assert trigger["samples"] == 2 == trigger["ratio"]["n"]  # one clean image, two noise draws
    assert trigger["rate"] == 0.0 and trigger["ratio"]["mean"] > 0.5  # eps-noise moves no clean latent to the target
    assert report["not_computed"] == NOT_COMPUTED
    # per model and edit, the first grid_images (4) images of the snapshot's two
    assert len(report["grids"]) == 2 * 2 * 2
    for grid in report["grids"]:
        for role in ("source", "immunized", "clean_edit", "immunized_edit"):
            assert (path.parent / grid[role]).is_file()
    assert (path.parent / "report.html").is_file()


def test_the_same_seed_gives_the_same_report(tiny_registry, tmp_path):
    first = json.loads(run_eval(request(tiny_registry, tmp_path / "a")).read_text())
    second = json.loads(run_eval(request(tiny_registry, tmp_path / "b")).read_text())
    for report in (first, second):
        del report["created_at"]
    assert first == second


def test_bad_inputs_are_refused(tiny_registry, tmp_path):
    base = request(tiny_registry, tmp_path / "x")
    with pytest.raises(ForwardguardError, match="holds no patterns"):
        run_eval(EvalRequest(**{**base.__dict__, "snapshots": ("empty",)}))
    with pytest.raises(ForwardguardError, match="--model broken=taesd:/no/such.pth"):
        run_eval(EvalRequest(**{**base.__dict__, "models": (ModelArg("broken", "taesd:/no/such.pth"),)}))
    with pytest.raises(ForwardguardError, match="NAME=SPEC"):
        ModelArg.parse("just-a-spec")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(ForwardguardError, match="not empty"):
        run_eval(request(tiny_registry, tmp_path / "full"))
