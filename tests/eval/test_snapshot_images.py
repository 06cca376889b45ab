"""An eval reads a snapshot's patterns one image at a time, as a cell iterates them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from forwardguard.errors import ForwardguardError
from forwardguard.eval.snapshot_images import SnapshotImages


class CountingRegistry:
    def __init__(self) -> None:
        self.reads: list[str] = []

    def load_sample(self, record: SimpleNamespace) -> SimpleNamespace:
        self.reads.append(record.id)
        pixels = np.zeros((8, 8, 3), np.uint8)
        return SimpleNamespace(immunized=pixels, clean=pixels)


def test_images_are_read_when_reached_and_the_eps_from_the_records():
    registry = CountingRegistry()
    records = [SimpleNamespace(id=f"p{k}", params={"eps": k / 255}) for k in (4, 8, 16)]
    images = SnapshotImages(registry, "s", records)  # type: ignore[arg-type]
    assert len(images) == 3 and images.eps == 16 / 255 and registry.reads == []
    iterator = iter(images)
    assert next(iterator).pattern_id == "p4" and registry.reads == ["p4"]
    assert [image.eps for image in iterator] == [8 / 255, 16 / 255]
    assert [image.pattern_id for image in images] == ["p4", "p8", "p16"]  # a second cell reads them again
    assert registry.reads == ["p4", "p8", "p16", "p4", "p8", "p16"]


def test_an_empty_snapshot_is_refused():
    with pytest.raises(ForwardguardError, match="snapshot 's' holds no patterns"):
        SnapshotImages(CountingRegistry(), "s", [])  # type: ignore[arg-type]
