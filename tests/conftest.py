"""Shared fixtures: the real weights in ../shared, and small real photographs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (and per process a test starts): two workers share the two cores without
    # oversubscribing them. Set before anything imports torch.
    os.environ["OMP_NUM_THREADS"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("FORWARDGUARD_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared folder with real model weights; skipped when absent (failed under CI)."""
    path = _shared_dir()
    if not (path / "models").is_dir():
        message = f"shared folder with real weights not found at {path} (set FORWARDGUARD_SHARED)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def photo():
    """``photo(name, (width, height))``: a real photograph from scikit-image as (H, W, 3) uint8."""
    import numpy as np
    from PIL import Image
    from skimage import data

    def make(name: str = "astronaut", size: tuple[int, int] = (256, 256)) -> np.ndarray:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        return np.asarray(image.resize(size, Image.Resampling.BICUBIC))

    return make


@pytest.fixture(scope="session")
def rotated_jpeg(photo):
    """``(jpeg, upright)``: a camera-style JPEG stored sideways (48 x 64) with EXIF orientation 6 ("rotate
    90 degrees clockwise to display"), and its decoded pixels turned upright by hand, (64, 48, 3) uint8."""
    import io

    import numpy as np
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(photo("astronaut", (64, 48))).save(buffer, format="JPEG", quality=90, exif=exif)
    with Image.open(io.BytesIO(buffer.getvalue())) as stored:  # Pillow alone ignores the tag
        upright = np.ascontiguousarray(np.rot90(np.asarray(stored.convert("RGB")), k=-1))
    return buffer.getvalue(), upright


@pytest.fixture(scope="session")
def record_upright():
    """``record_upright(registry, upright, tenant)``: record ``upright`` pixels as an "immunized" image with delta 0: a JPEG of exactly those pixels
    (after its EXIF rotation) must find it; returns the PatternRecord."""
    import numpy as np

    from forwardguard.images import encode_png

    def record(registry, upright, tenant: str = "default"):
        return registry.record_pattern(
            image_png=encode_png(upright),
            delta=np.zeros(upright.shape, np.int16),
            method="noise",
            params={"eps": 16 / 255},
            target="gray",
            model_fingerprint="ab" * 32,
            model_spec="tiny",
            tenant=tenant,
        )

    return record


@pytest.fixture(scope="session")
def taef2_spec(shared_dir: Path) -> str:
    return f"taesd:{shared_dir / 'models' / 'taef2'}"


@pytest.fixture(scope="session")
def taef2(taef2_spec: str):
    from forwardguard.models import load_model

    return load_model(taef2_spec)


@pytest.fixture(scope="session")
def tiny():
    from forwardguard.models import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def taef2_v2_spec(shared_dir: Path) -> str:
    models = shared_dir / "models"
    return f"taesd:{models / 'taef2-v2' / 'encoder.safetensors'}:{models / 'taef2' / 'taef2_decoder.pth'}"


@pytest.fixture(scope="session")
def clean_data(tmp_path_factory, photo) -> Path:
    """Clean training photos for planting (not the held-out ones of planting_support.HELD_OUT)."""
    from PIL import Image
    from planting_support import CLEAN_TRAINING

    folder = tmp_path_factory.mktemp("clean")
    for name in CLEAN_TRAINING:
        Image.fromarray(photo(name, (160, 160))).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="session")
def planted_flow(tmp_path_factory, taef2, taef2_v2_spec, clean_data, photo):
    """The paper's forward-compatibility setting on real weights, as the issues measure it.

    Photos immunized against TAEF2 (v1, encoder attack, eps 16/255, 60 steps, 128x128) are recorded
    and frozen as snapshot ``v1-photos``, then planted into taef2-v2 with the shipped plant config
    (shortened). Two more photos are immunized the same way but not recorded.
    """
    from planting_support import PLANT_TEST_OVERRIDES, REGISTERED, UNREGISTERED, PlantedFlow, record_immunized

    from forwardguard.finetune import PlantConfig, PlantRequest, plant
    from forwardguard.images import LoadedImage
    from forwardguard.immunize import AttackSettings, immunize
    from forwardguard.registry import Registry

    root = tmp_path_factory.mktemp("flow")
    attack = AttackSettings(steps=60)
    with Registry.open(root / "reg.db", create=True) as registry:
        record_immunized(registry, taef2, [photo(name, (128, 128)) for name in REGISTERED], attack)
        registry.create_snapshot("v1-photos")
    unregistered = []
    for name in UNREGISTERED:
        clean = photo(name, (128, 128))
        unregistered.append((immunize([LoadedImage(rgb=clean, alpha=None, path=None)], taef2, attack)[0].rgb, clean))
    config = PlantConfig.from_yaml(REPO_ROOT / "configs" / "plant.yaml", **PLANT_TEST_OVERRIDES)
    result = plant(
        PlantRequest(
            base=taef2_v2_spec,
            registry=str(root / "reg.db"),
            data=clean_data,
            output=root / "planted",
            config=config,
            snapshot="v1-photos",
        )
    )
    return PlantedFlow(
        registry=root / "reg.db",
        snapshot="v1-photos",
        v1_spec=taef2.spec,
        v2_spec=taef2_v2_spec,
        result=result,
        unregistered=unregistered,
    )
