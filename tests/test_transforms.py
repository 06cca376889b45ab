"""The transform module: names, the gauntlet's real transforms, and their differentiable twins."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from transform_support import step_kinds

from forwardguard.errors import ForwardguardError
from forwardguard.transforms import (
    GAUNTLET,
    GEOMETRIC_PLANTING_POOL,
    MAX_CHAIN,
    PLANTING_POOL,
    ROBUST_POOL,
    Chain,
    Transform,
    apply,
    apply_differentiable,
    parse_transform,
    parse_transforms,
    quantization_tables,
    sample_transform,
)

NON_JPEG = [t for t in (*GAUNTLET, *ROBUST_POOL, *GEOMETRIC_PLANTING_POOL) if all(step.kind != "jpeg" for step in t.steps)]
NON_JPEG = list(dict.fromkeys([*NON_JPEG, parse_transform("rrotate_30"), parse_transform("shift_7")]))


@pytest.fixture(scope="module")
def photos(photo) -> torch.Tensor:
    """Two real photographs, 90 x 70 (sides not multiples of 8 or 16), as a (2, 3, 70, 90) batch."""
    rgb = np.stack([photo("astronaut", (90, 70)), photo("coffee", (90, 70))])
    return torch.tensor(rgb, dtype=torch.float32).permute(0, 3, 1, 2) / 255


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


def test_the_gauntlet_is_issue_5s_list_then_issue_13s_in_order():
    assert [t.name for t in GAUNTLET] == [
        "jpeg_q95", "jpeg_q75", "jpeg_q50", "noise_0.01", "noise_0.03", "noise_0.05",
        "resize_0.5", "crop_0.9", "blur_5", "hflip", "rotate_10",
        "shift_1", "shift_3", "rcrop_0.8", "rotate_5", "jpeg_q75+resize_0.75", "vshift_4", "hshift_4",
    ]  # fmt: skip
    assert step_kinds(ROBUST_POOL) >= step_kinds(GAUNTLET)
    assert {"rshift_7", "rcrop_0.8"} <= {t.name for t in ROBUST_POOL}
    assert all(t.kind in ("identity", "jpeg", "resize", "noise") for t in PLANTING_POOL)
    assert all(t.value <= 0.02 for t in PLANTING_POOL if t.kind == "noise")
    assert all(t.changes_size or t.name in ("hflip", "rrotate_5") for t in GEOMETRIC_PLANTING_POOL)


@pytest.mark.parametrize("transform", GAUNTLET, ids=lambda t: t.name)
def test_every_gauntlet_transform_keeps_shape_and_range(transform, photos):
    extremes = torch.zeros(1, 3, 70, 90)
    extremes[..., ::2, :] = 1.0  # pixels at both ends of the range, where noise and JPEG overshoot
    for images in (photos, extremes):
        for function in (apply, apply_differentiable):
            out = function(transform, images, generator=torch.Generator().manual_seed(0))
            assert out.dtype == images.dtype and out.shape[:2] == images.shape[:2]
            if transform.changes_size:  # a crop not resized back: smaller, as the adversary uploads it
                assert all(o <= i for o, i in zip(out.shape[-2:], images.shape[-2:])) and out.numel() < images.numel()
            else:
                assert out.shape == images.shape
            assert out.min() >= 0 and out.max() <= 1
    out = apply(transform, photos, generator=torch.Generator().manual_seed(0))
    assert out.shape != photos.shape or not torch.equal(out, photos)


def test_identity_is_exact_and_hflip_twice_is_exact(photos):
    identity, hflip = parse_transform("identity"), parse_transform("hflip")
    assert torch.equal(apply(identity, photos), photos)
    assert torch.equal(apply_differentiable(identity, photos), photos)
    assert torch.equal(apply(hflip, apply(hflip, photos)), photos)
    assert torch.equal(apply(hflip, photos)[..., 0], photos[..., -1])


def test_geometry_follows_the_documented_conventions(photos):
    square = photos[..., :64, :64]
    # rotation is counter-clockwise about the centre; 90 degrees is exactly rot90
    assert torch.allclose(apply(parse_transform("rotate_90"), square), torch.rot90(square, 1, dims=(-2, -1)), atol=1e-6)
    white = torch.ones(1, 3, 40, 60)
    rotated = apply(parse_transform("rotate_10"), white)
    assert rotated[..., 0, 0].max() == 0 and rotated[..., 20, 30].min() == 1  # black corners, untouched centre
    # blur (reflect padding) and the resizes leave a constant image constant
    gray = torch.full((1, 3, 33, 47), 0.4)
    for name in ("blur_5", "resize_0.5", "crop_0.9"):
        assert torch.allclose(apply(parse_transform(name), gray), gray, atol=1e-6)
    # the crop keeps the centre: a centred square grows to fill the frame
    frame = torch.zeros(1, 1, 100, 100)
    frame[..., 45:55, 45:55] = 1
    grown = apply(parse_transform("crop_0.5"), frame)
    assert grown[..., 42:58, 42:58].min() > 0.99 and grown[..., :38, :].max() == 0 and grown[..., 62:, :].max() == 0
    assert torch.equal(apply(parse_transform("crop_1"), photos), photos)
    # resizing loses detail, more at a smaller scale
    assert _psnr(apply(parse_transform("resize_0.5"), photos), photos) < _psnr(
        apply(parse_transform("resize_0.9"), photos), photos
    )


def test_jpeg_q95_is_closer_to_the_input_than_q50(photos):
    q95 = apply(parse_transform("jpeg_q95"), photos)
    q50 = apply(parse_transform("jpeg_q50"), photos)
    assert _psnr(q95, photos) > _psnr(q50, photos) + 3


def test_noise_is_reproducible_with_a_seed_and_has_its_sigma():
    gray = torch.full((2, 3, 64, 64), 0.5)
    noise = parse_transform("noise_0.03")
    first = apply(noise, gray, generator=torch.Generator().manual_seed(7))
    again = apply(noise, gray, generator=torch.Generator().manual_seed(7))
    other = apply(noise, gray, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert (first - gray).std().item() == pytest.approx(0.03, rel=0.05)
    assert torch.equal(apply_differentiable(noise, gray, generator=torch.Generator().manual_seed(7)), first)


def test_names_round_trip():
    names = [
        "identity", "jpeg_q75", "jpeg_q1", "jpeg_q100", "noise_0.03", "resize_0.5", "resize_2",
        "crop_0.9", "blur_5", "blur_7", "hflip", "rotate_10", "rotate_-7.5",
        "shift_1", "rshift_7", "rcrop_0.8", "rrotate_5", "jpeg_q75+resize_0.75+shift_3", "hflip+hflip",
    ]  # fmt: skip
    for name in names:
        assert parse_transform(name).name == name
    for transform in (
        *GAUNTLET,
        *PLANTING_POOL,
        *ROBUST_POOL,
        *GEOMETRIC_PLANTING_POOL,
        Transform("noise", 0.1 + 0.2),
        Transform("jpeg", 75.0),
    ):
        assert parse_transform(transform.name) == transform
    assert parse_transform("jpeg_q75") == Transform("jpeg", 75)
    assert parse_transform(" rotate_10.0 ") == Transform("rotate", 10)
    assert parse_transform("jpeg_q75 + shift_3.0") == Chain((Transform("jpeg", 75), Transform("shift", 3)))


@pytest.mark.parametrize(
    "name, message",
    [
        ("sharpen_3", "known kinds: identity, jpeg_qQUALITY"),
        ("", "unknown transform"),
        ("jpeg_75", "jpeg_qQUALITY"),
        ("jpeg_q0", r"\[1, 100\]"),
        ("jpeg_q101", r"\[1, 100\]"),
        ("jpeg_q75.5", "integer"),
        ("blur_4", "odd"),
        ("noise_abc", "not a number"),
        ("noise_0", r"\(0, 1\]"),
        ("noise_nan", "not a number or fraction"),
        ("crop_1.5", r"\(0, 1\]"),
        ("rotate_270", r"\[-180, 180\]"),
        ("hflip_2", "takes no value"),
        ("shift_0", r"\[1, 1024\]"),
        ("shift_2.5", "integer"),
        ("rshift_2000", r"\[1, 1024\]"),
        ("vshift_0", r"\[1, 1024\]"),
        ("hshift_1.5", "integer"),
        ("rcrop_0", r"\(0, 1\]"),
        ("rcrop_1.2", r"\(0, 1\]"),
        ("rrotate_0", r"\(0, 180\]"),
        ("jpeg_q75+", "unknown transform"),
        ("jpeg_q75++shift_3", "unknown transform"),
        ("jpeg_q75+sharpen_2", "unknown transform 'jpeg_q75\\+sharpen_2'"),
        ("rotate_+5", "not a number"),  # "+" joins a chain
        ("+".join(["hflip"] * (MAX_CHAIN + 1)), f"at most {MAX_CHAIN} steps"),
    ],
)
def test_bad_names_are_refused_with_a_reason(name, message):
    with pytest.raises(ForwardguardError, match=message):
        parse_transform(name)


def test_transforms_validate_on_construction_and_mixes_parse():
    with pytest.raises(ForwardguardError, match="known kinds"):
        Transform("sepia", 1)
    with pytest.raises(ForwardguardError, match="needs a finite number"):
        Transform("jpeg")
    with pytest.raises(ForwardguardError, match="takes no value"):
        Transform("hflip", 1)
    mix = parse_transforms("jpeg_q75, resize_0.5,identity")
    assert mix == parse_transforms(["jpeg_q75", "resize_0.5", "identity"])
    assert [t.kind for t in mix] == ["jpeg", "resize", "identity"]
    with pytest.raises(ForwardguardError, match="empty"):
        parse_transforms(" , ")
    with pytest.raises(ForwardguardError, match="unknown transform"):
        parse_transforms(["jpeg_q75", "median_3"])


def test_sample_transform_is_seeded_and_covers_the_pool():
    draws = [sample_transform(ROBUST_POOL, torch.Generator().manual_seed(3)) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    generator = torch.Generator().manual_seed(0)
    seen = {sample_transform(GAUNTLET, generator) for _ in range(300)}
    assert seen == set(GAUNTLET)
    with pytest.raises(ValueError, match="empty"):
        sample_transform([], generator)


@pytest.mark.parametrize("transform", NON_JPEG, ids=lambda t: t.name)
def test_differentiable_matches_real_and_passes_gradients(transform, photos):
    real = apply(transform, photos, generator=torch.Generator().manual_seed(1))
    images = photos.clone().requires_grad_(True)
    out = apply_differentiable(transform, images, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, real, atol=1e-6)
    weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad((out * weights).sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_jpeg_quantization_tables_are_pillows():
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    for quality in (5, 10, 49, 50, 75, 95, 100):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, subsampling=2)
        with Image.open(buffer) as image:
            written = image.quantization
        luminance, chrominance = quantization_tables(quality)
        assert luminance.flatten().int().tolist() == list(written[0])
        assert chrominance.flatten().int().tolist() == list(written[1])


@pytest.mark.parametrize("quality", [75, 50])
def test_differentiable_jpeg_is_close_to_pillows_and_passes_gradients(quality, photo):
    # 250 x 190: neither side a multiple of 16, so the padding is exercised
    rgb = np.stack([photo("astronaut", (250, 190)), photo("coffee", (250, 190))])
    images = torch.tensor(rgb, dtype=torch.float32).permute(0, 3, 1, 2) / 255
    jpeg = parse_transform(f"jpeg_q{quality}")
    real = apply(jpeg, images)
    approximation = apply_differentiable(jpeg, images)
    # measured 43.3 (q75) and 43.0 (q50) dB on the astronaut, 43.5 and 44.0 dB on the coffee
    for i in range(2):
        assert _psnr(approximation[i], real[i]) > 38
        assert abs(_psnr(approximation[i], images[i]) - _psnr(real[i], images[i])) < 0.5

    leaf = images[:1, :, :64, :80].clone().requires_grad_(True)
    out = apply_differentiable(jpeg, leaf)
    weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((out * weights).sum(), leaf)
    assert torch.isfinite(grad).all() and (grad != 0).float().mean() > 0.5


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (1, 7), (3, 40)])
def test_every_transform_takes_images_smaller_than_its_kernel(size):
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    transforms = (*GAUNTLET, *ROBUST_POOL, *GEOMETRIC_PLANTING_POOL, parse_transform("blur_201"), parse_transform("shift_1024"))
    for transform in transforms:
        for function in (apply, apply_differentiable):
            out = function(transform, images, generator=torch.Generator().manual_seed(1))
            assert torch.isfinite(out).all(), transform.name
            if transform.changes_size:  # never below one pixel
                assert 1 <= out.shape[-2] <= size[0] and 1 <= out.shape[-1] <= size[1], transform.name
            else:
                assert out.shape == images.shape, transform.name


_names = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda kind, value: f"{kind}_{value}",
        st.sampled_from(["jpeg", "noise", "resize", "crop", "blur", "rotate", "hflip"]),
        st.one_of(st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True).map(str), st.integers().map(str)),
    ),
    st.builds(lambda q: f"jpeg_q{q}", st.integers(-(10**40), 10**40)),
)


@given(_names)
def test_a_transform_name_parses_to_a_transform_whose_name_round_trips_or_to_an_error(name: str) -> None:
    """issue 14: the transform parser, like every parser of user input, is total: a Transform or a ForwardguardError."""
    try:
        transform = parse_transform(name)
    except ForwardguardError:
        return
    assert parse_transform(transform.name) == transform
    assert all(step.value is None or math.isfinite(step.value) for step in transform.steps)


@given(st.sampled_from(["blur", "resize", "noise", "rotate"]), st.integers(31, 10**9))
def test_a_huge_exponent_in_a_transform_value_is_refused_at_once(kind: str, exponent: int) -> None:
    """issue 14 item 1: transform values go through the bounded number parser too."""
    with pytest.raises(ForwardguardError):
        parse_transform(f"{kind}_1e-{exponent}")


# ---- issue 13: shifted and random crops, random rotations, chains ----


def test_shift_crops_the_top_and_left(photos):
    shifted = apply(parse_transform("shift_3"), photos)
    assert torch.equal(shifted, photos[..., 3:, 3:])
    assert torch.equal(apply_differentiable(parse_transform("shift_3"), photos), shifted)
    tiny = torch.rand(1, 3, 2, 5)
    assert apply(parse_transform("shift_4"), tiny).shape == (1, 3, 1, 1)  # cut to keep one pixel


def test_row_and_column_shifts_crop_one_side_and_chain_to_any_phase(photos):
    rows, columns = parse_transform("vshift_5"), parse_transform("hshift_2")
    assert torch.equal(apply(rows, photos), photos[..., 5:, :])
    assert torch.equal(apply(columns, photos), photos[..., :, 2:])
    assert rows.changes_size and columns.changes_size
    phase = parse_transform("vshift_5+hshift_2")
    assert torch.equal(apply(phase, photos), photos[..., 5:, 2:])
    assert torch.equal(apply_differentiable(phase, photos), photos[..., 5:, 2:])
    assert torch.equal(apply(parse_transform("vshift_3+hshift_3"), photos), apply(parse_transform("shift_3"), photos))
    tiny = photos[..., :2, :2]
    assert apply(parse_transform("vshift_4"), tiny).shape == (photos.shape[0], 3, 1, 2)  # cut to keep one row


def test_random_shifts_cover_every_offset_and_are_seeded(photos):
    rshift = parse_transform("rshift_7")
    offsets = set()
    for seed in range(1000):
        out = apply(rshift, photos, generator=torch.Generator().manual_seed(seed))
        top, left = 70 - out.shape[-2], 90 - out.shape[-1]
        assert torch.equal(out, photos[..., top:, left:])  # every image of the batch: the same offsets
        offsets.add((top, left))
    assert offsets == {(top, left) for top in range(8) for left in range(8)}
    again = apply(rshift, photos, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again, apply_differentiable(rshift, photos, generator=torch.Generator().manual_seed(5)))


def test_random_crop_keeps_its_area_at_any_offset(photos):
    rcrop = parse_transform("rcrop_0.8")
    corners = set()
    for seed in range(50):
        out = apply(rcrop, photos, generator=torch.Generator().manual_seed(seed))
        assert out.shape[-2:] == (round(70 * 0.8**0.5), round(90 * 0.8**0.5))
        matches = [
            (top, left)
            for top in range(70 - out.shape[-2] + 1)
            for left in range(90 - out.shape[-1] + 1)
            if torch.equal(out, photos[..., top : top + out.shape[-2], left : left + out.shape[-1]])
        ]
        assert len(matches) == 1
        corners.add(matches[0])
    assert len(corners) > 20 and any(top % 8 for top, _ in corners)
    assert torch.equal(apply(parse_transform("rcrop_1"), photos), photos)


def test_random_rotation_stays_within_its_range():
    white = torch.ones(1, 3, 64, 64)
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        out = apply(parse_transform("rrotate_5"), white, generator=generator)
        angle = (2 * float(torch.rand(1, generator=torch.Generator().manual_seed(seed))) - 1) * 5
        assert torch.equal(out, apply(parse_transform(f"rotate_{angle!r}"), white))


def test_a_chain_applies_its_steps_in_order_with_one_generator(photos):
    chain = parse_transform("noise_0.02+jpeg_q75+rshift_7")
    generator = torch.Generator().manual_seed(4)
    expected = photos
    for name in ("noise_0.02", "jpeg_q75", "rshift_7"):
        expected = apply(parse_transform(name), expected, generator=generator)
    assert torch.equal(apply(chain, photos, generator=torch.Generator().manual_seed(4)), expected)
    assert chain.changes_size and not parse_transform("jpeg_q75+resize_0.75").changes_size
    differentiable = apply_differentiable(parse_transform("resize_0.75+shift_3"), photos)
    assert torch.allclose(differentiable, apply(parse_transform("resize_0.75"), photos)[..., 3:, 3:], atol=1e-6)
    with pytest.raises(ForwardguardError, match="2 to"):
        Chain((Transform("hflip"),))


_readable = lambda floats: floats.filter(lambda v: v == 0 or abs(v) >= 1e-9)  # noqa: E731 (names write exponents up to e30)
_steps = st.one_of(
    st.just(Transform("identity")), st.just(Transform("hflip")),
    st.builds(Transform, st.sampled_from(["jpeg"]), st.integers(1, 100)),
    st.builds(Transform, st.sampled_from(["blur"]), st.integers(1, 20).map(lambda k: 2 * k + 1)),
    st.builds(Transform, st.sampled_from(["shift", "vshift", "hshift", "rshift"]), st.integers(1, 1024)),
    st.builds(Transform, st.sampled_from(["noise", "rcrop", "crop"]), st.floats(1e-6, 1)),
    st.builds(Transform, st.just("resize"), st.floats(1e-6, 4)),
    st.builds(Transform, st.just("rotate"), _readable(st.floats(-180, 180))),
    st.builds(Transform, st.just("rrotate"), st.floats(1e-6, 180)),
)  # fmt: skip


@given(st.lists(_steps, min_size=1, max_size=MAX_CHAIN))
def test_chain_names_round_trip(steps: list[Transform]) -> None:
    transform = steps[0] if len(steps) == 1 else Chain(tuple(steps))
    assert transform.name == "+".join(step.name for step in steps)
    assert parse_transform(transform.name) == transform
    assert parse_transform(transform.name).name == transform.name
