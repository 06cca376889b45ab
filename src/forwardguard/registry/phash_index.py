"""The perceptual-hash index: Hamming search over 64-bit hashes by multi-index hashing, in SQL.

Each pattern's hash is cut into ``BANDS`` = 4 bands of 16 bits (most significant first), stored in
the columns ``phash_band0..3`` of its row, written by the same INSERT as the hash and held equal to
its bits by CHECK constraints: the index is the database's own, so it is consistent under any number
of writer processes and servers sharing one PostgreSQL, and there is nothing to rebuild. Each band
is indexed with the hash, ``(phash_bandI, phash)``, so that candidates are read from the indexes
alone.

Why it finds every hash within ``r`` bits (pigeonhole): write ``r = 4a + b`` with ``0 <= b < 4``. If
each of the bands 0..b differed in more than ``a`` bits and each of the others in more than ``a - 1``,
the hashes would differ in at least ``(b + 1)(a + 1) + (3 - b)a = r + 1`` bits. So a search looks up,
in bands 0..b, every 16-bit value within ``a`` bits of the query's band, and in the others every value
within ``a - 1`` bits, then checks each candidate's full distance. At the default ``r`` = 10: 137
values in each of three bands and 17 in the fourth, 428 index probes, and 428/65,536 = 0.65% of the
patterns as candidates (for hashes spread evenly: about 6,500 of a million).

Why 4 x 16 bits: narrower bands hold many more patterns per value (11 bands of 6 bits, exact, would
make a tenth of the table candidates); wider ones need many more probes (3 bands of 21 bits: 3,588).
Past ``INDEXED_MAX_DISTANCE`` the candidates would be a sizeable share of the table (15% at 16 bits),
and the search reads every hash instead.
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BIT

from forwardguard.registry.images import hamming_distances
from forwardguard.registry.tables import PHASH_BAND_BITS, PHASH_BANDS, patterns

INDEXED_MAX_DISTANCE = 15
_BAND_MASK = (1 << PHASH_BAND_BITS) - 1


def phash_bands(phash: int) -> dict[str, int]:
    """The band columns of a signed 64-bit hash, as a row's ``phash_band0..3`` values."""
    return {f"phash_band{i}": (phash >> (64 - PHASH_BAND_BITS * (i + 1))) & _BAND_MASK for i in range(PHASH_BANDS)}


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
    """The distinct recorded hashes within ``max_distance`` bits of ``query_hash`` (of every tenant).

    PostgreSQL checks the distance itself (``bit_count``, PostgreSQL 14+) on each band's index-only
    scan; SQLite has no bit count, so its candidates are checked in numpy.
    """
    postgresql = connection.dialect.name == "postgresql"
    params: dict[str, object] = {"query": query_hash, "max_distance": max_distance}
    if max_distance <= INDEXED_MAX_DISTANCE:
        radii = [radius for radius in band_radii(max_distance) if radius >= 0]  # the skipped bands are the last
        for (column, value), radius in zip(phash_bands(query_hash).items(), radii, strict=False):
            near = (_masks(radius) ^ value).tolist()
            params[column] = near if postgresql else json.dumps(near)
        statement = _search(postgresql, len(radii))
    else:
        statement = _search(postgresql, 0)
    found = np.fromiter(connection.execute(statement, params).scalars(), dtype=np.int64)
    if not postgresql:
        found = found[hamming_distances(query_hash, found) <= max_distance]
    return found.tolist()


@cache
def _search(postgresql: bool, bands: int) -> sa.Executable:
    """The distinct hashes whose band 0..``bands``-1 takes one of the values of its parameter
    ``phash_bandI`` (a PostgreSQL array; on SQLite a JSON list): a union of index lookups, one per
    band. With ``bands`` 0, every hash (a scan). On PostgreSQL, only those within ``max_distance``
    bits of ``query``. Each list is one parameter: 428 values bound one by one cost more than the
    search itself."""

    def hashes(*where: sa.ColumnElement[bool]) -> sa.Select:
        query = sa.select(patterns.c.phash).where(*where)
        if postgresql:
            difference = patterns.c.phash.op("#")(sa.bindparam("query", type_=sa.BigInteger))
            query = query.where(sa.func.bit_count(sa.cast(difference, BIT(64))) <= sa.bindparam("max_distance"))
        return query

    def one_of(band: int) -> sa.ColumnElement[bool]:
        column = patterns.c[f"phash_band{band}"]
        if postgresql:
            return column == sa.any_(sa.bindparam(column.name, type_=ARRAY(sa.Integer)))
        return column.in_(sa.select(sa.column("value", sa.Integer)).select_from(sa.func.json_each(sa.bindparam(column.name))))

    if bands == 0:
        return hashes().distinct()
    return sa.union(*(hashes(one_of(band)) for band in range(bands))) if bands > 1 else hashes(one_of(0)).distinct()
