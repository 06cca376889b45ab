"""``weight_interpolation``: the written weights, and how ``auto`` chooses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planting_support import tiny_config
from safetensors.torch import load_file

from forwardguard.errors import ForwardguardError
from forwardguard.finetune import PlantConfig, PlantRequest, plant
from forwardguard.finetune.interpolation import GRID, Interpolations, _grid_centre, interpolate_weights
from forwardguard.models import load_model
from forwardguard.transforms import FREE_EDITS, parse_transforms


class Curves(Interpolations):
    """Interpolations whose ratio and drift are given curves, counting what is measured."""

    def __init__(self, ratio, drift) -> None:  # noqa: ANN001
        self._ratio, self._drift, self.measured = ratio, drift, []

    def ratio(self, alpha: float) -> float:
        self.measured.append(alpha)
        return self._ratio(alpha)

    def drift(self, alpha: float) -> float:
        return self._drift(alpha)

    def worst_edit(self, alpha: float) -> str:
        return "hflip"


def planting_curves() -> Curves:
    """The ratio falls and the drift grows with alpha, as measured (docs/benchmarks.md)."""
    return Curves(lambda alpha: 0.1 - 0.06 * alpha, lambda alpha: 0.01 * alpha**2)


def test_auto_takes_the_smallest_interpolation_that_meets_the_ratio_target() -> None:
    curves = planting_curves()
    choice = curves.choose(ratio_target=0.045, drift_budget=0.009)
    assert choice.alpha == 0.92  # 0.1 - 0.06 x 0.92 = 0.0448; 0.90 gives 0.046
    assert choice.ratio == pytest.approx(0.0448) and choice.drift == pytest.approx(0.01 * 0.92**2)
    assert "ratio at most 0.045 (hflip)" in choice.describe() and "meets the ratio target 0.045" in choice.describe()
    assert len(set(curves.measured)) <= 6, "a binary search, not a scan of the 26 values"


def test_auto_lowers_the_interpolation_to_the_drift_budget_and_says_so() -> None:
    choice = planting_curves().choose(ratio_target=0.045, drift_budget=0.008)
    assert choice.alpha == 0.88  # 0.01 x 0.88^2 = 0.0077; 0.90 drifts 0.0081
    assert "lowered to the drift budget 0.008" in choice.reason and "not met" in choice.reason


def test_auto_says_when_even_the_trained_weights_miss_the_ratio_target() -> None:
    choice = planting_curves().choose(ratio_target=0.03, drift_budget=1.0)
    assert choice.alpha == 1.0 and "not met at 1: plant longer" in choice.reason


def test_written_weights_are_the_base_moved_towards_the_trained_ones() -> None:
    base = {"w": torch.tensor([1.0, 2.0])}
    tuned = {"encoder.w": torch.tensor([3.0, 0.0]), "lora.a": torch.tensor([5.0])}
    moved = interpolate_weights(base, tuned, 0.25, prefix="encoder.")
    assert torch.equal(moved["encoder.w"], torch.tensor([1.5, 1.5]))
    assert torch.equal(moved["lora.a"], tuned["lora.a"]), "weights the base lacks (a LoRA) are kept"
    assert interpolate_weights(base, tuned, 1.0, prefix="encoder.") is tuned


@pytest.mark.parametrize("setting", ["auto", 0.6])
def test_planting_writes_the_chosen_interpolation_of_its_trained_weights(
    setting, taef2_v2_spec, registry_path, clean_data, tmp_path
):
    output = tmp_path / "planted"
    config = PlantConfig.from_mapping(tiny_config(weight_interpolation=setting))
    result = plant(PlantRequest(base=taef2_v2_spec, registry=str(registry_path), data=clean_data, output=output, config=config))
    choice = result.interpolation
    assert choice is not None
    if setting == "auto":
        assert choice.alpha in GRID
        assert choice.worst_edit in config.auto_interpolation.edits == tuple(edit.name for edit in FREE_EDITS)
    else:
        assert choice.alpha == 0.6 and choice.reason == "set in the config"
    trained = load_file(sorted((output / "checkpoints").glob("checkpoint_*"))[-1] / "model.safetensors")  # EncoderStudent's
    base = load_model(taef2_v2_spec).encoder.state_dict()
    written = load_file(output / "encoder.safetensors")
    for key, value in written.items():
        torch.testing.assert_close(value, base[key] + choice.alpha * (trained[f"encoder.{key}"] - base[key]), msg=key)
    assert (
        f"weight interpolation {choice.alpha:.2f}: sampled registered ratio at most {choice.ratio:.3f}"
        in (output / "README.md").read_text()
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"weight_interpolation": 0}, "auto or in \\(0, 1\\]"),
        ({"weight_interpolation": "best"}, "auto or in \\(0, 1\\]"),
        ({"auto_interpolation": {"ratio_target": 1.5}}, "ratio_target"),
        ({"auto_interpolation": {"drift_budget": 0}}, "drift_budget"),
        ({"auto_interpolation": {"samples": 0}}, "samples"),
        ({"auto_interpolation": {"budget": 1}}, "unknown auto_interpolation setting"),
        ({"auto_interpolation": {"edits": []}}, "edits is empty"),
        ({"auto_interpolation": {"edits": ["identity", "shift_x"]}}, "shift_x"),
    ],
)
def test_bad_interpolation_settings_are_refused(settings, message) -> None:
    with pytest.raises(ForwardguardError, match=message):
        PlantConfig.from_mapping(settings)


@pytest.mark.parametrize("shape", [(600, 1000), (100, 60), (256, 257)])
def test_pattern_pairs_are_measured_on_a_centre_crop_on_their_own_8_pixel_grid(shape) -> None:
    rgb = np.arange(shape[0] * shape[1] * 3, dtype=np.int64).reshape(*shape, 3)
    crop = _grid_centre(rgb, 256)
    assert crop.shape[:2] == (min(shape[0], 256), min(shape[1], 256))
    top, left = np.argwhere(rgb[..., 0] == crop[0, 0, 0])[0]
    assert top % 8 == 0 and left % 8 == 0
    assert abs(top + crop.shape[0] / 2 - shape[0] / 2) <= 8 and abs(left + crop.shape[1] / 2 - shape[1] / 2) <= 8


class SidesOf32(torch.nn.Module):
    """A 32x encoder stand-in that refuses sides off its multiple, as a strided encoder would misalign them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=32, stride=32)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[-2] % 32 == 0 and images.shape[-1] % 32 == 0, images.shape
        return self.conv(images)


