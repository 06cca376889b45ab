"""One decoder: a JPEG turned by its EXIF orientation tag is read upright, pixel for pixel, by every
stage that reads images (immunize, the registry's hashes and lookup, finetune's clean data), so that
the picture a user immunized is the picture the registry finds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from forwardguard.finetune.data import CleanImages
from forwardguard.images import read_image
from forwardguard.registry import Registry
from forwardguard.registry.images import pixel_sha256


def test_immunize_reads_it_upright(rotated_jpeg: tuple[bytes, np.ndarray], tmp_path: Path) -> None:
    jpeg, upright = rotated_jpeg
    path = tmp_path / "sideways.jpg"
    path.write_bytes(jpeg)
    np.testing.assert_array_equal(read_image(path).rgb, upright)


def test_the_registry_hashes_and_finds_it_upright(rotated_jpeg: tuple[bytes, np.ndarray], tmp_path: Path, record_upright) -> None:
    jpeg, upright = rotated_jpeg
    with Registry.open(tmp_path / "registry.db", create=True) as registry:
        # The upright pixels recorded as an "immunized" image (delta 0): the JPEG has exactly its pixels.
        record = record_upright(registry, upright)
        assert record.pixel_sha256 == pixel_sha256(read_image(jpeg).rgb)
        matches = registry.lookup(jpeg)
    assert [(match.pattern.id, match.kind) for match in matches] == [(record.id, "pixels")]


def test_finetune_reads_clean_data_upright(rotated_jpeg: tuple[bytes, np.ndarray], tmp_path: Path) -> None:
    import datasets

    jpeg, upright = rotated_jpeg
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "sideways.jpg").write_bytes(jpeg)
    np.testing.assert_array_equal(CleanImages(folder, 32).load(0), upright)

    saved = tmp_path / "dataset"
    rows = datasets.Dataset.from_dict(
        {"image": [{"bytes": jpeg, "path": None}]}, features=datasets.Features({"image": datasets.Image()})
    )
    rows.save_to_disk(str(saved))
    np.testing.assert_array_equal(CleanImages(saved, 32).load(0), upright)
