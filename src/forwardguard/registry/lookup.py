"""Lookup: which patterns an image carries, by its bytes, its pixels or its perceptual hash."""

from __future__ import annotations

import functools

import numpy as np
import sqlalchemy as sa

from forwardguard.errors import ForwardguardError
from forwardguard.images import read_image
from forwardguard.registry.blobs import sha256_hex
from forwardguard.registry.database import integer_list, is_one_of
from forwardguard.registry.images import hamming_distances, has_features, perceptual_hash, pixel_sha256
from forwardguard.registry.phash_index import close_hashes
from forwardguard.registry.records import Match, PatternRecord
from forwardguard.registry.storage import Storage
from forwardguard.registry.tables import patterns

# Largest Hamming distance (of 64 bits) at which a perceptual hash counts as a match. Re-encoding
# (JPEG quality 75) or resizing (0.5x) a photograph moves its hash by 0-8 bits; unrelated
# photographs differ by about 20-40.
PHASH_MAX_DISTANCE = 10
_KIND_RANK = {"bytes": 0, "pixels": 1, "perceptual": 2}


def lookup(
    storage: Storage,
    image: bytes | np.ndarray,
    *,
    file_sha256: str | None = None,
    tenant: str | None = None,
    max_distance: int = PHASH_MAX_DISTANCE,
    perceptual: bool = False,
) -> list[Match]:
    """The patterns of an image, best first: exact matches of the file's bytes or of its
    pixels, then perceptual-hash matches within ``max_distance`` bits.

    The perceptual search runs when ``perceptual`` asks for it, or when nothing matched exactly.
    An exact lookup reads the sha256 indexes only: a recorded file's bytes are found in one query,
    without decoding the image; other files are decoded and looked up by their pixels.

    ``image``: a PNG, JPEG or WebP file's bytes, decoded by :func:`forwardguard.images.read_image`
    (EXIF orientation applied, as when it was immunized), or RGB(A) uint8 pixels (H, W, 3|4).
    ``file_sha256``: with pixels, the sha256 of the file they were decoded from, so that a caller
    that decoded the file already (the API) still finds exact matches of its bytes.
    A perceptual match says that the image shows the pattern's picture; it cannot tell
    whether the perturbation itself survived (the clean original matches too). A featureless
    image (flat, or a few pixels thin: see ``has_features``) is matched exactly only.
    """
    if not 0 <= max_distance <= 64:
        raise ForwardguardError(f"max_distance must be within 0..64 bits, got {max_distance}")
    file_bytes: bytes | None
    image_sha: str | None
    if isinstance(image, (bytes, bytearray)):
        file_bytes = bytes(image)
        image_sha = sha256_hex(file_bytes)
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ForwardguardError(f"lookup needs uint8 RGB(A) pixels (H, W, 3|4), got {array.dtype} {array.shape}")
        file_bytes, image_sha, rgb = None, file_sha256, np.ascontiguousarray(array[..., :3])

    @functools.cache
    def pixels() -> np.ndarray:
        """The image's RGB pixels, decoded once, and only when the lookup needs them."""
        return rgb if file_bytes is None else read_image(file_bytes).rgb

    found: dict[str, Match] = {}

    def add(record: PatternRecord, kind: str, distance: int) -> None:
        previous = found.get(record.id)
        if previous is None or _KIND_RANK[kind] < _KIND_RANK[previous.kind]:
            found[record.id] = Match(pattern=record, distance=distance, kind=kind)

    parameters = {"image_sha": image_sha, "tenant": tenant}
    with storage.read(statements_apart=True) as connection:  # the hot path: no BEGIN and COMMIT round trips
        rows: list[sa.RowMapping] = []
        if file_bytes is not None:  # a recorded file is found by its bytes alone, without decoding it
            rows = list(connection.execute(_SAME_FILE[tenant is not None], parameters).mappings())
        if not rows:
            parameters["pixel_sha"] = pixel_sha256(pixels())
            rows = list(connection.execute(_SAME_PIXELS[tenant is not None], parameters).mappings())
        for row in rows:
            add(PatternRecord.from_row(row), "bytes" if row["image_sha256"] == image_sha else "pixels", 0)
        # A featureless image would "match" every other one.
        if (perceptual or not found) and has_features(pixels()):
            query_hash = perceptual_hash(pixels())
            for row in _perceptually_close(connection, query_hash, max_distance, tenant):
                record = PatternRecord.from_row(row)
                add(record, "perceptual", int(hamming_distances(query_hash, np.array([record.phash]))[0]))
    return sorted(found.values(), key=lambda m: (m.distance, _KIND_RANK[m.kind], m.pattern.created_at, m.pattern.id))


def _and_of_tenant(statement: sa.Select) -> tuple[sa.Select, sa.Select]:
    """``statement`` without and with a filter on the tenant of the bound parameter ``tenant``:
    indexed by whether a lookup names a tenant."""
    return statement, statement.where(patterns.c.tenant == sa.bindparam("tenant"))


# The patterns with the pixels of those recorded from the file of sha256 ``image_sha`` (a recorded
# file's pixels are those it was recorded with): a recorded file is found without decoding it.
_SAME_FILE = _and_of_tenant(
    sa.select(patterns).where(
        patterns.c.pixel_sha256.in_(
            sa.select(patterns.c.pixel_sha256).where(patterns.c.image_sha256 == sa.bindparam("image_sha"))
        )
    )
)
# The patterns of the file ``image_sha`` or of the pixels ``pixel_sha``.
_SAME_PIXELS = _and_of_tenant(
    sa.select(patterns).where(
        sa.or_(patterns.c.pixel_sha256 == sa.bindparam("pixel_sha"), patterns.c.image_sha256 == sa.bindparam("image_sha"))
    )
)


def _perceptually_close(connection: sa.Connection, query_hash: int, max_distance: int, tenant: str | None) -> list[sa.RowMapping]:
    """The patterns whose perceptual hash is within ``max_distance`` bits of ``query_hash``: the close
    hash values from the index (see :mod:`.phash_index`), then the patterns with those hashes."""
    close = close_hashes(connection, query_hash, max_distance)
    if not close:
        return []
    postgresql = connection.dialect.name == "postgresql"
    parameters = {"hashes": integer_list(close, postgresql), "tenant": tenant}
    return list(connection.execute(_with_hashes(postgresql)[tenant is not None], parameters).mappings())


@functools.cache
def _with_hashes(postgresql: bool) -> tuple[sa.Select, sa.Select]:
    """The patterns with one of the perceptual hashes of the list parameter ``hashes``, without and
    with the tenant filter."""
    return _and_of_tenant(sa.select(patterns).where(is_one_of(patterns.c.phash, "hashes", postgresql)))