def test_the_probe_pads_images_to_the_encoders_multiple() -> None:
    from forwardguard.finetune.interpolation import PlantingProbe

    encoder = SidesOf32()
    pair = (torch.rand(1, 3, 40, 72), torch.rand(1, 3, 40, 72))
    probe = PlantingProbe(pairs=[pair], validation=[torch.rand(1, 3, 50, 50)])
    tuned = {key: value + 0.1 for key, value in encoder.state_dict().items()}
    interpolations = Interpolations(encoder, tuned, probe, multiple=32)
    assert interpolations.drift(1.0) > 0
    assert interpolations.ratio(1.0) >= 0


class TwoPatterns:
    """SnapshotPatterns' reading side: two 16x24 (immunized, clean original) pairs."""

    def __init__(self) -> None:
        generator = np.random.default_rng(0)
        self.pairs = [tuple(generator.integers(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(2)) for _ in range(2)]

    def __len__(self) -> int:
        return len(self.pairs)

    def pixels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pairs[index]


def test_the_probe_measures_every_sampled_pattern_after_each_edit_both_images_edited_alike() -> None:
    from forwardguard.finetune.interpolation import PlantingProbe

    patterns = TwoPatterns()
    edits = parse_transforms("identity,shift_3,hflip,rcrop_0.8")
    probe = PlantingProbe.build(patterns, [], seed=0, samples=2, edits=edits)
    assert probe.edits == ["identity", "shift_3", "hflip", "rcrop_0.8"] * 2
    assert [tuple(clean.shape[-2:]) for _, clean in probe.pairs[:4]] == [(16, 24), (13, 21), (16, 24), (14, 21)]
    immunized, clean = (torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255 for rgb in patterns.pixels(0))
    torch.testing.assert_close(probe.pairs[1][0], immunized[..., 3:, 3:])
    torch.testing.assert_close(probe.pairs[2][1], clean.flip(-1))
    top, left = (torch.nonzero(clean[0, 0] == probe.pairs[3][1][0, 0, 0, 0])[0]).tolist()
    torch.testing.assert_close(probe.pairs[3][0], immunized[..., top : top + 14, left : left + 21])
    assert len(probe.validation) == 2 * 2  # synthetic images and each clean original once, not once per edit


def test_auto_is_held_to_the_worst_edit_and_names_it() -> None:
    from forwardguard.finetune.interpolation import PlantingProbe

    gray = torch.full((1, 3, 16, 16), 0.5)
    clean = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # Untransformed the pattern is the gray target (ratio 0); after the mirror it is its clean original (ratio 1).
    probe = PlantingProbe(pairs=[(gray, clean), (clean, clean)], validation=[clean], edits=["identity", "hflip"])
    encoder = torch.nn.Conv2d(3, 3, kernel_size=1)
    interpolations = Interpolations(encoder, encoder.state_dict(), probe, multiple=8)
    choice = interpolations.choose(ratio_target=0.5, drift_budget=1.0)
    assert choice.ratio == pytest.approx(1.0) and choice.worst_edit == "hflip"
    assert "(hflip)" in choice.describe() and "not met" in choice.reason
