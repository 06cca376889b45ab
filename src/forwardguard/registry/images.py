"""Image and delta encodings, and the hashes that identify and find a pattern."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from forwardguard.errors import ForwardguardError
from forwardguard.images import LoadedImage, image_mode, read_image
from forwardguard.registry.validation import DEFAULT_TENANT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DELTA_TENSOR = "delta"


def decode_png(data: bytes) -> LoadedImage:
    """Decode an immunized image: 8-bit RGB or RGBA PNG only, as forwardguard writes it, read as every
    image is (:func:`forwardguard.images.read_image`), so that its pixels hash as a lookup's do."""
    if not data.startswith(PNG_SIGNATURE):
        raise ForwardguardError("the immunized image must be PNG bytes")
    label = "the immunized PNG"
    loaded = read_image(data, name=label)  # first: it turns a corrupt file into a one-line error
    mode = image_mode(data, label)
    if mode not in ("RGB", "RGBA"):
        raise ForwardguardError(f"the immunized PNG must be 8-bit RGB or RGBA, not mode {mode}")
    return loaded


def pixel_sha256(rgb: np.ndarray) -> str:
    """sha256 of the RGB pixels and their shape: equal for a lossless re-save of the same image."""
    height, width, _ = rgb.shape
    digest = hashlib.sha256(f"{height}x{width}x3\n".encode())
    digest.update(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def perceptual_hash(rgb: np.ndarray) -> int:
    """The 64-bit DCT perceptual hash (imagehash.phash) of the RGB pixels, as a signed 64-bit integer."""
    import imagehash

    bits = imagehash.phash(Image.fromarray(rgb)).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big", signed=True)


MIN_FEATURE_SIDE = 8
MIN_FEATURE_STD = 4.0


def has_features(rgb: np.ndarray) -> bool:
    """Whether the perceptual hash of ``rgb`` says anything about its picture.

    The hash compares the low frequencies of a 32 x 32 gray thumbnail with their median. A flat colour
    (an immunized one too: its noise averages out in the thumbnail) or an image a few pixels thin
    leaves only rounding noise there, so such images all hash alike and would all "match" each other.
    Featureless: a side under ``MIN_FEATURE_SIDE`` pixels, or a thumbnail whose gray levels have a
    standard deviation under ``MIN_FEATURE_STD`` (photos have tens).
    """
    if min(rgb.shape[:2]) < MIN_FEATURE_SIDE:
        return False
    thumbnail = Image.fromarray(np.ascontiguousarray(rgb)).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    return float(np.asarray(thumbnail, dtype=np.float32).std()) >= MIN_FEATURE_STD


def hamming_distances(query: int, hashes: np.ndarray) -> np.ndarray:
    """Bit differences between one signed 64-bit hash and an int64 array of them."""
    return np.bitwise_count(hashes.view(np.uint64) ^ np.int64(query).view(np.uint64))


def phash_hex(value: int) -> str:
    return f"{value & 0xFFFFFFFFFFFFFFFF:016x}"


def delta_sha256(delta: np.ndarray) -> bytes:
    """sha256 of the delta as little-endian int16 in C order: independent of how it is stored."""
    return hashlib.sha256(np.ascontiguousarray(delta, dtype="<i2").tobytes()).digest()


def pattern_id(image_sha256: str, delta: np.ndarray, tenant: str) -> str:
    """sha256 over the immunized PNG's sha256, the delta's, and the tenant's name: the same image twice
    is one pattern of a tenant; two tenants that immunize the same picture alike each have their own
    (so that no answer tells one that the other did). The default tenant's name is left out, which
    keeps the ids of registries made before tenants had their own."""
    owner = b"" if tenant == DEFAULT_TENANT else b"\0tenant\0" + tenant.encode()
    return hashlib.sha256(bytes.fromhex(image_sha256) + delta_sha256(delta) + owner).hexdigest()


def encode_delta(delta: np.ndarray) -> bytes:
    """The delta as safetensors: one tensor ``delta`` (H, W, 3), int8 when its values fit, else int16."""
    from safetensors.numpy import save

    fits_int8 = delta.size == 0 or (int(delta.min()) >= -128 and int(delta.max()) <= 127)
    return save({DELTA_TENSOR: np.ascontiguousarray(delta, dtype=np.int8 if fits_int8 else np.int16)})


def decode_delta(data: bytes) -> np.ndarray:
    """A delta blob (or an exported row's ``delta`` bytes) as an int16 (H, W, 3) array."""
    from safetensors.numpy import load

    return load(data)[DELTA_TENSOR].astype(np.int16)
