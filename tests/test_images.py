"""Image I/O: every input mode becomes RGB (+ alpha), sizes are kept, bad input fails in one line."""

from __future__ import annotations

import io
import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from skimage import data as skdata

from forwardguard.errors import ForwardguardError
from forwardguard.images import (
    DEFAULT_MAX_PIXELS,
    LoadedImage,
    encode_png,
    iter_image_files,
    read_image,
    read_mask,
    to_tensor,
    to_uint8,
    write_bytes_atomic,
)

RNG = np.random.default_rng(0)


def _save(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand, for what Pillow cannot write (48-bit RGB, absurd sizes)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b"")
    )


def _chunk_types(png: bytes) -> list[bytes]:
    types, offset = [], 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        types.append(png[offset + 4 : offset + 8])
        offset += 12 + length
    return types


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut()[::4, ::4])  # 128 x 128 RGB


# --- reading: modes ----------------------------------------------------------------------------


def test_rgb_png_is_read_exactly(astronaut: np.ndarray) -> None:
    loaded = read_image(_save(Image.fromarray(astronaut), "PNG"))
    assert isinstance(loaded, LoadedImage)
    np.testing.assert_array_equal(loaded.rgb, astronaut)
    assert loaded.alpha is None and loaded.path is None
    assert not loaded.rgb.flags.writeable
    assert (loaded.width, loaded.height) == (128, 128)


def test_gray_l_becomes_three_equal_channels() -> None:
    gray = RNG.integers(0, 256, (7, 11), dtype=np.uint8)
    loaded = read_image(_save(Image.fromarray(gray), "PNG"))
    assert loaded.rgb.shape == (7, 11, 3) and loaded.alpha is None
    for channel in range(3):
        np.testing.assert_array_equal(loaded.rgb[:, :, channel], gray)


