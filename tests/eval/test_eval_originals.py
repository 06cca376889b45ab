"""The clean originals of registered images in eval and gate (issue 12): a model that erases the registered
pictures themselves reads as "immunized" by the ratio alone; their drift and false triggers show it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from forwardguard.eval.matrix import EvalImage, EvalModel, evaluate_cell
from forwardguard.eval.settings import EvalSettings
from forwardguard.models.autoencoder import AutoencoderModel


class TowardsGray(nn.Module):
    """Shrinks every picture towards mid-gray before the encoder sees it: an encoder that erases pictures."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 0.5 + 0.02 * (images - 0.5)


@pytest.fixture(scope="module")
def models(taef2) -> tuple[EvalModel, EvalModel]:
    """The real TAEF2 encoder, and the same encoder behind a shrink towards gray."""
    encoder = taef2.encoder
    base = AutoencoderModel("base", encoder, None)
    erasing = nn.Sequential(TowardsGray(), encoder)
    erasing.downsampling = encoder.downsampling  # what AutoencoderModel reads its encoder's multiple from
    eraser = AutoencoderModel("eraser", erasing, None)
    return EvalModel("base", "base", base), EvalModel("eraser", "eraser", eraser)


def images(photo) -> list[EvalImage]:
    rng = np.random.default_rng(0)
    result = []
    for name in ("astronaut", "coffee", "chelsea"):
        clean = photo(name, (48, 40))
        delta = rng.integers(-16, 17, clean.shape)
        immunized = np.clip(clean.astype(np.int16) + delta, 0, 255).astype(np.uint8)
        result.append(EvalImage(name, immunized, clean, 16 / 255))
    return result


def test_clean_originals_need_a_reference(models, photo):
    base, _ = models
    cells = evaluate_cell(base, images(photo), EvalSettings(transforms=("hflip",)))
    assert set(cells) == {"none", "hflip"}
    assert all(cell["clean_originals"] is None for cell in cells.values())


def test_a_model_compared_with_itself_keeps_its_originals(models, photo):
    base, _ = models
    cells = evaluate_cell(base, images(photo), EvalSettings(transforms=("hflip",)), reference=base)
    for cell in cells.values():
        originals = cell["clean_originals"]
        assert originals["reference"] == "base"
        assert originals["latent_relative_mse"]["max"] == 0.0 and originals["latent_relative_mse"]["n"] == 3
        assert abs(originals["ratio"]["mean"] - 1.0) < 1e-6
        assert originals["false_trigger"] == {"rate": 0.0, "threshold": 0.5}


def test_a_model_that_erases_the_pictures_shows_drift_and_false_triggers(models, photo):
    base, eraser = models
    cells = evaluate_cell(eraser, images(photo), EvalSettings(transforms=("jpeg_q75",)), reference=base)
    for cell in cells.values():
        originals = cell["clean_originals"]
        assert originals["latent_relative_mse"]["mean"] > 0.1
        assert originals["ratio"]["max"] < 0.5
        assert originals["false_trigger"]["rate"] == 1.0
