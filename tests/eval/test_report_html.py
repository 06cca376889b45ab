"""``report.html``: escaped and offline as a page, and rendered by headless Chromium with its images loaded."""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forwardguard.eval import html
from forwardguard.eval.metric_names import METRICS
from forwardguard.eval.report import HTML_FILE, save_grid_image
from forwardguard.eval.schema import SCHEMA, SCHEMA_VERSION, GridRow, Report

CHROMIUM = Path("/usr/bin/chromium")
TRANSFORMS = ("none", "jpeg_q75")
EDIT = "reconstruction"


def summary(mean: float | None, std: float = 0.02) -> dict:
    return {"mean": mean, "std": std, "n": 4}


def make_report(models: tuple[str, str] = ("v2-planté", "v1"), snapshot: str = "s1", grids: list[GridRow] | None = None) -> dict:
    """A schema-complete report: two models (newest first), one snapshot made against the second, two transforms."""
    candidate, base = models
    cells = []
    for model, ratio in ((candidate, 0.12), (base, 0.95)):
        for transform in TRANSFORMS:
            cells.append({
                "snapshot": snapshot, "model": model, "transform": transform,
                "relation": "backward" if model == base else "forward",
                "ratio": {"immunized": summary(ratio + (0.05 if transform != "none" else 0)), "noise": summary(0.99)},
                "edits": {EDIT: {
                    "immunized": {metric: summary(0.4 if model == candidate else 0.97) for metric in METRICS},
                    "noise": {metric: summary(0.98) for metric in METRICS},
                }},
            })  # fmt: skip
    cells[1]["ratio"]["noise"] = summary(None)  # a non-finite number, written as null
    cells[1]["edits"][EDIT]["noise"]["ssim"] = summary(math.nan)  # render_html also sees the report before JSON
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created_at": "2025-06-01T12:00:00Z",
        "forwardguard_version": "0.1.0", "registry": "sqlite:///tmp/registry.db",
        "settings": {"seed": 0, "transforms": list(TRANSFORMS[1:]), "edit_steps": 25, "strength": 0.7, "guidance_scale": 7.5,
                     "prompts": ["a photo taken on the beach"], "trigger_threshold": 0.5, "noise_draws": 2, "grid_images": 4,
                     "max_images": None},
        "models": [
            {"name": candidate, "spec": "taesd:/models/v2-planted", "fingerprint": "b" * 64, "recorded": True,
             "parent_fingerprint": "a" * 64, "planted_snapshot": snapshot, "reference": base, "edits": [EDIT]},
            {"name": base, "spec": "taesd:/models/taef2", "fingerprint": "a" * 64, "recorded": True,
             "parent_fingerprint": None, "planted_snapshot": None, "reference": None, "edits": [EDIT]},
        ],
        "snapshots": [{"name": snapshot, "patterns": 4, "evaluated": 4, "made_against": ["a" * 64], "eps": 16 / 255,
                       "attacks": [{"method": "encoder", "step_rule": "momentum", "robust": None, "patterns": 4}]}],
        "cells": cells,
        "clean": [
            {"model": candidate, "reference": base, "images": 4, "latent_relative_mse": summary(0.0042, 0.001),
             "edits": {EDIT: {"psnr": summary(34.2, 1.1), "ssim": summary(0.96)}},
             "false_trigger": {"rate": 0.0, "threshold": 0.5, "eps": 16 / 255, "samples": 8, "ratio": summary(0.97)}},
            {"model": base, "reference": None, "images": 4, "latent_relative_mse": None, "edits": {},
             "false_trigger": {"rate": 0.0, "threshold": 0.5, "eps": 16 / 255, "samples": 8, "ratio": summary(0.99)}},
        ],
        "not_computed": {"fid": "not computed: needs an Inception weights file",
                         "clip_similarity": "not computed: needs a local CLIP model"},
        "grids": grids or [],
    }  # fmt: skip


def render_html(report: dict) -> str:
    """The page of a report given as the JSON's dict."""
    return html.render_html(Report.model_validate(report))


def write_grids(out: Path, snapshot: str, models: tuple[str, ...]) -> list[GridRow]:
    """Grid images written by the eval's own writer: a different coloured gradient per image."""
    ramp = torch.linspace(0, 1, 48)
    entries = []
    for m, model in enumerate(models):
        tensors = {}
        for r, role in enumerate(("source", "immunized", "clean_edit", "immunized_edit")):
            image = torch.stack(
                [ramp[None, :].expand(40, 48), ramp[:40, None].expand(40, 48), torch.full((40, 48), (m * 4 + r) / 8)]
            )
            tensors[role] = image[None]
        entries.append(save_grid_image(out, snapshot, model, 0, EDIT, tensors))
    return entries


