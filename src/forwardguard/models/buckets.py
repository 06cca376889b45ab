"""Batches of images of different sizes: each image padded to one bucket shape, delta kept on its own pixels.

Used by the attacks (a batch of inputs), planting (one canvas for crops of several sizes) and the API
(grouping requests). An image attacked alone is padded (reflect, bottom and right) to the model's multiple inside the
objective. In a bucket every image is padded to the largest height and width of the batch rounded
up to that multiple, by the same reflection continued: the first rows and columns of the padding
are exactly those of the image alone, and each image's loss is taken on its own part (see
:mod:`forwardguard.immunize.objectives`). The padding is redone from ``image + delta`` at every step
(a differentiable gather), so the gradient of padded pixels reaches the real ones as it does alone.

Images whose sizes round up to the same multiple therefore compute exactly what they compute alone
(up to float summation order). Padding an image beyond its own multiple (``max_growth`` > 1) makes
larger batches, but changes what the model sees wherever it looks at the whole image: GroupNorm
statistics (TAESD's pool branches, the SD VAE) and attention; on TAEF2 at 256 px, 16 to 40 padded
pixels left losses about 10% higher than alone. So the default only groups equal padded sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Size = tuple[int, int]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Bucket:
    """Images of ``sizes`` (H, W) in one batch of ``shape``; the model needs sides divisible by ``multiple``."""

    sizes: tuple[Size, ...]
    multiple: int

    @property
    def uniform(self) -> bool:
        """All images have one size: the batch is just their stack (the objective pads it as for one image)."""
        return len(set(self.sizes)) == 1

    @property
    def shape(self) -> Size:
        if self.uniform:
            return self.sizes[0]
        height, width = max(h for h, _ in self.sizes), max(w for _, w in self.sizes)
        return round_up(height, self.multiple), round_up(width, self.multiple)

    def place(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, C, H, W) from (C, h, w) tensors: each at the top-left, zeros elsewhere (see :meth:`padder`)."""
        if self.uniform:
            return torch.stack(list(tensors))
        first = tensors[0]
        batch = first.new_zeros(len(tensors), first.shape[0], *self.shape)
        for index, tensor in enumerate(tensors):
            batch[index, :, : tensor.shape[-2], : tensor.shape[-1]] = tensor
        return batch

    def crop(self, batch: torch.Tensor, index: int) -> torch.Tensor:
        """Image ``index``'s own (C, h, w) part of a placed batch."""
        height, width = self.sizes[index]
        return batch[index, :, :height, :width]

    def region(self, device: torch.device) -> torch.Tensor | None:
        """(N, 1, H, W): 1 on each image's own pixels, 0 elsewhere; None for a uniform bucket."""
        if self.uniform:
            return None
        region = torch.zeros(len(self.sizes), 1, *self.shape, device=device)
        for index, (height, width) in enumerate(self.sizes):
            region[index, :, :height, :width] = 1
        return region

    def padder(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """``pad(batch)``: fill every image's padding from its own pixels (differentiable); the identity for
        a uniform bucket. The gather index is built and copied to ``device`` once, here, so that padding
        at every PGD step copies nothing from the host."""
        if self.uniform:
            return lambda batch: batch
        index = self._gather_index().to(device)

        def pad(batch: torch.Tensor) -> torch.Tensor:
            count, channels = batch.shape[:2]
            flat = batch.reshape(count, channels, -1).gather(2, index.expand(count, channels, -1))
            return flat.view(count, channels, *self.shape)

        return pad

    def _gather_index(self) -> torch.Tensor:
        height, width = self.shape
        rows_cols = []
        for h, w in self.sizes:
            own_h, own_w = round_up(h, self.multiple), round_up(w, self.multiple)
            # As pad_to_multiple: mirror, or repeat the edge when the image is smaller than its padding.
            mode: Literal["reflect", "edge"] = "reflect" if own_h - h < h and own_w - w < w else "edge"
            rows = np.pad(np.pad(np.arange(h), (0, own_h - h), mode=mode), (0, height - own_h), mode="reflect")
            cols = np.pad(np.pad(np.arange(w), (0, own_w - w), mode=mode), (0, width - own_w), mode="reflect")
            rows_cols.append(rows[:, None] * width + cols[None, :])
        return torch.from_numpy(np.stack(rows_cols).reshape(len(self.sizes), 1, -1))


def group_into_buckets(sizes: Sequence[Size], batch_size: int, multiple: int, max_growth: float = 1.0) -> list[list[int]]:
    """Indices of ``sizes`` in batches of at most ``batch_size``, similar sizes together.

    Images are taken in order of their padded size, then of their size (input order among equals, so
    images of one size go together); an image starts a new batch when the batch is full, or when the
    bucket's area would exceed ``max_growth`` times the padded area of any of its images (1: only
    images of one padded size share a batch).
    """
    padded = [(round_up(h, multiple), round_up(w, multiple)) for h, w in sizes]
    order = sorted(range(len(sizes)), key=lambda index: (padded[index], sizes[index]))
    batches: list[list[int]] = []
    for index in order:
        batch = batches[-1] if batches else None
        if batch is not None and len(batch) < batch_size and _fits(padded, batch + [index], max_growth):
            batch.append(index)
        else:
            batches.append([index])
    return batches


def _fits(padded: Sequence[Size], members: list[int], max_growth: float) -> bool:
    area = max(padded[i][0] for i in members) * max(padded[i][1] for i in members)
    return all(area <= max_growth * padded[i][0] * padded[i][1] for i in members)
