"""The one transform module: robust immunization, planting and the eval gauntlet all draw from it.

A transform is named by one string everywhere (configs, CLI, reports); its kind, then its value:

- ``identity``
- ``jpeg_q75``: JPEG at quality 75 (an integer in [1, 100])
- ``noise_0.03``: additive Gaussian noise of sigma 0.03 (in (0, 1])
- ``resize_0.5``: resize by 0.5 and back to the original size (scale in (0, 4])
- ``crop_0.9``: keep the centre 90% of each side and resize back (fraction in (0, 1])
- ``blur_5``: Gaussian blur with a 5 x 5 kernel (odd, at least 3)
- ``hflip``: horizontal flip
- ``rotate_10``: rotation by 10 degrees counter-clockwise (degrees in [-180, 180])
- ``rrotate_5``: rotation by an angle drawn uniformly in [-5, 5] degrees (in (0, 180])
- ``shift_3``: crop 3 pixels off the top and 3 off the left (an integer in [1, 1024]): the 8 x 8 grid
  of JPEG and of the encoders moves, which costs an adversary nothing
- ``vshift_5``: crop 5 rows off the top only, ``hshift_5``: 5 columns off the left only (integers in
  [1, 1024]): an adversary need not crop as many rows as columns; ``vshift_5+hshift_2`` reaches any
  phase of the grid
- ``rshift_7``: crop a number of pixels drawn uniformly in 0..7 off the top, and another off the left
  (an integer in [1, 1024]); 7 reaches every phase of an 8-pixel grid
- ``rcrop_0.8``: a crop keeping 80% of the area (``sqrt(0.8)`` of each side) at an offset drawn
  uniformly, not resized back (fraction in (0, 1])

and chains of these joined by ``+``, applied left to right: ``jpeg_q75+resize_0.75+shift_3`` (at
most ``MAX_CHAIN`` steps; a chain's name is its steps' names joined by ``+``, so a value is written
without a ``+`` sign). Names are accepted wherever transforms are named: gauntlet, robust mix,
planting transforms, gate policy.

Conventions, for images NCHW in [0, 1] of any size; every output is clamped to [0, 1] and has the
input's shape, but for the crops that are not resized back (shift, vshift, hshift, rshift, rcrop):
they return the smaller image, as an adversary would upload it (``changes_size``):

- resize: bilinear with antialiasing down to ``round(side * scale)`` (at least 1 pixel), then
  bilinear back to the original size.
- crop: the centre ``round(side * fraction)`` pixels of each side, then bilinear back.
- blur: a Gaussian of that kernel size with torchvision's default sigma, ``0.15 * k + 0.35``
  (1.1 for k = 5, the same as OpenCV's default), reflect padding at the border; on an image too
  small for the kernel, the kernel is cut to fit (none on a side of one pixel).
- rotate: about the centre, bilinear, same size; the corners that come from outside the image
  are filled with black (zero).
- shift, vshift, hshift, rshift: never below one pixel: on a side of at most K pixels, K is cut to
  the side minus 1.
- rcrop: the kept sides are ``max(1, round(side * sqrt(fraction)))``.
- random draws (noise, the offsets of rshift and rcrop, the angle of rrotate) come from
  ``generator``, so that a seeded run is reproducible; every image of a batch gets the same offsets
  and angle (a pair stacked in one batch, immunized and clean, gets the same edit). A chain draws
  its steps' values in order from the one generator.
- jpeg: ``apply`` encodes with Pillow (libjpeg) at that quality and 4:2:0 chroma subsampling after
  rounding to 8 bits, and decodes; ``apply_differentiable`` runs the same pipeline in torch (see
  ``_jpeg_differentiable``).

Only JPEG has two implementations. Every other kind is one torch function, differentiable, that
``apply`` and ``apply_differentiable`` share.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from forwardguard.errors import ForwardguardError
from forwardguard.numbers import parse_number

# kind -> whether it takes a value
_KINDS: dict[str, bool] = {
    "identity": False,
    "jpeg": True,
    "noise": True,
    "resize": True,
    "crop": True,
    "blur": True,
    "hflip": False,
    "rotate": True,
    "rrotate": True,
    "shift": True,
    "vshift": True,
    "hshift": True,
    "rshift": True,
    "rcrop": True,
}
_SHIFT_KINDS = frozenset({"shift", "vshift", "hshift", "rshift"})
_SIZE_CHANGING = _SHIFT_KINDS | {"rcrop"}
_INTEGER_KINDS = frozenset({"jpeg", "blur"}) | _SHIFT_KINDS
MAX_CHAIN = 8
"""The most steps a chain may have."""
MAX_SHIFT = 1024


@dataclass(frozen=True)
class Transform:
    """One image transform: its kind and its one parameter (see the module docstring's table).

    Raises ForwardguardError on an unknown kind or a parameter out of range.
    """

    kind: str
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ForwardguardError(f"unknown transform kind {self.kind!r}; known kinds: {', '.join(_KINDS)}")
        if not _KINDS[self.kind]:
            if self.value is not None:
                raise ForwardguardError(f"transform {self.kind!r} takes no value, got {self.value!r}")
            return
        value = self.value
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ForwardguardError(f"transform {self.kind!r} needs a finite number, got {value!r}")
        problem = _check_value(self.kind, value)
        if problem:
            raise ForwardguardError(f"transform {self.kind}: {problem}, got {value!r}")

    @property
    def name(self) -> str:
        """The stable name, e.g. ``jpeg_q75``; ``parse_transform(t.name) == t``."""
        if self.value is None:
            return self.kind
        if self.kind == "jpeg":
            return f"jpeg_q{int(self.value)}"
        value = float(self.value)
        text = str(int(value)) if value.is_integer() else repr(value)
        return f"{self.kind}_{text}"

    @property
    def steps(self) -> tuple[Transform, ...]:
        """The elementary transforms applied in order: this one (see :class:`Chain`)."""
        return (self,)

    @property
    def changes_size(self) -> bool:
        """True for the crops that return a smaller image (shift, vshift, hshift, rshift, rcrop)."""
        return self.kind in _SIZE_CHANGING


@dataclass(frozen=True)
class Chain:
    """Elementary transforms applied left to right, named by their names joined by ``+``.

    Raises ForwardguardError for fewer than 2 or more than ``MAX_CHAIN`` steps (one step is that
    transform itself: ``parse_transform`` returns a Transform).
    """

    steps: tuple[Transform, ...]

    def __post_init__(self) -> None:
        if not 2 <= len(self.steps) <= MAX_CHAIN:
            raise ForwardguardError(f"a chain of transforms has 2 to {MAX_CHAIN} steps, got {len(self.steps)}")
        if not all(isinstance(step, Transform) for step in self.steps):
            raise ForwardguardError("a chain's steps are elementary transforms")

    @property
    def name(self) -> str:
        """``jpeg_q75+resize_0.75+shift_3``; ``parse_transform(c.name) == c``."""
        return "+".join(step.name for step in self.steps)

    @property
    def changes_size(self) -> bool:
        return any(step.changes_size for step in self.steps)


AnyTransform = Transform | Chain
"""What ``parse_transform`` returns and every function here takes: one transform or a chain."""


def _check_value(kind: str, value: float) -> str | None:
    """Why ``value`` is not a valid parameter of ``kind``, or None when it is."""
    if kind == "jpeg" and not (float(value).is_integer() and 1 <= value <= 100):
        return "quality must be an integer in [1, 100]"
    if kind == "noise" and not 0 < value <= 1:
        return "sigma must be in (0, 1]"
    if kind == "resize" and not 0 < value <= 4:
        return "scale must be in (0, 4]"
    if kind == "crop" and not 0 < value <= 1:
        return "the kept fraction must be in (0, 1]"
    if kind == "blur" and not (float(value).is_integer() and value >= 3 and value % 2 == 1):
        return "kernel size must be an odd integer >= 3"
    if kind == "rotate" and not -180 <= value <= 180:
        return "degrees must be in [-180, 180]"
    if kind == "rrotate" and not 0 < value <= 180:
        return "the largest angle must be in (0, 180]"
    if kind in _SHIFT_KINDS and not (float(value).is_integer() and 1 <= value <= MAX_SHIFT):
        return f"pixels must be an integer in [1, {MAX_SHIFT}]"
    if kind == "rcrop" and not 0 < value <= 1:
        return "the kept area fraction must be in (0, 1]"
    return None


def parse_transform(name: str) -> AnyTransform:
    """The transform named ``name`` (``jpeg_q75``, ``noise_0.03``, ``hflip``, ``jpeg_q75+shift_3``, ...).

    Raises ForwardguardError for an unknown name, listing the known kinds.
    """
    parts = name.strip().split("+")
    if len(parts) > MAX_CHAIN:
        raise ForwardguardError(f"transform {name[:80]!r}: a chain has at most {MAX_CHAIN} steps, got {len(parts)}")
    steps = tuple(_parse_step(part, name) for part in parts)
    return steps[0] if len(steps) == 1 else Chain(steps)


def _parse_step(text: str, name: str) -> Transform:
    """One elementary transform of ``name`` (the whole name, for the messages)."""
    kind, _, argument = text.strip().partition("_")
    if kind not in _KINDS:
        raise ForwardguardError(
            f"unknown transform {name!r}; known kinds: identity, jpeg_qQUALITY, noise_SIGMA, resize_SCALE, "
            "crop_FRACTION, blur_KERNEL, hflip, rotate_DEGREES, rrotate_DEGREES, shift_PIXELS, vshift_PIXELS, "
            "hshift_PIXELS, rshift_PIXELS, rcrop_FRACTION, and chains A+B"
        )
    if not _KINDS[kind]:
        if argument:
            raise ForwardguardError(f"transform {name!r}: {kind} takes no value")
        return Transform(kind)
    if kind == "jpeg":
        if not argument.startswith("q"):
            raise ForwardguardError(f"transform {name!r}: write JPEG as jpeg_qQUALITY, e.g. jpeg_q75")
        argument = argument[1:]
    value = parse_number(argument, what=f"transform {name!r}")
    if kind in _INTEGER_KINDS and value.is_integer():
        return Transform(kind, int(value))
    return Transform(kind, value)


def parse_transforms(names: str | Sequence[str]) -> tuple[AnyTransform, ...]:
    """A mix of transforms from a list of names or one comma-separated string; repeats weight a kind.

    Raises ForwardguardError on an unknown name or an empty mix.
    """
    if isinstance(names, str):
        names = [part for part in names.split(",") if part.strip()]
    transforms = tuple(parse_transform(name) for name in names)
    if not transforms:
        raise ForwardguardError("the transform mix is empty; name at least one transform (e.g. identity)")
    return transforms


GAUNTLET: tuple[AnyTransform, ...] = parse_transforms(
    [
        "jpeg_q95",
        "jpeg_q75",
        "jpeg_q50",
        "noise_0.01",
        "noise_0.03",
        "noise_0.05",
        "resize_0.5",
        "crop_0.9",
        "blur_5",
        "hflip",
        "rotate_10",
        "shift_1",
        "shift_3",
        "rcrop_0.8",
        "rotate_5",
        "jpeg_q75+resize_0.75",
        "vshift_4",
        "hshift_4",
    ]
)
"""The eval gauntlet, in report order: issue 5's list, then issue 13's edits that an adversary gets for
free (shifted and random crops, a small rotation, a re-encoded and downscaled upload), then a crop of
rows only and one of columns only, half the 8-pixel grid: ``shift_K`` crops as many rows as columns,
and a perturbation can survive those diagonal phases and not the others (docs/benchmarks.md)."""

FREE_EDITS: tuple[AnyTransform, ...] = parse_transforms(
    [
        "identity",
        *(f"shift_{pixels}" for pixels in range(1, 8)),
        "hflip",
        "rotate_5",
        "rcrop_0.8",
        "jpeg_q75",
        "resize_0.5",
        "jpeg_q75+shift_3",
    ]
)
"""Issue 13's edits that cost an adversary nothing, each a fixed edit (``rcrop_0.8`` seeded): the 7 diagonal
phases of the 8-pixel grid (as many rows off the top as columns off the left; planting draws every phase,
and bench/plant_bench.py measures all 64), a mirror, a small rotation, a crop, re-encoding, rescaling. A
planted model must keep a registered photo protected after each; ``weight_interpolation: auto`` measures
its choice on them."""

PLANTING_POOL: tuple[AnyTransform, ...] = parse_transforms(
    [
        "identity",
        "jpeg_q50",
        "jpeg_q75",
        "jpeg_q90",
        "jpeg_q95",
        "resize_0.5",
        "resize_0.75",
        "resize_0.9",
        "noise_0.01",
        "noise_0.02",
    ]
)
"""Cheap photometric transforms that planting draws from, so that a planted trigger survives re-encoding."""

GEOMETRIC_PLANTING_POOL: tuple[AnyTransform, ...] = parse_transforms(
    ["rshift_7", "rcrop_0.8", "hflip", "rrotate_5", "jpeg_q75+rshift_7"]
)
"""Geometric edits that planting can draw as well (issue 13): random shifts of the 8-pixel grid, random
crops, flips, small rotations, and a shift after re-encoding. The model side can be made invariant to
them, which the image side cannot. The default recipe draws them beside ``PLANTING_POOL``."""

ROBUST_POOL: tuple[AnyTransform, ...] = parse_transforms(
    [
        "identity",
        "identity",
        "identity",
        "identity",
        "jpeg_q50",
        "jpeg_q75",
        "jpeg_q75+rshift_7",
        "jpeg_q95",
        "noise_0.03",
        "resize_0.5",
        "crop_0.9",
        "blur_5",
        "hflip",
        "rotate_10",
        "rshift_7",
        "rcrop_0.8",
    ]
)
"""Robust immunization's default mix: every gauntlet kind; JPEG (what platforms do to every upload) on
four draws of 16, one of them after a random shift; the shifts and random crops an adversary gets for
free (issue 13) on three; and identity on four, to keep the untransformed image near the plain attack's
disruption ratio. Issue 13 moved one identity and one JPEG draw to shifts and crops: the figures of
bench/robust_bench.py (identity five times of 16 kept the untransformed ratio within 0.05 of the plain
attack's on TAEF2) need measuring again for this mix."""


def sample_transform(pool: Sequence[AnyTransform], generator: torch.Generator | None = None) -> AnyTransform:
    """One transform drawn uniformly from ``pool`` with ``generator`` (repeats in the pool weight it)."""
    if not pool:
        raise ValueError("cannot sample from an empty transform pool")
    index = int(torch.randint(len(pool), (1,), generator=generator).item())
    return pool[index]


def apply(transform: AnyTransform, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """The real transform of a batch (N, C, H, W) in [0, 1]: JPEG through Pillow, no gradient."""
    with torch.no_grad():
        return _run_steps(transform, images, generator, jpeg=_jpeg_pillow)


def apply_differentiable(
    transform: AnyTransform, images: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The transform as torch operations that gradients flow through (for expectation over transforms).

    It equals ``apply`` for every kind but JPEG, whose forward pass follows libjpeg closely and whose
    gradient is a surrogate (see ``_jpeg_differentiable``).
    """
    return _run_steps(transform, images, generator, jpeg=_jpeg_differentiable)


def _run_steps(
    transform: AnyTransform,
    images: torch.Tensor,
    generator: torch.Generator | None,
    *,
    jpeg: Callable[[torch.Tensor, int], torch.Tensor],
) -> torch.Tensor:
    """Each step of ``transform`` in turn; JPEG through ``jpeg``, every other kind through its torch function."""
    _check_images(images)
    for step in transform.steps:
        if step.kind == "jpeg":
            assert step.value is not None  # parse_transform gives jpeg a quality
            images = jpeg(images, int(step.value))
        else:
            images = _TORCH[step.kind](images, step.value, generator).clamp(0, 1)
    return images


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"expected a float (N, C, H, W) batch, got {tuple(images.shape)} {images.dtype}")


# ---- the torch transforms (all differentiable) ----


def _identity(images: torch.Tensor, value: float | None, generator: torch.Generator | None) -> torch.Tensor:
    return images


def _noise(images: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    device = images.device if generator is None else generator.device
    noise = torch.randn(images.shape, generator=generator, device=device, dtype=images.dtype)
    return images + sigma * noise.to(images.device)


def _resize(images: torch.Tensor, scale: float, generator: torch.Generator | None) -> torch.Tensor:
    height, width = images.shape[-2:]
    small = (max(1, round(height * scale)), max(1, round(width * scale)))
    down = F.interpolate(images, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(down, size=(height, width), mode="bilinear", align_corners=False)


def _crop(images: torch.Tensor, fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    height, width = images.shape[-2:]
    kept_h, kept_w = max(1, round(height * fraction)), max(1, round(width * fraction))
    top, left = (height - kept_h) // 2, (width - kept_w) // 2
    cropped = images[..., top : top + kept_h, left : left + kept_w]
    return F.interpolate(cropped, size=(height, width), mode="bilinear", align_corners=False)


def _blur(images: torch.Tensor, kernel: float, generator: torch.Generator | None) -> torch.Tensor:
    size = int(kernel)
    sigma = 0.15 * size + 0.35
    # Reflect padding needs the half-kernel within the image: a tiny image gets the largest kernel it can
    # take, with the sigma of the kernel asked for.
    size = min(size, 2 * (min(images.shape[-2:]) - 1) + 1)
    if size < 3:
        return images
    return TF.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])


def _hflip(images: torch.Tensor, value: float | None, generator: torch.Generator | None) -> torch.Tensor:
    return images.flip(-1)


def _rotate(images: torch.Tensor, degrees: float, generator: torch.Generator | None) -> torch.Tensor:
    return TF.rotate(images, float(degrees), interpolation=TF.InterpolationMode.BILINEAR, expand=False, fill=None)


def _random_rotate(images: torch.Tensor, largest: float, generator: torch.Generator | None) -> torch.Tensor:
    degrees = (2 * _uniform(generator) - 1) * largest
    return _rotate(images, degrees, generator)


def _shift(images: torch.Tensor, pixels: float, generator: torch.Generator | None) -> torch.Tensor:
    return _crop_top_left(images, int(pixels), int(pixels))


def _shift_rows(images: torch.Tensor, pixels: float, generator: torch.Generator | None) -> torch.Tensor:
    return _crop_top_left(images, int(pixels), 0)


def _shift_columns(images: torch.Tensor, pixels: float, generator: torch.Generator | None) -> torch.Tensor:
    return _crop_top_left(images, 0, int(pixels))


def _random_shift(images: torch.Tensor, pixels: float, generator: torch.Generator | None) -> torch.Tensor:
    top = _random_integer(int(pixels), generator)
    left = _random_integer(int(pixels), generator)
    return _crop_top_left(images, top, left)


def _crop_top_left(images: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """``images`` without ``top`` rows and ``left`` columns, keeping at least one of each."""
    height, width = images.shape[-2:]
    return images[..., min(top, height - 1) :, min(left, width - 1) :]


def _random_crop(images: torch.Tensor, fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    height, width = images.shape[-2:]
    side = math.sqrt(fraction)
    kept_h, kept_w = max(1, round(height * side)), max(1, round(width * side))
    top = _random_integer(height - kept_h, generator)
    left = _random_integer(width - kept_w, generator)
    return images[..., top : top + kept_h, left : left + kept_w]


def _random_integer(largest: int, generator: torch.Generator | None) -> int:
    """Uniform in 0..``largest``, from ``generator`` (on its own device)."""
    device = "cpu" if generator is None else generator.device
    return int(torch.randint(largest + 1, (1,), generator=generator, device=device))


def _uniform(generator: torch.Generator | None) -> float:
    """Uniform in [0, 1), from ``generator`` (on its own device)."""
    device = "cpu" if generator is None else generator.device
    return float(torch.rand(1, generator=generator, device=device))


# A step's value is a float for every kind but identity and hflip, where it is None (parse_transform checks it),
# so each function takes the value type of its own kind.
_TORCH: dict[str, Callable[[torch.Tensor, Any, torch.Generator | None], torch.Tensor]] = {
    "identity": _identity,
    "noise": _noise,
    "resize": _resize,
    "crop": _crop,
    "blur": _blur,
    "hflip": _hflip,
    "rotate": _rotate,
    "rrotate": _random_rotate,
    "shift": _shift,
    "vshift": _shift_rows,
    "hshift": _shift_columns,
    "rshift": _random_shift,
    "rcrop": _random_crop,
}


# ---- JPEG ----


def _jpeg_pillow(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Pillow encode and decode, per image, of the 8-bit rounded RGB batch."""
    if images.shape[1] != 3:
        raise ValueError(f"JPEG needs RGB images, got {images.shape[1]} channels")
    pixels = torch.round(images.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for rgb in pixels:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality, subsampling=2)  # 2 = 4:2:0
        buffer.seek(0)
        with Image.open(buffer) as image:
            decoded.append(np.asarray(image.convert("RGB")))
    result = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return result.to(device=images.device, dtype=images.dtype) / 255


# ITU-T T.81 annex K, tables K.1 and K.2, row-major.
_LUMINANCE_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
_CHROMINANCE_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip


def quantization_tables(quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (luminance, chrominance) 8x8 tables libjpeg uses at ``quality``: annex K scaled by the IJG rule.

    The IJG rule: scale = 5000 / q below 50, else 200 - 2q; entry = (base * scale + 50) // 100,
    clamped to [1, 255] (baseline JPEG, as Pillow writes).
    """
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    tables = []
    for base in (_LUMINANCE_TABLE, _CHROMINANCE_TABLE):
        entries = [min(max((value * scale + 50) // 100, 1), 255) for value in base]
        tables.append(torch.tensor(entries, dtype=torch.float32).view(8, 8))
    return tables[0], tables[1]


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix; D @ block @ D.T is JPEG's forward DCT."""
    k = torch.arange(8, dtype=torch.float64).view(8, 1)
    n = torch.arange(8, dtype=torch.float64).view(1, 8)
    matrix = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    matrix[0] = math.sqrt(1 / 8)
    return matrix.to(dtype=dtype, device=device)


def _round_straight_through(values: torch.Tensor) -> torch.Tensor:
    """Exact rounding forward, identity gradient (for 8-bit pixel rounding, which barely changes values)."""
    return values + (torch.round(values) - values).detach()


def _round_cubic_gradient(values: torch.Tensor) -> torch.Tensor:
    """Exact rounding forward; backward, the derivative of Shin & Song's (2017) cubic approximation.

    The cubic ``r + (x - r)^3`` (r = round(x)) has derivative ``3 (x - r)^2``: near zero for a
    coefficient that quantization pins to a level, up to 0.75 halfway between levels. So the gradient
    says which DCT coefficients JPEG lets through, while the forward pass stays the real rounding.
    """
    rounded = torch.round(values)
    cubic = rounded.detach() + (values - rounded.detach()) ** 3
    return rounded.detach() + (cubic - cubic.detach())


def _blocks(planes: torch.Tensor) -> torch.Tensor:
    """(N, H, W) with H, W multiples of 8 -> (N, H/8, W/8, 8, 8)."""
    n, height, width = planes.shape
    return planes.view(n, height // 8, 8, width // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(blocks: torch.Tensor) -> torch.Tensor:
    n, rows, cols = blocks.shape[:3]
    return blocks.permute(0, 1, 3, 2, 4).reshape(n, rows * 8, cols * 8)


def _quantize_planes(planes: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Level shift, 8x8 DCT, quantize with ``table``, dequantize, inverse DCT (values 0-255)."""
    blocks = _blocks(planes - 128)
    coefficients = dct @ blocks @ dct.T
    quantized = _round_cubic_gradient(coefficients / table) * table
    return _unblocks(dct.T @ quantized @ dct) + 128


def _jpeg_differentiable(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG compression as torch operations, following libjpeg's baseline path with Pillow's defaults.

    Steps: round to 8 bits (straight-through gradient); pad to multiples of 16 by repeating the
    last row and column (as libjpeg does); RGB -> YCbCr (JFIF); 4:2:0 chroma subsampling by 2x2
    averaging; per plane, level shift, 8x8 DCT, quantization with the annex K tables scaled for
    ``quality`` (rounding: see ``_round_cubic_gradient``), dequantization and inverse DCT; chroma
    upsampling by bilinear interpolation (libjpeg's "fancy" triangular filter); YCbCr -> RGB; round
    to 8 bits again; crop the padding. Computed in float32 (float64 stays float64).
    """
    if images.shape[1] != 3:
        raise ValueError(f"JPEG needs RGB images, got {images.shape[1]} channels")
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    height, width = images.shape[-2:]
    pixels = _round_straight_through(images.to(dtype).clamp(0, 1) * 255)
    pixels = F.pad(pixels, (0, -width % 16, 0, -height % 16), mode="replicate")
    red, green, blue = pixels.unbind(1)
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    blue_chroma = -0.168735892 * red - 0.331264108 * green + 0.5 * blue + 128
    red_chroma = 0.5 * red - 0.418687589 * green - 0.081312411 * blue + 128
    chroma = F.avg_pool2d(torch.stack([blue_chroma, red_chroma], dim=1), 2)

    luminance_table, chrominance_table = (table.to(dtype=dtype, device=images.device) for table in quantization_tables(quality))
    dct = _dct_matrix(dtype, images.device)
    n = images.shape[0]
    luma = _quantize_planes(luma, luminance_table, dct)
    chroma = _quantize_planes(chroma.flatten(0, 1), chrominance_table, dct).view(n, 2, *chroma.shape[-2:])
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    blue_chroma, red_chroma = chroma[:, 0] - 128, chroma[:, 1] - 128

    red = luma + 1.402 * red_chroma
    green = luma - 0.344136286 * blue_chroma - 0.714136286 * red_chroma
    blue = luma + 1.772 * blue_chroma
    rgb = _round_straight_through(torch.stack([red, green, blue], dim=1).clamp(0, 255)) / 255
    return rgb[..., :height, :width].to(images.dtype)
