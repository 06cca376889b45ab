"""Shared fixtures: the real weights in ../shared, and small real photographs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (and per process a test starts): two workers share the two cores without
    # oversubscribing them. Set before anything imports torch.
    os.environ["OMP_NUM_THREADS"] = "1"

if TYPE_CHECKING:
    from planting_support import DefaultDemo

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The grouped tests first: the default demo's group is the longest unit of work (minutes), so it
    starts at once on one worker while the other takes the rest, instead of both waiting for it at the end."""
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


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
def taesana_spec(shared_dir: Path) -> str:
    """The real TAESANA encoder (32x, no decoder): an encoder-only model of another family."""
    return f"taesd:{shared_dir / 'models' / 'taesana' / 'taesana_encoder.pth'}"


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
def default_demo(tmp_path_factory) -> DefaultDemo:
    """``forwardguard demo`` with no options, as a newcomer runs it from a folder that is not the checkout:
    TAEF2 (v1) immunizes the bundled photos, the shipped recipe plants them into taef2-v2, the eval and
    gate compare v1, v2 and the planted v2. Run once per session; the tests of the real flow (planting,
    eval, gate, the demo's output) read what it made. Its tests share the xdist group ``default_demo``
    so that one worker runs it."""
    from planting_support import DefaultDemo
    from typer.testing import CliRunner

    from forwardguard.cli import app
    from forwardguard.demo import SNAPSHOT
    from forwardguard.eval.schema import load_report

    folder = tmp_path_factory.mktemp("newcomer")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    out = folder / "forwardguard-demo"
    report = load_report(out / "eval" / "report.json")
    specs = {model.name: model.spec for model in report.models}
    assert specs["planted-v2"] == "taesd:forwardguard-demo/planted-v2"  # as the demo names it: relative to where it ran
    return DefaultDemo(
        folder=folder,
        stdout=result.stdout,
        registry=out / "registry.db",
        snapshot=SNAPSHOT,
        report=report,
        v1_spec=specs["v1"],
        v2_spec=specs["v2"],
        planted_spec=f"taesd:{out / 'planted-v2'}",
    )
