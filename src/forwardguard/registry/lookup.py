"""Lookup: which patterns an image carries, by its bytes, its pixels or its perceptual hash."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa

from forwardguard.errors import ForwardguardError
from forwardguard.images import read_image
from forwardguard.registry.blobs import sha256_hex
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
_IN_CHUNK = 500


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

    The perceptual search runs when ``perceptual`` asks for it, or when nothing matched exactly:
    an exact lookup is one query of the two sha256 indexes.

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
    image_sha: str | None
    if isinstance(image, (bytes, bytearray)):
        rgb = read_image(bytes(image)).rgb
        image_sha = sha256_hex(bytes(image))
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ForwardguardError(f"lookup needs uint8 RGB(A) pixels (H, W, 3|4), got {array.dtype} {array.shape}")
        rgb, image_sha = np.ascontiguousarray(array[..., :3]), file_sha256
    tenant_filter = [patterns.c.tenant == tenant] if tenant is not None else []
    found: dict[str, Match] = {}

    def add(record: PatternRecord, kind: str, distance: int) -> None:
        previous = found.get(record.id)
        if previous is None or _KIND_RANK[kind] < _KIND_RANK[previous.kind]:
            found[record.id] = Match(pattern=record, distance=distance, kind=kind)

    exact = [patterns.c.pixel_sha256 == pixel_sha256(rgb)]
    if image_sha is not None:
        exact.append(patterns.c.image_sha256 == image_sha)
    with storage.read(statements_apart=True) as connection:  # the hot path: no BEGIN and COMMIT round trips
        for row in connection.execute(sa.select(patterns).where(sa.or_(*exact), *tenant_filter)).mappings():
            add(PatternRecord.from_row(row), "bytes" if row["image_sha256"] == image_sha else "pixels", 0)
        # A featureless image would "match" every other one.
        if (perceptual or not found) and has_features(rgb):
            query_hash = perceptual_hash(rgb)
            for row in _perceptually_close(connection, query_hash, max_distance, tenant):
                record = PatternRecord.from_row(row)
                add(record, "perceptual", int(hamming_distances(query_hash, np.array([record.phash]))[0]))
    return sorted(found.values(), key=lambda m: (m.distance, _KIND_RANK[m.kind], m.pattern.created_at, m.pattern.id))


def _perceptually_close(connection: sa.Connection, query_hash: int, max_distance: int, tenant: str | None) -> list[sa.RowMapping]:
    """The patterns whose perceptual hash is within ``max_distance`` bits of ``query_hash``: the close
    hash values from the index (see :mod:`.phash_index`), then the patterns with those hashes."""
    tenant_filter = [patterns.c.tenant == tenant] if tenant is not None else []
    close = close_hashes(connection, query_hash, max_distance)
    rows: list[sa.RowMapping] = []
    for start in range(0, len(close), _IN_CHUNK):
        query = sa.select(patterns).where(patterns.c.phash.in_(close[start : start + _IN_CHUNK]), *tenant_filter)
        rows.extend(connection.execute(query).mappings())
    return rows
