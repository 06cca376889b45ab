"""The README's demo: the whole flow offline on the bundled photos (shortened)."""

from __future__ import annotations

import json
from pathlib import Path

from forwardguard.demo import DemoSettings, demo_photos, run_demo
from forwardguard.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_flow(tmp_path):
    said: list[str] = []
    settings = DemoSettings(out=tmp_path / "demo", policy=REPO / "configs" / "gate.yaml", attack_steps=3, plant_steps=3,
                            edit_steps=2, transforms=("jpeg_q95",), device="cpu")
    result = run_demo(settings, say=said.append)
    assert [line[:3] for line in said if line[1] == "/"] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert sorted(path.name for path in result.immunized) == sorted(path.name for path in demo_photos())
    with Registry.open(result.registry) as registry:
        assert len(registry.snapshot_patterns("demo-v1")) == len(demo_photos())
        assert any(model.planted_snapshot == "demo-v1" for model in registry.list_models())
    report = json.loads(result.report.read_text())
    assert [m["name"] for m in report["models"]] == ["planted-v2", "v2", "v1"]
    assert result.report.with_name("report.html").is_file()
    assert set(result.verdicts) == {"v2", "planted-v2"}
    assert result.verdicts["v2"] is False  # tiny:1 was never planted: held