def test_user_strings_are_escaped_and_missing_numbers_shown_as_na():
    evil = "<script>alert(1)</script>"
    report = make_report(models=(evil, 'v1 "quoted" & co'), snapshot="<b>snap</b>")
    report["grids"] = [{"snapshot": "<b>snap</b>", "model": evil, "index": 0, "edit": EDIT, "source": 'images/x"onerror="alert(1).png',
                        "immunized": None, "clean_edit": None, "immunized_edit": None}]  # fmt: skip
    page = render_html(report)
    assert evil not in page and "<b>snap</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;snap&lt;/b&gt;" in page
    assert "v1 &quot;quoted&quot; &amp; co" in page
    assert page.count("<script>") == 1  # the page's own
    assert 'onerror="' not in page and 'src="images/x%22onerror%3D%22alert%281%29.png"' in page
    assert "n/a" in page and not re.search(r">\s*nan\b", page)


def test_page_is_self_contained():
    page = render_html(make_report())
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page and "<link" not in page
    assert page.count('<svg class="chart"') == len(TRANSFORMS)


def test_robustness_table_of_one_snapshot_lists_the_transforms():
    page = render_html(make_report(snapshot="s1"))
    tables = re.findall(r'<table class="heat robustness">.*?</table>', page, re.S)
    assert len(tables) == 2  # one per model
    for table in tables:
        assert re.findall(r"<tr><th>([^<]*)</th>", table) == ["transform", *TRANSFORMS]
        assert "s1<br>" in table and ">plain<" in table and "Δ" not in table


def test_cells_show_the_ratio_distribution_and_the_protection_rate():
    """Issue 13: beside the mean, the heat map and the robustness tables show p90, max and the protection rate."""
    report = make_report()
    untransformed = report["cells"][0]
    untransformed["ratio"]["immunized"].update(median=0.1, p90=0.21, max=0.34)
    untransformed["protection"] = {"rate": 0.75, "threshold": 0.3}
    page = render_html(report)
    heat = re.search(r'<table class="heat">.*?</table>', page, re.S).group(0)
    robustness = re.search(r'<table class="heat robustness">.*?</table>', page, re.S).group(0)
    for table in (heat, robustness):
        assert "p90 0.210 · max 0.340 · 75% ≤ 0.3" in table
    assert "p90 n/a · max n/a" in page  # a cell without them (a report written before issue 13)
    assert "protection rate" in page


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: install Debian's chromium package (.ci/install-chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def run_chromium(chromium: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000", "--allow-file-access-from-files", *args,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_chromium_renders_the_report_and_loads_its_images(chromium, tmp_path):
    out = tmp_path / "report"
    models = ("v2-planté", "v1")
    grids = write_grids(out, "s1", models)
    report = make_report(models=models, grids=grids)
    page = out / HTML_FILE
    page.write_text(render_html(report))
    images = 4 * len(grids)
    assert len(list((out / "images").rglob("*.png"))) == images

    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert f'data-images-total="{images}"' in body, body
    assert f'data-images-loaded="{images}"' in body, body
    assert '<table class="heat">' in dom
    assert re.findall(r'<svg class="chart" data-transform="([^"]+)"', dom) == list(TRANSFORMS)
    assert "v2-planté" in dom and "0.120" in dom

    screenshot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1280,2400", page.as_uri())
    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    assert pixels.shape == (2400, 1280, 3)
    not_white = (pixels < 240).any(axis=2).mean()
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert not_white > 0.02 and colours > 50, (not_white, colours)


def test_item_11_models_whose_names_clean_alike_keep_their_own_grid_images(tmp_path):
    """issue 14 item 11: ``v2?`` and ``v2!`` both became folder ``v2_``: one model's edits showed under the other's name."""
    entries = {
        model: save_grid_image(tmp_path, "snap", model, 0, EDIT, {"source": torch.full((1, 3, 8, 8), shade)})
        for model, shade in (("v2?", 0.0), ("v2!", 1.0), ("v2_", 0.5))
    }
    paths = {model: tmp_path / entry.source for model, entry in entries.items()}
    assert len(set(paths.values())) == 3
    assert len({path.read_bytes() for path in paths.values()}) == 3
    assert paths["v2_"].parent.name == "v2_"  # a name that needs no cleaning keeps it as it is
