"""Recording, reading, retiring, snapshots and models, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from registry_testdata import FINGERPRINT, OTHER_FINGERPRINT, immunize, png_bytes, random_image

from forwardguard.errors import ForwardguardError
from forwardguard.registry import Registry


def test_record_and_read_back_exactly(registry: Registry) -> None:
    image = random_image(1)
    record = registry.record_pattern(**image.record_args(tenant="acme"))

    assert record.image_sha256 == hashlib.sha256(image.png).hexdigest()
    assert (record.width, record.height, record.has_alpha) == (32, 24, False)
    assert (record.method, record.target, record.tenant, record.status) == ("noise", "gray", "acme", "active")
    assert record.params == {"eps": 16 / 255, "seed": 0}
    assert record.model_fingerprint == FINGERPRINT and record.model_spec == "tiny:0"
    assert record.created_at.tzinfo is not None
    assert registry.get_pattern(record.id) == record
    assert registry.load_blobs(record)[0] == image.png
    sample = registry.load_sample(record)
    assert sample.record == record
    np.testing.assert_array_equal(sample.delta, image.delta)
    np.testing.assert_array_equal(sample.clean, image.clean)
    np.testing.assert_array_equal(sample.immunized, image.immunized)
    np.testing.assert_array_equal(sample.clean.astype(np.int16) + sample.delta, sample.immunized)
    assert sample.alpha is None


def test_same_image_twice_is_one_record(registry: Registry) -> None:
    image = random_image(2)
    first = registry.record_pattern(**image.record_args())
    second = registry.record_pattern(**image.record_args(params={"eps": 16 / 255, "seed": 99}))
    assert second == first
    assert len(registry.list_patterns()) == 1


def test_two_images_sharing_a_delta_are_two_records(registry: Registry) -> None:
    delta = np.full((8, 8, 3), 5, dtype=np.int16)
    clean_a = np.full((8, 8, 3), 100, dtype=np.uint8)
    clean_b = np.full((8, 8, 3), 150, dtype=np.uint8)
    ids = {
        registry.record_pattern(
            image_png=png_bytes((clean + delta).astype(np.uint8)),
            delta=delta,
            method="noise",
            params={},
            target="gray",
            model_fingerprint=FINGERPRINT,
            model_spec="tiny",
        ).id
        for clean in (clean_a, clean_b)
    }
    assert len(ids) == 2
    assert len(registry.list_patterns()) == 2


def test_rgba_keeps_alpha_and_large_deltas_use_int16(registry: Registry) -> None:
    clean = np.random.default_rng(3).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    alpha = np.random.default_rng(4).integers(0, 256, size=(16, 16), dtype=np.uint8)
    image = immunize(clean, seed=3, budget=200, alpha=alpha)
    assert np.abs(image.delta).max() > 127
    record = registry.record_pattern(**image.record_args(params={"eps": 1.0}))

    assert record.has_alpha
    sample = registry.load_sample(record)
    np.testing.assert_array_equal(sample.alpha, alpha)
    np.testing.assert_array_equal(sample.delta, image.delta)
    np.testing.assert_array_equal(sample.clean, clean)
    from safetensors.numpy import load

    stored = registry.blob_root / record.delta_blob_sha256[:2] / record.delta_blob_sha256
    assert load(stored.read_bytes())["delta"].dtype == np.int16


def test_small_deltas_are_stored_as_int8(registry: Registry) -> None:
    from safetensors.numpy import load

    record = registry.record_pattern(**random_image(5).record_args())
    stored = registry.blob_root / record.delta_blob_sha256[:2] / record.delta_blob_sha256
    assert load(stored.read_bytes())["delta"].dtype == np.int8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_png": b"GIF89a not a png"}, "must be PNG bytes"),
        ({"image_png": b"\x89PNG\r\n\x1a\n broken"}, "the immunized PNG: not a readable image"),
        ({"delta": np.zeros((24, 32, 3), dtype=np.float32)}, "integer array"),
        ({"delta": np.zeros((24, 31, 3), dtype=np.int16)}, "doesn't match the image's"),
        ({"params": {"eps": 4 / 255}}, "beyond the budget"),
        ({"params": {"eps": float("nan")}}, "JSON-serialisable"),
        ({"params": {"seed": object()}}, "JSON-serialisable"),
        ({"model_fingerprint": "not-a-sha"}, "model_fingerprint must be a sha256"),
        ({"method": "Encoder Attack"}, "method must be"),
        ({"tenant": ""}, "tenant must be"),
        ({"target": ""}, "target must be a non-empty string"),
    ],
)
def test_bad_pattern_input_is_refused(registry: Registry, overrides: dict, message: str) -> None:
    with pytest.raises(ForwardguardError, match=message):
        registry.record_pattern(**random_image(6).record_args(**overrides))
    assert registry.list_patterns() == []


def test_delta_that_is_not_immunized_minus_clean_is_refused(registry: Registry) -> None:
    image = random_image(7)
    wrong = image.delta.copy()
    wrong[image.immunized == 255] = -10  # clean would be 265
    wrong[image.immunized == 0] = 10
    with pytest.raises(ForwardguardError, match="leaves 0..255"):
        registry.record_pattern(**image.record_args(delta=wrong, params={}))


def test_list_filters_and_id_prefixes(registry: Registry) -> None:
    a = registry.record_pattern(**random_image(10).record_args(tenant="acme"))
    b = registry.record_pattern(**random_image(11).record_args(method="encoder", model_fingerprint=OTHER_FINGERPRINT))
    c = registry.record_pattern(**random_image(12).record_args(tenant="acme", method="encoder"))

    assert [r.id for r in registry.list_patterns()] == [a.id, b.id, c.id]
    assert [r.id for r in registry.list_patterns(tenant="acme")] == [a.id, c.id]
    assert [r.id for r in registry.list_patterns(method="encoder")] == [b.id, c.id]
    assert [r.id for r in registry.list_patterns(model_fingerprint=OTHER_FINGERPRINT)] == [b.id]
    assert [r.id for r in registry.list_patterns(limit=1, offset=1)] == [b.id]
    assert registry.get_pattern(a.id[:10].upper()) == a
    with pytest.raises(ForwardguardError, match="no pattern 0000000000"):
        registry.get_pattern("0000000000")
    with pytest.raises(ForwardguardError, match="invalid pattern id"):
        registry.get_pattern("xyz")
    with pytest.raises(ForwardguardError, match="status must be one of"):
        registry.list_patterns(status="deleted")


def test_retire_and_snapshots(registry: Registry) -> None:
    a = registry.record_pattern(**random_image(20).record_args(tenant="acme"))
    b = registry.record_pattern(**random_image(21).record_args(method="encoder"))
    c = registry.record_pattern(**random_image(22).record_args(model_fingerprint=OTHER_FINGERPRINT))

    everything = registry.create_snapshot("all-v1")
    assert everything.pattern_count == 3 and everything.method is None
    assert [r.id for r in registry.snapshot_patterns("all-v1")] == [a.id, b.id, c.id]
    assert [r.id for r in registry.snapshot_patterns(registry.create_snapshot("acme", tenant="acme").name)] == [a.id]
    assert registry.create_snapshot("enc", method="encoder").pattern_count == 1
    assert registry.create_snapshot("other", model_fingerprint=OTHER_FINGERPRINT).pattern_count == 1

    retired = registry.retire(a.id)
    assert retired.status == "retired" and retired.retired_at is not None
    assert registry.retire(a.id) == retired  # idempotent
    assert [r.id for r in registry.list_patterns(status="active")] == [b.id, c.id]
    # A snapshot never changes; a new one skips retired patterns.
    assert [r.id for r in registry.snapshot_patterns("all-v1")] == [a.id, b.id, c.id]
    assert [r.id for r in registry.snapshot_patterns(registry.create_snapshot("all-v2").name)] == [b.id, c.id]
    assert [s.name for s in registry.list_snapshots()] == ["all-v1", "acme", "enc", "other", "all-v2"]

    with pytest.raises(ForwardguardError, match="snapshot 'all-v1' already exists"):
        registry.create_snapshot("all-v1")
    with pytest.raises(ForwardguardError, match="no active pattern matches"):
        registry.create_snapshot("empty", tenant="acme")
    with pytest.raises(ForwardguardError, match="no snapshot 'empty'"):
        registry.get_snapshot("empty")
    with pytest.raises(ForwardguardError, match="no snapshot 'missing'"):
        registry.snapshot_patterns("missing")
    with pytest.raises(ForwardguardError, match="snapshot name must be"):
        registry.create_snapshot("two words")


def test_models(registry: Registry) -> None:
    registry.record_pattern(**random_image(30).record_args())
    registry.create_snapshot("plant-1")
    base = registry.record_model(fingerprint=FINGERPRINT, spec="tiny:0", name="base")
    planted = registry.record_model(
        fingerprint=OTHER_FINGERPRINT,
        spec="out/v2",
        name="v2",
        parent_fingerprint=FINGERPRINT,
        planted_snapshot="plant-1",
    )

    assert base.parent_fingerprint is None and base.planted_snapshot is None
    assert registry.get_model(OTHER_FINGERPRINT) == planted
    assert (planted.parent_fingerprint, planted.planted_snapshot) == (FINGERPRINT, "plant-1")
    assert registry.record_model(fingerprint=FINGERPRINT, spec="tiny:0", name="base") == base
    assert [m.name for m in registry.list_models()] == ["base", "v2"]
    with pytest.raises(ForwardguardError, match="already recorded with a different name"):
        registry.record_model(fingerprint=FINGERPRINT, spec="tiny:0", name="renamed")
    with pytest.raises(ForwardguardError, match="no snapshot 'nope'"):
        registry.record_model(fingerprint="ef" * 32, spec="x", name="x", planted_snapshot="nope")
    with pytest.raises(ForwardguardError, match="no model"):
        registry.get_model("ef" * 32)


def test_stats(registry: Registry) -> None:
    registry.record_pattern(**random_image(40).record_args(tenant="acme"))
    registry.retire(registry.record_pattern(**random_image(41).record_args(method="encoder")).id)
    registry.create_snapshot("s")

    stats = registry.stats()
    assert stats["patterns"] == 2
    assert stats["by_status"] == {"active": 1, "retired": 1}
    assert stats["by_method"] == {"encoder": 1, "noise": 1}
    assert stats["by_tenant"] == {"acme": 1, "default": 1}
    assert (stats["snapshots"], stats["models"], stats["blobs"]) == (1, 0, 4)
    assert stats["blob_bytes"] > 0


def test_item_17_each_tenant_records_its_own_pattern_and_default_ids_are_unchanged(registry) -> None:
    """issue 14 item 17: one id per image and delta made a second tenant's recording return the first's."""
    import hashlib

    from registry_testdata import random_image

    from forwardguard.registry.images import delta_sha256

    image = random_image(seed=17)
    default = registry.record_pattern(**image.record_args())
    mine = registry.record_pattern(**image.record_args(tenant="mine"))
    theirs = registry.record_pattern(**image.record_args(tenant="theirs"))
    assert len({default.id, mine.id, theirs.id}) == 3
    assert (mine.tenant, theirs.tenant) == ("mine", "theirs")
    assert registry.record_pattern(**image.record_args(tenant="mine")).id == mine.id
    legacy = hashlib.sha256(bytes.fromhex(default.image_sha256) + delta_sha256(image.delta)).hexdigest()
    assert default.id == legacy  # registries made before keep recording the default tenant's patterns idempotently
