"""Padding to the model's multiple: mirrored, differentiable, undone by the crop."""

from __future__ import annotations

import pytest
import torch

from forwardguard.models.padding import crop_to, pad_to_multiple, run_padded


@pytest.mark.parametrize("multiple", [8, 64])
def test_pad_then_crop_restores_odd_sizes(multiple: int) -> None:
    images = torch.rand(1, 3, 37, 53)
    padded, size = pad_to_multiple(images, multiple)
    assert size == (37, 53)
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert padded.shape[-2] - 37 < multiple and padded.shape[-1] - 53 < multiple
    assert torch.equal(crop_to(padded, size), images)


def test_pad_mirrors_and_sends_gradient_to_real_pixels() -> None:
    images = torch.rand(2, 3, 37, 53, requires_grad=True)
    padded, _ = pad_to_multiple(images, 8)  # 40 x 56: 3 rows, 3 columns mirrored
    assert torch.equal(padded[:, :, 37, :53], images[:, :, 35])  # reflect: the edge row is not repeated
    padded.sum().backward()
    assert images.grad is not None
    assert images.grad.min() == 1
    assert images.grad[0, 0, 35, 0] == 2  # a mirrored row gets the gradient of its copy too
    assert images.grad.sum() == padded.numel()


def test_pad_replicates_when_the_image_is_smaller_than_the_pad() -> None:
    images = torch.rand(1, 1, 5, 3, requires_grad=True)
    padded, size = pad_to_multiple(images, 64)
    assert padded.shape == (1, 1, 64, 64)
    assert torch.equal(padded[0, 0, 63, 63], images[0, 0, 4, 2])
    padded.sum().backward()
    assert images.grad.sum() == 64 * 64
    assert torch.equal(crop_to(padded, size), images)


def test_pad_is_a_no_op_on_multiples() -> None:
    images = torch.rand(1, 3, 16, 24)
    padded, size = pad_to_multiple(images, 8)
    assert padded is images and size == (16, 24)


def test_run_padded_runs_on_the_padded_batch_and_crops_back() -> None:
    images = torch.rand(2, 3, 37, 53)
    seen = []

    def run(padded: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(padded.shape))
        return padded * 2

    result = run_padded(run, images, 8)
    assert seen == [(2, 3, 40, 56)]
    assert torch.equal(result, images * 2)