def test_gray_with_alpha_la_keeps_alpha() -> None:
    gray = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    loaded = read_image(_save(Image.fromarray(np.dstack([gray, alpha])), "PNG"))
    np.testing.assert_array_equal(loaded.rgb, np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(loaded.alpha, alpha)


def test_palette_without_transparency_is_rgb() -> None:
    rgb = RNG.integers(0, 256, (9, 8, 3), dtype=np.uint8)
    palette_image = Image.fromarray(rgb).quantize(colors=16)
    assert palette_image.mode == "P"
    loaded = read_image(_save(palette_image, "PNG"))
    np.testing.assert_array_equal(loaded.rgb, np.asarray(palette_image.convert("RGB")))
    assert loaded.alpha is None


def test_palette_with_transparency_has_alpha() -> None:
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    palette_image = Image.fromarray(indices, mode="L").convert("P")
    palette_image.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    loaded = read_image(_save(palette_image, "PNG", transparency=1))
    np.testing.assert_array_equal(loaded.alpha, np.where(indices == 1, 0, 255))
    np.testing.assert_array_equal(loaded.rgb[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(loaded.rgb[0, 1], [40, 50, 60])  # colour kept under transparency


def test_rgba_colour_is_unchanged_under_alpha() -> None:
    rgba = RNG.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # fully transparent pixel: its colour must still be what the file holds
    loaded = read_image(_save(Image.fromarray(rgba), "PNG"))
    np.testing.assert_array_equal(loaded.rgb, rgba[:, :, :3])
    np.testing.assert_array_equal(loaded.alpha, rgba[:, :, 3])
    assert not loaded.rgb.flags.writeable and not loaded.alpha.flags.writeable


def test_16_bit_gray_keeps_the_high_byte_instead_of_clipping() -> None:
    values = np.array([[0, 255, 256, 0x1234, 0x8000, 0xFFFF]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    loaded = read_image(_save(image, "PNG"))
    np.testing.assert_array_equal(loaded.rgb[:, :, 0], [[0, 0, 1, 0x12, 0x80, 0xFF]])
    np.testing.assert_array_equal(loaded.rgb[:, :, 2], loaded.rgb[:, :, 0])
    assert loaded.alpha is None


def test_16_bit_gray_transparency_becomes_alpha() -> None:
    values = np.array([[0x1234, 0x4321, 0x1234]], dtype=np.uint16)
    loaded = read_image(_save(Image.fromarray(values), "PNG", transparency=0x1234))
    np.testing.assert_array_equal(loaded.alpha, [[0, 255, 0]])


def test_48_bit_rgb_png_keeps_the_high_byte() -> None:
    # Pillow 13 opens 16-bit-per-channel RGB as 8-bit RGB; check that it is the high byte.
    pixel = np.array([0x1234, 0xFF00, 0x00FF], dtype=">u2")
    row = b"\x00" + np.tile(pixel, 4).tobytes()
    loaded = read_image(_raw_png(4, 3, 16, 2, row * 3))
    assert loaded.rgb.shape == (3, 4, 3)
    np.testing.assert_array_equal(loaded.rgb[1, 2], [0x12, 0xFF, 0x00])


def test_cmyk_jpeg_becomes_rgb() -> None:
    blocks = np.kron(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((8, 8, 1), dtype=np.uint8))
    cmyk = Image.fromarray(blocks).convert("CMYK")
    loaded = read_image(_save(cmyk, "JPEG", quality=95))
    assert loaded.rgb.shape == (32, 32, 3) and loaded.alpha is None
    assert np.abs(loaded.rgb.astype(int) - blocks).mean() < 4


def test_rgb_icc_profile_is_kept_and_others_dropped(astronaut: np.ndarray) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert read_image(_save(Image.fromarray(astronaut), "JPEG", icc_profile=srgb)).icc_profile == srgb
    cmyk_profile = bytes(16) + b"CMYK" + bytes(108)
    cmyk = Image.fromarray(astronaut).convert("CMYK")
    assert read_image(_save(cmyk, "JPEG", icc_profile=cmyk_profile)).icc_profile is None


# --- reading: orientation, formats ---------------------------------------------------------------


def _exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def test_exif_orientation_6_is_applied_to_a_jpeg() -> None:
    wide = Image.fromarray(RNG.integers(0, 256, (20, 40, 3), dtype=np.uint8))  # 40 wide, 20 high
    loaded = read_image(_save(wide, "JPEG", exif=_exif_orientation(6)))
    assert (loaded.width, loaded.height) == (20, 40)


def test_exif_orientation_is_applied_pixel_exactly_to_a_png(astronaut: np.ndarray) -> None:
    tall = astronaut[:, :100]
    loaded = read_image(_save(Image.fromarray(tall), "PNG", exif=_exif_orientation(6)))
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise to be upright.
    np.testing.assert_array_equal(loaded.rgb, np.rot90(tall, k=-1))


def test_webp_lossless_round_trip_is_exact(astronaut: np.ndarray) -> None:
    loaded = read_image(_save(Image.fromarray(astronaut), "WEBP", lossless=True))
    np.testing.assert_array_equal(loaded.rgb, astronaut)


def test_webp_with_alpha(astronaut: np.ndarray) -> None:
    alpha = RNG.integers(0, 256, astronaut.shape[:2], dtype=np.uint8)
    loaded = read_image(_save(Image.fromarray(np.dstack([astronaut, alpha])), "WEBP", lossless=True, exact=True))
    np.testing.assert_array_equal(loaded.alpha, alpha)
    np.testing.assert_array_equal(loaded.rgb, astronaut)


def test_jpeg_round_trip_keeps_odd_size(astronaut: np.ndarray) -> None:
    odd = astronaut[:37, :53]
    loaded = read_image(_save(Image.fromarray(odd), "JPEG", quality=95))
    assert loaded.rgb.shape == (37, 53, 3)
    assert np.abs(loaded.rgb.astype(int) - odd).mean() < 5


def test_read_from_path_records_it(tmp_path: Path, astronaut: np.ndarray) -> None:
    path = tmp_path / "photo.JPG"
    Image.fromarray(astronaut).save(path, format="PNG")  # the extension does not decide, the content does
    loaded = read_image(path)
    assert loaded.path == path
    np.testing.assert_array_equal(loaded.rgb, astronaut)


# --- reading: refusals ---------------------------------------------------------------------------


def test_pixel_limit_refuses_a_huge_header_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_raw_png(100_000, 100_000, 8, 2, b"\x00" * 64))
    started = time.perf_counter()
    with pytest.raises(ForwardguardError) as caught:
        read_image(path)
    assert time.perf_counter() - started < 1
    assert str(caught.value) == (
        f"{path}: image is 100000 x 100000 = 10000000000 pixels, over the limit of {DEFAULT_MAX_PIXELS} (raise --max-pixels)"
    )


def test_the_pixel_limit_is_ours_not_pillows(monkeypatch: pytest.MonkeyPatch, astronaut: np.ndarray) -> None:
    png = _save(Image.fromarray(astronaut), "PNG")  # 128 x 128 = 16384 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's own guard would refuse (error over 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(png).width == 128
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # and ours holds with Pillow's switched off
    with pytest.raises(ForwardguardError, match="16384 pixels, over the limit of 16383"):
        read_image(png, max_pixels=16383, name="a.png")
    assert read_image(png, max_pixels=16384).height == 128


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP"])
def test_truncated_file_is_refused_in_one_line(tmp_path: Path, format: str) -> None:
    noisy = Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    whole = _save(noisy, format)
    path = tmp_path / f"cut.{format.lower()}"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ForwardguardError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a readable image (") and "\n" not in message


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is not an image, only text\n", "not a readable image (not a PNG, JPEG or WebP file)"),
        (b"", "not a readable image (empty file)"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "not a readable image ("),
    ],
)
def test_non_images_are_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(content)
    with pytest.raises(ForwardguardError) as caught:
        read_image(path)
    assert str(caught.value).startswith(f"{path}: {reason}")


def test_other_formats_are_named(astronaut: np.ndarray) -> None:
    gif = _save(Image.fromarray(astronaut).convert("P"), "GIF")
    with pytest.raises(ForwardguardError, match=r"^upload: unsupported format GIF \(use PNG, JPEG or WebP\)$"):
        read_image(gif, name="upload")


def test_missing_file_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ForwardguardError, match="nope.png: no such file$"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ForwardguardError, match="is a folder, not an image file$"):
        read_image(tmp_path)


# --- masks ---------------------------------------------------------------------------------------


def test_mask_is_thresholded_at_128_white_is_edit(tmp_path: Path) -> None:
    values = np.array([[0, 127, 128, 255], [255, 128, 127, 0]], dtype=np.uint8)
    path = tmp_path / "mask.png"
    Image.fromarray(values).save(path)
    mask = read_mask(path, size=(4, 2))
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [1, 1, 0, 0]])


