"""Synthetic clean images for planting: the kinds of picture a few clean photographs do not cover.

A planted model must leave every clean image alone, not only images like its ``--data``: flat and
dark images, gradients, graphics and text drift most when planting sees photographs only, and a fine
coloured texture (stained tissue, foliage, fabric) can look enough like a perturbation to trigger the
backdoor, and so can periodic detail: a backdoor made invariant to shifts and mirrors keys on the
periodic structure that perturbations against an 8-pixel grid carry, and clean gratings of a 2, 6
or 8 pixel period fired it (measured: docs/benchmarks.md). Each image is a pure function of its
generator (seeded per sample), so planting stays reproducible.

An image is drawn on a canvas up to ``MAX_ZOOM`` times its side and cropped at a random place: planting
trains on small crops (48 pixels), and a crop of a large gradient, of large letters or of a coarse
texture is what a clean image of hundreds of pixels shows the encoder. Drawn at the crop's side only,
the gradients and text of 128-pixel images drifted 1.2-1.9% while 48-pixel ones stayed clean.
"""

from __future__ import annotations

import string

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from forwardguard.images import to_tensor

KINDS = ("flat", "gradient", "shapes", "text", "dark", "texture", "grating")
MAX_ZOOM = 4.0
"""The largest canvas, as a multiple of the image's side."""


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _integer(generator: torch.Generator, high: int) -> int:
    return int(torch.randint(high, (1,), generator=generator))


def _colour(generator: torch.Generator) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in torch.randint(256, (3,), generator=generator))
    return red, green, blue


def synthetic_image(size: int, generator: torch.Generator, photo: np.ndarray | None = None) -> torch.Tensor:
    """A (3, size, size) image in [0, 1] of a random kind (see ``KINDS``), a random crop of a canvas of
    1 to ``MAX_ZOOM`` times ``size`` (module docstring); "dark" darkens ``photo`` (an (H, W, 3) uint8
    crop of ``size``) and falls back to a gradient without one."""
    kind = KINDS[_integer(generator, len(KINDS))]
    if kind == "dark" and photo is not None:
        return to_tensor(photo) * _uniform(generator, 0.03, 0.3)
    canvas = round(size * MAX_ZOOM ** _uniform(generator))
    top, left = _integer(generator, canvas - size + 1), _integer(generator, canvas - size + 1)
    return _draw(kind, canvas, generator)[:, top : top + size, left : left + size].contiguous()


def _draw(kind: str, size: int, generator: torch.Generator) -> torch.Tensor:
    """A (3, size, size) image of ``kind`` ("dark" without a photo: a gradient)."""
    if kind == "texture":
        return _texture(size, generator)
    if kind == "grating":
        return _grating(size, generator)
    if kind == "flat":
        colour = torch.tensor(_colour(generator), dtype=torch.float32) / 255
        return colour[:, None, None].expand(3, size, size).clone()
    if kind in ("gradient", "dark"):
        start, end = (torch.tensor(_colour(generator), dtype=torch.float32) / 255 for _ in range(2))
        angle = _uniform(generator, 0, 2 * np.pi)
        ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
        ramp = (xs * np.cos(angle) + ys * np.sin(angle)) - min(0, np.cos(angle)) - min(0, np.sin(angle))
        ramp = (ramp / ramp.max().clamp_min(1e-6))[None]
        return start[:, None, None] * (1 - ramp) + end[:, None, None] * ramp
    canvas = Image.new("RGB", (size, size), _colour(generator))
    draw = ImageDraw.Draw(canvas)
    if kind == "shapes":
        for _ in range(1 + _integer(generator, 6)):
            box = sorted(_integer(generator, size) for _ in range(2)), sorted(_integer(generator, size) for _ in range(2))
            corners = (box[0][0], box[1][0], box[0][1] + 1, box[1][1] + 1)
            shape = _integer(generator, 3)
            if shape == 0:
                draw.rectangle(corners, fill=_colour(generator))
            elif shape == 1:
                draw.ellipse(corners, fill=_colour(generator))
            else:
                draw.line(corners, fill=_colour(generator), width=1 + _integer(generator, 4))
    else:
        font = ImageFont.load_default(size=6 + _integer(generator, max(1, size // 4)))
        assert isinstance(font, ImageFont.FreeTypeFont)  # load_default(size=...) is a FreeType font
        ink = _colour(generator)
        letters = string.ascii_letters + string.digits + "  .,;:!?"
        y = _integer(generator, max(1, size // 4))
        while y < size:
            line = "".join(letters[_integer(generator, len(letters))] for _ in range(4 + _integer(generator, 30)))
            draw.text((_integer(generator, max(1, size // 4)) - size // 8, y), line, fill=ink, font=font)
            y += int(font.size * _uniform(generator, 1.1, 1.8))
    return to_tensor(np.asarray(canvas))


def _texture(size: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth noise of a random grain (1-16 pixels), its three fields mixed into random colours around a
    random mean colour at a random contrast."""
    grain = 2 ** _uniform(generator, 0, 4)
    cells = max(2, round(size / grain))
    noise = torch.randn(1, 3, cells, cells, generator=generator)
    field = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[0]
    field = field / field.std().clamp_min(1e-6)
    mixing = torch.randn(3, 3, generator=generator) * _uniform(generator, 0.05, 0.3)
    mean = torch.rand(3, generator=generator)
    return (mean[:, None, None] + torch.einsum("ij,jhw->ihw", mixing, field)).clamp(0, 1)


def _grating(size: int, generator: torch.Generator) -> torch.Tensor:
    """One to three sinusoidal gratings of a random period (2-16 pixels: the encoders' 8-pixel grid and its
    harmonics among them), orientation (along an axis or a diagonal half the time) and phase, summed,
    squared to bars half the time, between two random colours."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    field = torch.zeros(size, size)
    for _ in range(1 + _integer(generator, 3)):
        period = 2 * 8 ** _uniform(generator)
        angle = _integer(generator, 4) * np.pi / 4 if _uniform(generator) < 0.5 else _uniform(generator, 0, np.pi)
        field += torch.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period + _uniform(generator, 0, 2 * np.pi))
    if _uniform(generator) < 0.5:
        field = field.sign()
    level = ((field / field.abs().max().clamp_min(1e-6) + 1) / 2)[None]
    start, end = (torch.tensor(_colour(generator), dtype=torch.float32)[:, None, None] / 255 for _ in range(2))
    return start * (1 - level) + end * level
