"""The eval and gate on real weights: TAEF2 (v1), taef2-v2 and the planted taef2-v2, under the shipped policy.

The report is the default demo's (the ``default_demo`` fixture): the README's first command, run once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forwardguard.eval.gate import gate, load_policy
from forwardguard.eval.schema import Cell, Report

pytestmark = pytest.mark.xdist_group("default_demo")  # one worker runs the default demo once

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def real_report(default_demo) -> Report:
    return default_demo.report


def cell(report: Report, model: str, transform: str = "none") -> Cell:
    [found] = [c for c in report.cells if c.model == model and c.transform == transform]
    return found


def test_report_shows_backward_and_forward_immunity_side_by_side(real_report):
    assert [m.name for m in real_report.models] == ["planted-v2", "v2", "v1"]  # newest first
    v1, v2, planted = (cell(real_report, name) for name in ("v1", "v2", "planted-v2"))
    assert v1.relation == "backward" and v2.relation == planted.relation == "forward"
    print(json.dumps({name: cell(real_report, name).ratio.model_dump() for name in ("v1", "v2", "planted-v2")}, indent=1))
    assert planted.ratio.immunized.mean <= 0.10 < v1.ratio.immunized.mean < v2.ratio.immunized.mean
    for c in (v1, v2, planted):
        assert c.ratio.noise.mean > 0.85  # the noise baseline does nothing
    ssim = {name: cell(real_report, name).edits["reconstruction"].immunized["ssim"].mean for name in ("v2", "planted-v2")}
    assert ssim["planted-v2"] < ssim["v2"]
    [planted_clean] = [c for c in real_report.clean if c.model == "planted-v2"]
    assert planted_clean.reference == "v2"
    assert planted_clean.latent_relative_mse.mean <= 0.01
    assert planted_clean.false_trigger.rate == 0


def test_shipped_policy_holds_v2_and_releases_the_planted_v2(real_report):
    policy = load_policy(REPO / "configs" / "gate.yaml")
    held = gate(real_report, policy, "v2")
    released = gate(real_report, policy, "planted-v2")
    print([(r.rule, r.transform, r.value, r.passed) for r in released.rules])
    assert not held.released
    assert released.released, [r for r in released.rules if not r.passed]