def test_colour_mask_uses_luma(tmp_path: Path) -> None:
    colours = np.array([[[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 0]]], dtype=np.uint8)
    path = tmp_path / "mask.jpg"
    Image.fromarray(colours).save(path, format="PNG")
    np.testing.assert_array_equal(read_mask(path, size=(4, 1)), [[1, 0, 1, 0]])  # luma 255, 76, 150, 0


def test_mask_of_the_wrong_size_names_file_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    Image.new("L", (30, 20), 255).save(path)
    with pytest.raises(ForwardguardError, match=r"mask.png: mask is 30 x 20, but the image is 20 x 30$"):
        read_mask(path, size=(20, 30))


# --- tensors and padding -------------------------------------------------------------------------


def test_tensor_round_trip_is_exact(astronaut: np.ndarray) -> None:
    tensor = to_tensor(astronaut)
    assert tensor.shape == (3, 128, 128) and tensor.dtype == torch.float32
    assert 0 <= tensor.min() and tensor.max() <= 1
    np.testing.assert_array_equal(to_uint8(tensor), astronaut)
    np.testing.assert_array_equal(to_uint8(torch.stack([tensor, tensor]))[1], astronaut)


def test_to_uint8_rounds_to_nearest_and_clamps() -> None:
    values = torch.tensor([-0.1, 0.4 / 255, 0.6 / 255, 254.6 / 255, 1.2]).reshape(1, 1, 5).expand(3, 1, 5)
    np.testing.assert_array_equal(to_uint8(values)[0, :, 0], [0, 0, 1, 255, 255])


