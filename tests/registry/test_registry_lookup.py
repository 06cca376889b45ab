"""Finding an image's pattern: exact bytes, exact pixels, and perceptual hash after re-encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from registry_testdata import photo, png_bytes

from forwardguard.errors import ForwardguardError
from forwardguard.registry import PHASH_MAX_DISTANCE, Registry

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture
def recorded(registry: Registry) -> dict[str, tuple]:
    images = {name: photo(name, seed=i) for i, name in enumerate(PHOTOS)}
    return {
        name: (image, registry.record_pattern(**image.record_args(tenant=f"t{i % 2}")))
        for i, (name, image) in enumerate(images.items())
    }


def _jpeg(pixels: np.ndarray, quality: int = 75) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _half(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.resize((image.width // 2, image.height // 2), Image.BICUBIC).save(buffer, "PNG")
        return buffer.getvalue()


def test_exact_bytes_then_pixels(registry: Registry, recorded: dict) -> None:
    image, record = recorded["astronaut"]
    [best] = [m for m in registry.lookup(image.png) if m.pattern.id == record.id]
    assert (best.kind, best.distance) == ("bytes", 0)
    assert registry.lookup(image.png)[0].pattern.id == record.id

    resaved = io.BytesIO()
    Image.open(io.BytesIO(image.png)).save(resaved, "PNG", compress_level=0)
    assert resaved.getvalue() != image.png
    match = registry.lookup(resaved.getvalue())[0]
    assert (match.pattern.id, match.kind, match.distance) == (record.id, "pixels", 0)
    assert registry.lookup(image.immunized)[0].kind == "pixels"


@pytest.mark.parametrize("name", PHOTOS)
def test_perceptual_after_jpeg_and_resize(registry: Registry, recorded: dict, name: str) -> None:
    image, record = recorded[name]
    for variant in (
        _jpeg(image.immunized),
        _half(image.png),
        _jpeg(np.asarray(Image.open(io.BytesIO(_half(image.png))))),
    ):
        matches = registry.lookup(variant)
        assert matches, f"{name}: no match"
        assert matches[0].pattern.id == record.id
        assert matches[0].kind == "perceptual"
        assert matches[0].distance <= PHASH_MAX_DISTANCE
        assert [m.distance for m in matches] == sorted(m.distance for m in matches)
        assert {m.pattern.id for m in matches} == {record.id}, "other photographs must not match"


def test_exact_lookups_read_the_sha256_indexes_only(registry: Registry, recorded: dict, monkeypatch) -> None:
    """An exact match (bytes or pixels) answers without the perceptual search: one SELECT, no hash,
    and a recorded file without decoding it; on PostgreSQL outside a transaction (no BEGIN and
    COMMIT round trips)."""
    from forwardguard.registry import lookup as lookup_module

    image, record = recorded["astronaut"]
    again = registry.record_pattern(**photo("astronaut", seed=99).record_args(tenant="t0"))  # the same picture
    statements: list[str] = []
    commits: list[sa.Connection] = []

    def log(_conn, _cursor, statement: str, *_args) -> None:
        statements.append(statement)

    def committed(connection: sa.Connection) -> None:
        commits.append(connection)

    def fail(*_args, **_kwargs) -> None:
        raise AssertionError("an exact lookup ran the perceptual search or decoded a recorded file")

    with monkeypatch.context() as patched:
        patched.setattr(lookup_module, "read_image", fail)
        patched.setattr(lookup_module, "perceptual_hash", fail)
        patched.setattr(lookup_module, "_perceptually_close", fail)
        sa.event.listen(registry._storage.engine, "before_cursor_execute", log)
        sa.event.listen(registry._storage.engine, "commit", committed)
        try:
            by_bytes = registry.lookup(image.png)
            by_pixels = registry.lookup(image.immunized)
        finally:
            sa.event.remove(registry._storage.engine, "before_cursor_execute", log)
            sa.event.remove(registry._storage.engine, "commit", committed)
    assert [(m.pattern.id, m.kind) for m in by_bytes] == [(record.id, "bytes")]
    assert [(m.pattern.id, m.kind) for m in by_pixels] == [(record.id, "pixels")]
    selects = [statement for statement in statements if statement.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2, selects  # one query of both sha256 indexes per lookup
    assert registry.location.is_sqlite or not commits
    # Asked for, the perceptual search also finds the other immunization of the same picture.
    assert [(m.pattern.id, m.kind) for m in registry.lookup(image.png, perceptual=True)] == [
        (record.id, "bytes"),
        (again.id, "perceptual"),
    ]


def test_a_file_finds_every_pattern_of_its_pixels(registry: Registry, recorded: dict) -> None:
    """Found by its bytes, a file also finds the patterns recorded from other files of the same pixels."""
    image, record = recorded["astronaut"]  # tenant t0
    resaved = io.BytesIO()
    Image.open(io.BytesIO(image.png)).save(resaved, "PNG", compress_level=0)
    other_file = registry.record_pattern(**image.record_args(tenant="t1", image_png=resaved.getvalue()))
    assert [(m.pattern.id, m.kind) for m in registry.lookup(image.png)] == [(record.id, "bytes"), (other_file.id, "pixels")]
    assert [(m.pattern.id, m.kind) for m in registry.lookup(image.png, tenant="t1")] == [(other_file.id, "pixels")]
    assert [(m.pattern.id, m.kind) for m in registry.lookup(resaved.getvalue(), tenant="t0")] == [(record.id, "pixels")]


def test_unrelated_image_and_tenants(registry: Registry, recorded: dict) -> None:
    unrelated = np.asarray(photo("retina").immunized)
    assert registry.lookup(png_bytes(unrelated)) == []
    image, record = recorded["astronaut"]  # tenant t0
    assert registry.lookup(image.png, tenant="t1") == []
    assert registry.lookup(image.png, tenant="t0")[0].pattern.id == record.id


def test_retired_patterns_are_still_found(registry: Registry, recorded: dict) -> None:
    image, record = recorded["coffee"]
    registry.retire(record.id)
    assert registry.lookup(image.png)[0].pattern.status == "retired"


def test_bad_lookup_input(registry: Registry) -> None:
    with pytest.raises(ForwardguardError, match="not a readable image"):
        registry.lookup(b"plain text")
    with pytest.raises(ForwardguardError, match="uint8 RGB"):
        registry.lookup(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ForwardguardError, match="max_distance"):
        registry.lookup(png_bytes(np.zeros((4, 4, 3), np.uint8)), max_distance=65)


@pytest.mark.parametrize(
    ("recorded_shape", "looked_up"),
    [
        ((64, 64), lambda: np.full((64, 64, 3), (200, 30, 30), np.uint8)),  # another flat colour
        ((64, 64), lambda: np.full((48, 80, 3), 128, np.uint8)),
        ((1, 400), lambda: np.random.default_rng(1).integers(0, 256, (1, 400, 3), dtype=np.uint8)),  # 1 pixel tall
    ],
    ids=["flat colours", "flat of another size", "one pixel tall"],
)
def test_item_13_featureless_images_do_not_match_each_other(registry: Registry, recorded_shape, looked_up) -> None:
    """issue 14 item 13: flat colours and 1-pixel-tall images all matched each other perceptually."""
    from registry_testdata import Immunized, immunize

    if recorded_shape == (1, 400):
        pattern = immunize(np.random.default_rng(0).integers(0, 256, (*recorded_shape, 3), dtype=np.uint8), seed=0)
    else:  # a flat colour shifted by a flat delta: as flat as the picture
        clean, immunized = np.full((*recorded_shape, 3), 90, np.uint8), np.full((*recorded_shape, 3), 98, np.uint8)
        delta = immunized.astype(np.int16) - clean
        pattern = Immunized(clean=clean, immunized=immunized, png=png_bytes(immunized), delta=delta)
    record = registry.record_pattern(**pattern.record_args())
    assert registry.lookup(png_bytes(looked_up())) == []
    (exact,) = registry.lookup(pattern.png)  # its own bytes still match, exactly
    assert exact.pattern.id == record.id and exact.kind == "bytes"
