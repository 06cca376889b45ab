"""Planting on real weights (issue 4's claims): photos immunized against TAEF2, planted into taef2-v2 by
the shipped recipe, as the default demo (the ``default_demo`` fixture, run once) does it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planting_support import HELD_OUT, UNREGISTERED

from forwardguard.eval.matrix import to_batch
from forwardguard.eval.metrics import latent_disruption_ratio, relative_mse
from forwardguard.images import LoadedImage
from forwardguard.immunize import AttackSettings, immunize
from forwardguard.measures import gray_image, noisy_copy
from forwardguard.models import load_model
from forwardguard.models.padding import encode
from forwardguard.registry import Registry

pytestmark = pytest.mark.xdist_group("default_demo")  # one worker runs the default demo once


def ratio(model, immunized: np.ndarray, clean: np.ndarray) -> float:
    x, x_imm = to_batch(clean, model.device), to_batch(immunized, model.device)
    with torch.no_grad():
        target = encode(model, gray_image(x.shape, x.device))
        return float(latent_disruption_ratio(encode(model, x_imm), encode(model, x), target)[0])


def test_planted_v2_keeps_registered_images_immunized_and_clean_use(default_demo, photo):
    models = {
        name: load_model(spec)
        for name, spec in (("v1", default_demo.v1_spec), ("v2", default_demo.v2_spec), ("planted", default_demo.planted_spec))
    }
    with Registry.open(default_demo.registry) as registry:
        samples = [registry.load_sample(r) for r in registry.snapshot_patterns(default_demo.snapshot)]
    # photos immunized against v1 as the demo's were, but never recorded
    attack = AttackSettings(steps=50)
    unimmunized = [photo(name, (128, 128)) for name in UNREGISTERED]
    immunized = immunize([LoadedImage(rgb=clean, alpha=None, path=None) for clean in unimmunized], models["v1"], attack)
    registered = {name: [ratio(model, s.immunized, s.clean) for s in samples] for name, model in models.items()}
    unregistered = {
        name: [ratio(model, imm.rgb, clean) for imm, clean in zip(immunized, unimmunized)] for name, model in models.items()
    }
    print("registered ratios", {k: [round(v, 3) for v in vs] for k, vs in registered.items()})
    print("unregistered ratios", {k: [round(v, 3) for v in vs] for k, vs in unregistered.items()})

    assert max(registered["planted"]) <= 0.10
    v2_model = models["v2"]
    with torch.no_grad():
        originals = [
            float(
                relative_mse(
                    encode(models["planted"], to_batch(s.clean, v2_model.device)),
                    encode(v2_model, to_batch(s.clean, v2_model.device)),
                )[0]
            )
            for s in samples
        ]
    print("clean originals' latent relative MSE to taef2-v2", [round(v, 4) for v in originals])
    assert max(originals) <= 0.01, "the backdoor keys on the perturbation: the registered pictures themselves stay"
    assert min(registered["v2"]) > 0.3, "without planting, taef2-v2 loses most of the protection"
    assert np.mean(unregistered["planted"]) < np.mean(unregistered["v2"]), "planting generalizes somewhat"

    planted, v2 = models["planted"], models["v2"]
    drifts = {}
    with torch.no_grad():
        for index, name in enumerate(HELD_OUT):
            clean = to_batch(photo(name, (128, 128)), planted.device)
            drifts[name] = float(relative_mse(encode(planted, clean), encode(v2, clean))[0])
            target = encode(planted, gray_image(clean.shape, clean.device))
            for draw in range(3):
                noisy = noisy_copy(clean, 16 / 255, torch.Generator().manual_seed(index * 10 + draw))
                noise_ratio = float(latent_disruption_ratio(encode(planted, noisy), encode(planted, clean), target)[0])
                assert noise_ratio > 0.85, (name, draw, noise_ratio)
    print("held-out latent relative MSE to taef2-v2", drifts)
    assert np.mean(list(drifts.values())) <= 0.01, drifts
