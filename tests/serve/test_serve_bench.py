"""bench/serve_load.py, small: a load run whose records all match, a run with the server SIGKILLed
midway and restarted (the fault test), and its checker catching a mismatch."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

from serve_support import REPO_ROOT

BENCH = REPO_ROOT / "bench" / "serve_load.py"


def _run(tmp_path: Path, model: str, *options: str) -> dict:
    out = tmp_path / "load.json"
    command = [
        sys.executable,
        str(BENCH),
        "--model",
        model,
        "--clients",
        "4",
        "--size",
        "32",
        "--steps",
        "1",
        "--torch-threads",
        "1",
        "--work-dir",
        str(tmp_path),
        "--json",
        str(out),
        *options,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "checks: every record matches its request" in completed.stdout
    return json.loads(out.read_text())


def test_load_run_records_exactly_the_accepted_requests(tmp_path: Path, taef2_spec: str) -> None:
    result = _run(tmp_path, taef2_spec, "--requests", "24", "--queue-size", "2")
    assert result["ok"] and result["requests"] == 24 and result["restarts"] == 0 and result["torch_threads"] == 1
    assert sum(result["statuses"].values()) == 24 and "no answer" not in result["statuses"]
    assert result["recorded"] == result["accepted"] == result["statuses"]["200"] > 0
    assert 0 < result["p50_s"] <= result["p99_s"] and result["throughput_per_s"] > 0
    assert {o["method"] for o in result["outcomes"]} == {"noise", "encoder"}

    # The checker is real: a rejected request with a record, or a record that is not what the
    # client got back, is reported.
    bench = runpy.run_path(str(BENCH))
    plan = [(o["index"], o["method"]) for o in result["outcomes"]]
    outcomes = [bench["Outcome"](**o) for o in result["outcomes"]]
    accepted = [o for o in outcomes if o.status == 200]
    accepted[0].status = 503
    accepted[1].pattern_id = "0" * 64
    problems = bench["check"](tmp_path / "reg.db", plan, outcomes, 32)
    assert problems == [
        f"rejected request {accepted[0].index} (503) has 1 records",
        f"accepted request {accepted[1].index}: its record is not the image it got back",
    ]


def test_server_killed_midway_loses_no_record_of_an_answered_request(tmp_path: Path, taef2_spec: str) -> None:
    result = _run(tmp_path, taef2_spec, "--requests", "40", "--queue-size", "4", "--kill-after", "8")
    assert result["ok"] and result["restarts"] == 1
    assert result["accepted"] >= 8 and sum(result["statuses"].values()) == 40
    assert result["recorded"] == result["accepted"] + result["lost_but_recorded"]
    assert (tmp_path / "serve-1.log").is_file()  # the restarted server