# --- writing -------------------------------------------------------------------------------------


def test_encode_png_is_deterministic_and_has_no_metadata(astronaut: np.ndarray) -> None:
    first = encode_png(astronaut)
    assert first == encode_png(astronaut.copy())
    assert _chunk_types(first) == [b"IHDR", b"IDAT", b"IEND"]
    np.testing.assert_array_equal(read_image(first).rgb, astronaut)


def test_encode_png_keeps_alpha_byte_exact(astronaut: np.ndarray) -> None:
    alpha = RNG.integers(0, 256, astronaut.shape[:2], dtype=np.uint8)
    alpha[:10] = 0
    loaded = read_image(encode_png(astronaut, alpha))
    np.testing.assert_array_equal(loaded.alpha, alpha)
    np.testing.assert_array_equal(loaded.rgb, astronaut)  # colour under alpha 0 kept too


def test_icc_profile_survives_read_encode_read(astronaut: np.ndarray) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    loaded = read_image(_save(Image.fromarray(astronaut), "PNG", icc_profile=srgb))
    png = encode_png(loaded.rgb, loaded.alpha, icc_profile=loaded.icc_profile)
    assert read_image(png).icc_profile == srgb


def test_write_refuses_to_overwrite_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "out" / "image.png"
    write_bytes_atomic(target, b"first", overwrite=False)  # creates the folder
    with pytest.raises(ForwardguardError, match=r"image.png: already exists \(pass --overwrite to replace it\)$"):
        write_bytes_atomic(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert os.listdir(target.parent) == ["image.png"]
    write_bytes_atomic(target, b"third", overwrite=True)
    assert target.read_bytes() == b"third"
    assert os.listdir(target.parent) == ["image.png"]


def test_write_without_hard_links_still_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(source: Path, target: Path) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "image.png"
    write_bytes_atomic(target, b"first", overwrite=False)
    with pytest.raises(ForwardguardError, match="already exists"):
        write_bytes_atomic(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["image.png"]


def test_write_failure_is_one_line_and_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"")
    with pytest.raises(ForwardguardError, match=r"cannot write \("):
        write_bytes_atomic(tmp_path / "taken" / "image.png", b"data", overwrite=True)  # parent is a file
    target = tmp_path / "folder.png"
    target.mkdir()
    with pytest.raises(ForwardguardError, match=r"folder.png: cannot write \("):
        write_bytes_atomic(target, b"data", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["folder.png", "taken"]


# --- finding files -------------------------------------------------------------------------------


def test_iter_image_files_walks_folders_sorted_and_keeps_named_files(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for name in ["b.PNG", "a.jpeg", "notes.txt", "nested/c.webp", "nested/d.JPG", "e.gif"]:
        (folder / name).write_bytes(b"")
    odd = tmp_path / "scan.bin"
    odd.write_bytes(b"")
    found = iter_image_files([odd, folder, folder / "a.jpeg"])
    assert found == [
        odd,
        folder / "a.jpeg",
        folder / "b.PNG",
        folder / "nested" / "c.webp",
        folder / "nested" / "d.JPG",
    ]


def test_iter_image_files_names_a_missing_input(tmp_path: Path) -> None:
    with pytest.raises(ForwardguardError, match="missing.png: no such file or folder$"):
        iter_image_files([tmp_path / "missing.png"])
