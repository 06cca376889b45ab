"""Issue 13 in the eval: crops measured at the size the model sees, and each cell's protection rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forwardguard.errors import ForwardguardError
from forwardguard.eval.matrix import EvalImage, EvalModel, evaluate_cell, to_batch
from forwardguard.eval.settings import EvalSettings
from forwardguard.models.padding import encode
from forwardguard.transforms import apply, parse_transform

TRANSFORMS = ("shift_3", "rcrop_0.8", "jpeg_q75+shift_3", "vshift_4")


@pytest.fixture(scope="module")
def images(photo) -> list[EvalImage]:
    """Two photos (44 x 36) beside a perturbed copy: the numbers are checked against a direct computation."""
    out = []
    for index, name in enumerate(("astronaut", "coffee")):
        clean = photo(name, (44, 36))
        noise = np.random.default_rng(index).integers(-16, 17, clean.shape)
        out.append(EvalImage(name, np.clip(clean + noise, 0, 255).astype(np.uint8), clean, 16 / 255))
    return out


def test_a_crop_is_measured_at_the_smaller_size_against_a_target_of_that_size(taef2, images):
    model = EvalModel("taef2", "taef2", taef2)
    settings = EvalSettings(transforms=TRANSFORMS, protection_threshold=0.9)
    edited_shapes: dict[str, set] = {name: set() for name in ("none", *TRANSFORMS)}
    cells = evaluate_cell(
        model, images, settings, on_edit=lambda t, kind, version, edited, _: edited_shapes[t].add(tuple(edited.shape))
    )
    assert edited_shapes["none"] == {(1, 3, 36, 44)}
    assert edited_shapes["shift_3"] == edited_shapes["jpeg_q75+shift_3"] == {(1, 3, 33, 41)}
    assert edited_shapes["vshift_4"] == {(1, 3, 32, 44)}  # rows only: the columns' grid stays
    assert edited_shapes["rcrop_0.8"] == {(1, 3, round(36 * 0.8**0.5), round(44 * 0.8**0.5))}
    ratios = []
    for image in images:
        x, c = (apply(parse_transform("shift_3"), to_batch(rgb, taef2.device)) for rgb in (image.immunized, image.clean))
        with torch.no_grad():
            target = encode(taef2, torch.full_like(c, 0.5))
            ratios.append(float((encode(taef2, x) - target).pow(2).sum() / (encode(taef2, c) - target).pow(2).sum()))
    cell = cells["shift_3"]
    assert cell["ratio"]["immunized"]["mean"] == pytest.approx(np.mean(ratios), rel=1e-4)
    assert cell["ratio"]["immunized"]["max"] == pytest.approx(max(ratios), rel=1e-4)
    assert cell["protection"] == {"rate": np.mean([r <= 0.9 for r in ratios]), "threshold": 0.9}
    for values in cells.values():
        assert 0 <= values["protection"]["rate"] <= 1 and set(values["ratio"]["immunized"]) >= {"median", "p90", "max"}


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_the_protection_threshold_is_in_0_1(threshold):
    with pytest.raises(ForwardguardError, match="protection threshold"):
        EvalSettings(protection_threshold=threshold)
