"""Export: a snapshot as a Hugging Face datasets dataset that the finetune stage can load."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from registry_testdata import immunize, random_image

from forwardguard.errors import ForwardguardError
from forwardguard.registry import Registry, decode_delta


def test_export_round_trips_every_pattern(registry: Registry, registry_location: str, tmp_path: Path) -> None:
    import datasets

    images = [random_image(i) for i in range(5)]
    wide = immunize(np.full((8, 8, 3), 128, dtype=np.uint8), seed=9, budget=120)
    records = [registry.record_pattern(**image.record_args()) for image in images]
    records.append(
        registry.record_pattern(**wide.record_args(method="encoder", params={"eps": 0.5}, target="sha256:" + "0" * 64))
    )
    registry.retire(records[0].id)
    registry.create_snapshot("plant-1")  # the retired pattern is not in it
    registry.record_pattern(**random_image(99).record_args())  # nor one recorded later

    report = registry.export("plant-1", tmp_path / "plant-1")
    assert (report.rows, report.path) == (5, tmp_path / "plant-1")
    dataset = datasets.load_from_disk(str(tmp_path / "plant-1"))
    assert len(dataset) == 5
    assert set(dataset.column_names) >= {
        "pattern_id",
        "image",
        "delta",
        "target",
        "model_fingerprint",
        "method",
        "tenant",
    }
    by_id = {record.id: (record, image) for record, image in zip(records, [*images, wide], strict=True)}
    for row in dataset.to_iterable_dataset():
        record, image = by_id[row["pattern_id"]]
        immunized = np.asarray(row["image"].convert("RGB"))
        delta = decode_delta(row["delta"])
        np.testing.assert_array_equal(immunized, image.immunized)
        np.testing.assert_array_equal((immunized.astype(np.int16) - delta).astype(np.uint8), image.clean)
        assert (row["target"], row["model_fingerprint"], row["method"]) == (
            record.target,
            record.model_fingerprint,
            record.method,
        )
        assert json.loads(row["params"]) == record.params
        assert (row["width"], row["height"], row["tenant"]) == (record.width, record.height, "default")
    assert sorted(dataset["pattern_id"]) == sorted(r.id for r in records[1:])
    # Nothing of the registry's URL (its password, for PostgreSQL) is written into the dataset.
    secret = registry_location.split("@")[0]
    for path in (tmp_path / "plant-1").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export-cache")] == []


def test_export_refuses_a_used_folder_and_unknown_snapshot(registry: Registry, tmp_path: Path) -> None:
    registry.record_pattern(**random_image(1).record_args())
    registry.create_snapshot("s")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(ForwardguardError, match="already exists and is not empty"):
        registry.export("s", tmp_path / "used")
    with pytest.raises(ForwardguardError, match="no snapshot 'nope'"):
        registry.export("nope", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    # The image column holds the stored PNG.
    registry.export("s", tmp_path / "second")
    import datasets

    row = datasets.load_from_disk(str(tmp_path / "second")).cast_column("image", datasets.Image(decode=False))[0]
    assert Image.open(io.BytesIO(row["image"]["bytes"])).format == "PNG"
