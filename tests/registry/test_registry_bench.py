"""bench/registry_bench.py in its smallest mode: it runs and reports every measure."""

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
        "--records", "12", "--writers", "2", "--lookups", "3", "--workdir", str(tmp_path),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr
    [line] = completed.stdout.strip().splitlines()
    result = json.loads(line)
    assert (result["backend"], result["records"], result["writers"]) == ("sqlite", 12, 2)
    assert result["insert_per_s"] > 0 and result["export_rows_per_s"] > 0
    for measure in ("insert_latency", "lookup_exact", "lookup_perceptual_jpeg75"):
        assert 0 < result[measure]["p50_ms"] <= result[measure]["p99_ms"]
    assert list(tmp_path.iterdir()) == []  # its scratch folder is removed
