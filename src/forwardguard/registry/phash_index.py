"""The perceptual-hash index: Hamming search over 64-bit hashes by multi-index hashing, in SQL.

Each pattern's hash is cut into ``BANDS`` = 4 bands of 16 bits (most significant first). The table
``phash_postings`` holds, for each band and each of its 65,536 values, the hashes of every pattern
whose band takes that value, concatenated in one row. The database writes them itself, by a trigger
on INSERT into ``patterns`` (migration 0005), in the transaction of the row: the index is consistent
under any number of writer processes and servers sharing one PostgreSQL, and there is nothing to
rebuild.

Why it finds every hash within ``r`` bits (pigeonhole): write ``r = 4a + b`` with ``0 <= b < 4``. If
each of the bands 0..b differed in more than ``a`` bits and each of the others in more than ``a - 1``,
the hashes would differ in at least ``(b + 1)(a + 1) + (3 - b)a = r + 1`` bits. So a search reads, in
bands 0..b, the postings of every 16-bit value within ``a`` bits of the query's band, and in the others
those within ``a - 1`` bits, then checks each candidate's full distance in numpy. At the default ``r`` =
10: 137 values in each of three bands and 17 in the fourth, 428 rows holding 428/65,536 = 0.65% of the
patterns as candidates (for hashes spread evenly: about 65,000 of ten million, 0.5 MB).

Why postings rather than an index of ``(band, phash)`` per band (revision 0003): each candidate was
then an index tuple with a visibility check of its own, about 0.4 us each on PostgreSQL, 28 ms per
search at ten million patterns; 428 rows cost a few ms. Why 4 x 16 bits: narrower bands hold many more
patterns per value (11 bands of 6 bits, exact, would make a tenth of the table candidates); wider ones
need many more rows (3 bands of 21 bits: 3,378). Past ``INDEXED_MAX_DISTANCE`` the candidates would be
a sizeable share of the table (15% at 16 bits), and the search reads every hash instead.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import sqlalchemy as sa

from forwardguard.registry.database import integer_list, is_one_of
from forwardguard.registry.images import hamming_distances
from forwardguard.registry.tables import PHASH_BAND_BITS, PHASH_BANDS, patterns, phash_postings

INDEXED_MAX_DISTANCE = 15
_BAND_MASK = (1 << PHASH_BAND_BITS) - 1


def phash_bands(phash: int | np.ndarray) -> list:
    """The band values of a signed 64-bit hash (or of an int64 array of them, band by band), band 0
    (the most significant bits) first."""
    return [(phash >> (64 - PHASH_BAND_BITS * (band + 1))) & _BAND_MASK for band in range(PHASH_BANDS)]


def band_radii(max_distance: int) -> list[int]:
    """How many bits each band may differ by for a hash within ``max_distance`` bits (-1: skip the band)."""
    a, b = divmod(max_distance, PHASH_BANDS)
    return [a if band <= b else a - 1 for band in range(PHASH_BANDS)]


@cache
def _masks(radius: int) -> np.ndarray:
    """Every band value with at most ``radius`` bits set: the XOR masks of a band's neighbours."""
    values = np.arange(1 << PHASH_BAND_BITS, dtype=np.int64)
    return values[np.bitwise_count(values) <= radius]


def close_hashes(connection: sa.Connection, query_hash: int, max_distance: int) -> list[int]:
    """The distinct recorded hashes within ``max_distance`` bits of ``query_hash`` (of every tenant)."""
    postgresql = connection.dialect.name == "postgresql"
    if max_distance > INDEXED_MAX_DISTANCE:
        scanned = connection.execute(sa.select(patterns.c.phash).distinct()).scalars()
        found = np.fromiter(scanned, dtype=np.int64)
    else:
        params: dict[str, object] = {}
        radii = [radius for radius in band_radii(max_distance) if radius >= 0]  # the skipped bands are the last
        for band, (value, radius) in enumerate(zip(phash_bands(query_hash), radii, strict=False)):
            params[f"band{band}"] = integer_list((_masks(radius) ^ value).tolist(), postgresql)
        postings = connection.execute(_postings(postgresql, len(radii)), params).scalars()
        found = decode_postings(b"".join(postings), postgresql)
    return np.unique(found[hamming_distances(query_hash, found) <= max_distance]).tolist()


def encode_postings(hashes: np.ndarray, postgresql: bool) -> bytes:
    """``hashes`` as postings store them (the trigger of migration 0005 writes the same): 8 bytes
    big-endian each on PostgreSQL, 16 hex digits each on SQLite."""
    raw = hashes.astype(">i8").tobytes()
    return raw if postgresql else raw.hex().encode("ascii")


def decode_postings(data: bytes, postgresql: bool) -> np.ndarray:
    """The hashes of concatenated postings, as stored on PostgreSQL (8 bytes big-endian each) or on
    SQLite (16 hex digits each)."""
    raw = data if postgresql else bytes.fromhex(data.decode("ascii"))
    return np.frombuffer(raw, dtype=">i8").astype(np.int64)


@cache
def _postings(postgresql: bool, bands: int) -> sa.Executable:
    """The postings of bands 0..``bands``-1 at the values of their list parameters ``bandI`` (see
    :func:`.database.is_one_of`): a lookup of the primary key per value."""
    selects = [
        sa.select(phash_postings.c.hashes).where(
            phash_postings.c.band == band, is_one_of(phash_postings.c.value, f"band{band}", postgresql)
        )
        for band in range(bands)
    ]
    return sa.union_all(*selects) if bands > 1 else selects[0]
