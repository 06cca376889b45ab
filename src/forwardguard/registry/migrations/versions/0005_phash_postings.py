"""The perceptual-hash index as postings: one row per band value holding every hash with that value.

Revision 0003 indexed each 16-bit band as ``(phash_bandI, phash)``. A search read each candidate as
an index tuple of its own, and each such tuple costs a visibility check on a random page of the
table: at 10 million patterns a search reads about 65,000 candidates, 28 ms at the median and 67 ms
at p99 on PostgreSQL. Postings hold a band value's hashes in one row: the same search reads 428 rows
of about 1.2 KB (a few ms) and checks the distances in numpy.

The postings are written by the database, by a trigger on INSERT into ``patterns``: every writer,
process and server sharing the database keeps them whole, in the transaction of the row. Patterns
are never deleted, so the postings only grow. Each row is filled here from the band columns, which
the postings replace (with their indexes and CHECK constraints).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration must not change when the code does.
PHASH_BANDS = 4
TRIGGER = "patterns_phash_postings"


def _band(band: int, phash: str = "phash") -> str:
    """Band ``band`` (most significant first) of the signed 64-bit hash ``phash``, as SQL."""
    return f"(({phash} >> {48 - 16 * band}) & 65535)"


def _encoded(phash: str, postgresql: bool) -> str:
    """A hash as its postings store it: 8 bytes big-endian (PostgreSQL), 16 hex digits (SQLite, which
    has no function that writes an integer's bytes)."""
    return f"int8send({phash})" if postgresql else f"CAST(printf('%016x', {phash}) AS BLOB)"


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "phash_postings",
        sa.Column("band", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("value", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("hashes", sa.LargeBinary, nullable=False),
    )
    collected = "string_agg(int8send(phash), ''::bytea)" if postgresql else f"CAST(group_concat({_encoded('phash', False)}, '') AS BLOB)"
    for band in range(PHASH_BANDS):
        op.execute(
            f"INSERT INTO phash_postings (band, value, hashes) SELECT {band}, phash_band{band}, {collected}"
            f" FROM patterns GROUP BY phash_band{band}"
        )
    for band in range(PHASH_BANDS):
        op.drop_index(f"ix_patterns_phash_band{band}", "patterns")
    with op.batch_alter_table("patterns") as batch:
        for band in range(PHASH_BANDS):
            batch.drop_constraint(f"ck_patterns_phash_band{band}", type_="check")
            batch.drop_column(f"phash_band{band}")
    # One statement appends to the four postings in band order, so concurrent writers lock them in
    # the same order. An insert that ON CONFLICT skips fires no trigger.
    rows = ", ".join(f"({band}, {_band(band, 'NEW.phash')}, {_encoded('NEW.phash', postgresql)})" for band in range(PHASH_BANDS))
    if postgresql:
        op.execute(
            "CREATE FUNCTION phash_postings_append() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$"
            f" BEGIN INSERT INTO phash_postings (band, value, hashes) VALUES {rows}"
            " ON CONFLICT (band, value) DO UPDATE SET hashes = phash_postings.hashes || excluded.hashes;"
            " RETURN NULL; END $$"
        )
        op.execute(f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON patterns FOR EACH ROW EXECUTE FUNCTION phash_postings_append()")
    else:
        op.execute(
            f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON patterns FOR EACH ROW BEGIN"
            f" INSERT INTO phash_postings (band, value, hashes) VALUES {rows}"
            " ON CONFLICT (band, value) DO UPDATE SET hashes = CAST(hashes || excluded.hashes AS BLOB); END"
        )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.execute(f"DROP TRIGGER {TRIGGER}" + (" ON patterns" if postgresql else ""))
    if postgresql:
        op.execute("DROP FUNCTION phash_postings_append()")
    with op.batch_alter_table("patterns") as batch:
        for band in range(PHASH_BANDS):
            batch.add_column(sa.Column(f"phash_band{band}", sa.Integer, nullable=True))
    op.execute("UPDATE patterns SET " + ", ".join(f"phash_band{band} = {_band(band)}" for band in range(PHASH_BANDS)))
    with op.batch_alter_table("patterns") as batch:
        for band in range(PHASH_BANDS):
            batch.alter_column(f"phash_band{band}", existing_type=sa.Integer, nullable=False)
            batch.create_check_constraint(f"ck_patterns_phash_band{band}", f"phash_band{band} = {_band(band)}")
    for band in range(PHASH_BANDS):
        op.create_index(f"ix_patterns_phash_band{band}", "patterns", [f"phash_band{band}", "phash"])
    op.drop_table("phash_postings")
