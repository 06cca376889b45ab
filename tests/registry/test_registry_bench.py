"""bench/registry_bench.py in its smallest mode: it runs, its perceptual answers equal a full scan's (or it
fails), and it reports every measure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_smallest_run_reports_every_measure(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(REPO_ROOT / "bench" / "registry_bench.py"),
        "--records", "30", "--sample", "6", "--writers", "2", "--lookups", "3", "--size", "32", "--workdir", str(tmp_path),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr
    [line] = completed.stdout.strip().splitlines()
    result = json.loads(line)
    assert (result["backend"], result["records"], result["sampled"], result["writers"]) == ("sqlite", 30, 6, 2)
    assert result["insert_per_s"] > 0 and result["export_rows_per_s"] > 0 and result["while_writing"]["insert_per_s"] > 0
    for measures in (result, result["while_writing"]):
        for measure in ("lookup_exact", "lookup_perceptual"):
            assert 0 < measures[measure]["p50_ms"] <= measures[measure]["p99_ms"]
    assert set(result["found_own_pattern"]) == {"jpeg75", "resize0.5", "shift1"}
    assert list(tmp_path.iterdir()) == []  # its scratch folder is removed
