"""Image input and output for every stage: read, convert, write 8-bit PNG.

``read_image`` is the project's one decoder of image files and uploads (immunize, registry lookup,
serve, eval, finetune data), so that an image is seen the same way everywhere: PNG, JPEG and WebP of
any size and colour mode become 8-bit RGB plus the input's alpha channel, if any, untouched; EXIF
orientation is applied (a rotated camera JPEG is immunized, hashed and looked up upright). The pixel
count is checked from the header, before anything is decoded. Writing produces deterministic PNG bytes
and never leaves a partial file or replaces an existing one unless asked.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

from forwardguard.errors import ForwardguardError

if TYPE_CHECKING:  # torch is imported by the two tensor helpers only: reading and hashing images stay light
    import torch

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest width x height read by default (8000 x 8000): its 8-bit RGB pixels alone take 192 MB."""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})

# Pillow's names; Pillow's JPEG opener also returns "MPO" for a camera's multi-picture JPEG.
_FORMATS = ("PNG", "JPEG", "WEBP")

# What Pillow raises on a truncated or corrupt file, at open or at decode.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """An image as the model sees it, plus what is needed to write it back faithfully.

    ``rgb`` is (H, W, 3) uint8, upright (EXIF applied); ``alpha`` is (H, W) uint8 when the input has
    transparency; both are read-only. ``icc_profile`` is the input's RGB colour profile, kept so that the written PNG
    displays like the input (a wide-gamut photo would look washed out without it).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    path: Path | None
    icc_profile: bytes | None = None

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def read_image(source: Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> LoadedImage:
    """Read a PNG, JPEG or WebP file (or its bytes) as 8-bit RGB and optional alpha.

    Grayscale, palette, CMYK and 16-bit images become RGB (16-bit values keep their high byte, as
    Pillow does for 16-bit RGB); RGBA keeps its colour channels as they are and returns the alpha
    channel apart. ``name`` labels error messages (default: the path).

    Raises ForwardguardError when the file is missing, is over ``max_pixels`` (checked from the
    header, before decoding), is not a PNG, JPEG or WebP, or is truncated or corrupt.
    """
    path = None if isinstance(source, (bytes, bytearray)) else Path(source)
    label = name or (str(path) if path is not None else "image")
    with _open_source(source, label) as fp:
        try:
            image = _open_header(fp, label)
            _check_pixels(image.size, max_pixels, label)
            icc_profile = image.info.get("icc_profile")
            ImageOps.exif_transpose(image, in_place=True)  # decodes the pixels
            rgb, alpha = _to_rgb_and_alpha(image)
        except _DECODE_ERRORS as error:
            raise ForwardguardError(f"{label}: not a readable image ({_one_line(error)})") from error
    for array in (rgb, alpha):
        if array is not None:
            array.flags.writeable = False  # the image is frozen, its pixels too
    if not (isinstance(icc_profile, bytes) and icc_profile[16:20] == b"RGB "):
        icc_profile = None  # a gray or CMYK profile does not describe the RGB pixels we write
    return LoadedImage(rgb=rgb, alpha=alpha, path=path, icc_profile=icc_profile)


def read_mask(
    source: Path | bytes, *, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> np.ndarray:
    """Read an inpainting mask: (H, W) float32, 1 where the adversary edits (white), 0 elsewhere.

    ``size`` is the image's (width, height). The mask is read like an image (EXIF applied), turned
    to luma as Pillow's "L" mode does, and thresholded at 128; its alpha channel is ignored.
    """
    path = None if isinstance(source, (bytes, bytearray)) else Path(source)
    label = name or (str(path) if path is not None else "mask")
    mask = read_image(source, max_pixels=max_pixels, name=label)
    if (mask.width, mask.height) != tuple(size):
        raise ForwardguardError(f"{label}: mask is {mask.width} x {mask.height}, but the image is {size[0]} x {size[1]}")
    luma = np.asarray(Image.fromarray(mask.rgb).convert("L"))
    return (luma >= 128).astype(np.float32)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    import torch

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    return torch.tensor(rgb, dtype=torch.float32).permute(2, 0, 1).contiguous() / 255


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (N, 3, H, W) in [0, 1] -> (H, W, 3) or (N, H, W, 3) uint8, rounded to nearest."""
    import torch

    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (N, 3, H, W), got {tuple(images.shape)}")
    values = torch.round(images.detach() * 255).clamp(0, 255).to(torch.uint8).cpu()
    return values.movedim(-3, -1).contiguous().numpy()


def encode_png(rgb: np.ndarray, alpha: np.ndarray | None = None, *, icc_profile: bytes | None = None) -> bytes:
    """8-bit PNG bytes of ``rgb`` (H, W, 3), RGBA when ``alpha`` (H, W) is given.

    The same input always gives the same bytes: no timestamps or other metadata are written, only
    the colour profile when one is given.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    if alpha is not None and (alpha.dtype != np.uint8 or alpha.shape != rgb.shape[:2]):
        raise ValueError(f"alpha must be {rgb.shape[:2]} uint8, got {alpha.shape} {alpha.dtype}")
    pixels = rgb if alpha is None else np.dstack([rgb, alpha])
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", icc_profile=icc_profile)
    return buffer.getvalue()


def write_bytes_atomic(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` whole or not at all, creating missing parent folders.

    The bytes go to a temporary file in the same folder, are fsynced, and are then moved into place.
    Without ``overwrite`` the move is a hard link, which fails if ``path`` exists even when another
    process creates it meanwhile; where hard links are not supported it falls back to an existence
    check just before an atomic rename.

    Raises ForwardguardError when ``path`` exists and ``overwrite`` is False, or cannot be written.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise ForwardguardError(f"{path}: cannot write ({error.strerror or error})") from error
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            _move_no_overwrite(temporary, path)
    except OSError as error:
        raise ForwardguardError(f"{path}: cannot write ({error.strerror or error})") from error
    finally:
        temporary.unlink(missing_ok=True)


def iter_image_files(inputs: list[Path]) -> list[Path]:
    """The image files named by ``inputs``, in their order, each once.

    A file is kept whatever its extension (reading decides); a folder contributes every file below
    it with a .png, .jpg, .jpeg or .webp extension (any case), sorted by path. Symlinked folders are
    not followed. Raises ForwardguardError naming an input that does not exist.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_file():
            found.append(item)
        elif item.is_dir():
            walked = (Path(root, name) for root, _, names in os.walk(item) for name in names)
            found.extend(sorted(p for p in walked if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            raise ForwardguardError(f"{item}: no such file or folder")
    return list(dict.fromkeys(found))


@contextmanager
def _open_source(source: Path | bytes, label: str) -> Iterator[BinaryIO]:
    if isinstance(source, (bytes, bytearray)):
        yield io.BytesIO(source)
        return
    try:
        file = open(source, "rb")
    except FileNotFoundError:
        raise ForwardguardError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ForwardguardError(f"{label}: is a folder, not an image file") from None
    except OSError as error:
        raise ForwardguardError(f"{label}: cannot read ({error.strerror or error})") from error
    with file:
        yield file


def image_size(data: bytes, label: str) -> tuple[int, int]:
    """(width, height) of an encoded PNG, JPEG or WebP from its header, nothing decoded.

    Raises ForwardguardError for another format, and what Pillow raises for a corrupt header.
    """
    return _open_header(io.BytesIO(data), label).size


def image_mode(data: bytes, label: str) -> str:
    """Pillow's mode ("RGB", "RGBA", "I;16", ...) of an encoded PNG, JPEG or WebP from its header, nothing decoded.

    Raises as ``image_size`` does.
    """
    return _open_header(io.BytesIO(data), label).mode


def _open_header(fp: BinaryIO, label: str) -> ImageFile.ImageFile:
    """Identify the format and read the header only, as ``Image.open`` does, but with our limit.

    ``Image.open`` also applies Pillow's own decompression-bomb check, which reads the process-wide
    ``Image.MAX_IMAGE_PIXELS``: it would warn or refuse regardless of ``max_pixels``, and changing it
    per call would race with other threads. Calling the format's opener directly leaves
    ``read_image``'s limit as the only one, and never parses a format we do not accept.
    """
    Image.init()
    prefix = fp.read(16)
    if not prefix:
        raise ForwardguardError(f"{label}: not a readable image (empty file)")
    for format_name in _FORMATS:
        factory, accept = Image.OPEN[format_name]
        if accept is not None and accept(prefix):
            fp.seek(0)
            return factory(fp, "")
    other = _recognised_format(prefix)
    if other is not None:
        raise ForwardguardError(f"{label}: unsupported format {other} (use PNG, JPEG or WebP)")
    raise ForwardguardError(f"{label}: not a readable image (not a PNG, JPEG or WebP file)")


def _recognised_format(prefix: bytes) -> str | None:
    """The name of another format Pillow knows by its signature, to say what the file is."""
    for format_name, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix) is True:
                return format_name
        except (IndexError, TypeError, ValueError, struct.error):
            continue
    return None


def _check_pixels(size: tuple[int, int], max_pixels: int, label: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ForwardguardError(
            f"{label}: image is {width} x {height} = {width * height} pixels, over the limit of {max_pixels} (raise --max-pixels)"
        )


def _to_rgb_and_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    if image.mode.startswith("I;16"):
        # 16-bit grayscale PNG: Pillow's convert() would clip values over 255 to white.
        values = np.asarray(image).astype(np.uint16)
        gray = (values >> 8).astype(np.uint8)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
        transparent = image.info.get("transparency")
        alpha = None if transparent is None else np.where(values == transparent, 0, 255).astype(np.uint8)
        return rgb, alpha
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    if not has_alpha:
        return pixels, None
    return np.ascontiguousarray(pixels[:, :, :3]), np.ascontiguousarray(pixels[:, :, 3])


def _move_no_overwrite(temporary: Path, path: Path) -> None:
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise ForwardguardError(f"{path}: already exists (pass --overwrite to replace it)") from None
    except OSError:
        # No hard links on this file system: check, then rename (a concurrent writer could slip in).
        if path.exists():
            raise ForwardguardError(f"{path}: already exists (pass --overwrite to replace it)") from None
        os.replace(temporary, path)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
