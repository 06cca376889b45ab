"""bench/robust_bench.py in its smallest mode (v1 only): every transform's plain and robust figures, the checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from forwardguard.transforms import GAUNTLET

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_smallest_run_reports_plain_beside_robust_for_every_transform(tmp_path, shared_dir):
    out = tmp_path / "bench"
    command = [
        sys.executable,
        str(REPO_ROOT / "bench" / "robust_bench.py"),
        "--out",
        str(out),
        "--shared",
        str(shared_dir),
        "--no-v2",
        "--photos",
        "astronaut,coffee",
        "--size",
        "32",
        "--steps",
        "3",
        "--no-fail",  # 3 steps miss the targets
    ]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr
    summary = json.loads((out / "robust_bench.json").read_text())
    shifts = [f"shift_{k}" for k in range(1, 8)]  # every phase of the 8-pixel grid, added to the gauntlet
    transforms = {"none", *(transform.name for transform in GAUNTLET), *shifts}
    assert sorted(summary["ratios"]) == sorted(f"v1/{name}" for name in transforms)
    for figures in summary["ratios"].values():
        assert 0 < figures["plain"] < 2 and 0 < figures["robust"] < 2 and figures["robust"] <= figures["robust_max"]
    # issue 8's JPEG q75 and q50, issue 13's shifts, every crop phase and mirror, and the untransformed cost
    assert len(summary["checks"]) == 2 + len(shifts) + 1 + 1 + 1
    for snapshot in ("plain", "robust"):  # every (top, left) crop; its diagonal is the eval's shift_1..7
        grid = summary["crop_phases"][snapshot]
        assert len(grid) == 8 and all(len(row) == 8 for row in grid)
        assert grid[0][0] == pytest.approx(summary["ratios"]["v1/none"][snapshot], abs=1e-4)
        for k in range(1, 8):
            assert grid[k][k] == pytest.approx(summary["ratios"][f"v1/shift_{k}"][snapshot], abs=1e-4)
        # off the diagonal: other crops, the same as the eval's crops of rows only and of columns only
        assert grid[4][0] == pytest.approx(summary["ratios"]["v1/vshift_4"][snapshot], abs=1e-4)
        assert grid[0][4] == pytest.approx(summary["ratios"]["v1/hshift_4"][snapshot], abs=1e-4)
        assert len({round(value, 6) for row in grid for value in row}) > 8
        assert (
            f"v1, {snapshot}: mean ratio after every crop of 0-7 rows off the top and 0-7 columns off the left: at most"
            in completed.stdout
        )
    for check, passed in summary["checks"].items():
        assert f"{'PASS' if passed else 'FAIL'}  {check}" in completed.stdout
    report = json.loads((out / "report" / "report.json").read_text())
    assert [snapshot["attacks"][0]["robust"] is not None for snapshot in report["snapshots"]] == [False, True]
    assert "jpeg_q50" in completed.stdout and "robust - plain" in completed.stdout
