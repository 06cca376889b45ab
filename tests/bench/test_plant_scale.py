"""bench/plant_scale.py at its smallest: 3 patterns, 2 planting steps; every figure of the report is there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "registered",
    "unregistered",
    "unregistered_after_edit",
    "held_out_drift",
    "held_out_drift_by_kind",
    "large_held_out_drift_by_kind",
    "noise_ratio",
    "noise_ratio_by_kind",
    "noise_ratio_over_base",
}
KINDS = {"photo", "dark", "flat", "graphics", "gray"}


def test_smallest_run_reports_every_figure_with_throughput_and_memory(tmp_path, shared_dir):
    out = tmp_path / "scale.json"
    command = [
        sys.executable,
        str(REPO_ROOT / "bench" / "plant_scale.py"),
        *("--n", "3", "--size", "32", "--attack-steps", "2", "--max-steps", "2"),
        *("--unregistered", "2", "--held-out", "1", "--json", str(out)),
    ]
    env = {**os.environ, "FORWARDGUARD_SHARED": str(shared_dir)}
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, env=env)
    assert completed.returncode == 0, completed.stderr
    assert "N=3: 2 steps" in completed.stdout and "peak RSS" in completed.stdout and "planted min" in completed.stdout
    report = json.loads(out.read_text())
    assert set(report["base"]) == FIGURES
    (run,) = report["runs"]
    assert run["n"] == 3 and run["steps"] == 2 and run["measured_registered"] == 3
    assert run["peak_rss_mib"] > 100  # torch and a model at least
    assert set(run["planted"]) == FIGURES
    assert set(run["planted"]["held_out_drift_by_kind"]) == set(run["planted"]["large_held_out_drift_by_kind"]) == KINDS
    assert "drift at 4x the side: flat" in completed.stdout
    assert set(run["planted"]["noise_ratio_by_kind"]) == KINDS - {"gray"}  # gray is the target
    assert set(run["planted"]["unregistered_after_edit"]) == {"shift_1", "hflip"}
    base = report["base"]
    assert base["unregistered_after_edit"]["shift_1"] != base["unregistered"] != base["unregistered_after_edit"]["hflip"]
    for summary in (run["planted"]["registered"], run["base_registered"], run["planted"]["noise_ratio"]):
        assert set(summary) == {"min", "median", "p90", "max"}
        assert summary["min"] <= summary["median"] <= summary["p90"] <= summary["max"]
    assert run["planted"]["held_out_drift"]["max"] > 0 == report["base"]["held_out_drift"]["max"]
    assert set(base["noise_ratio_over_base"].values()) == {1.0}  # the base over itself, image by image
