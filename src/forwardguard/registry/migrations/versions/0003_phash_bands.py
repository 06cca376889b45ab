"""The perceptual-hash index: four 16-bit bands of each hash, filled from the hash, checked and indexed.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Written out rather than imported from tables.py: a migration must not change when the code does.
PHASH_BANDS = 4


def _band(band: int) -> str:
    """Band ``band`` (most significant first) of the signed 64-bit hash, as SQL."""
    return f"((phash >> {48 - 16 * band}) & 65535)"


def upgrade() -> None:
    with op.batch_alter_table("patterns") as batch:
        for band in range(PHASH_BANDS):
            batch.add_column(sa.Column(f"phash_band{band}", sa.Integer, nullable=True))
    op.execute("UPDATE patterns SET " + ", ".join(f"phash_band{band} = {_band(band)}" for band in range(PHASH_BANDS)))
    with op.batch_alter_table("patterns") as batch:
        for band in range(PHASH_BANDS):
            batch.alter_column(f"phash_band{band}", existing_type=sa.Integer, nullable=False)
            batch.create_check_constraint(f"ck_patterns_phash_band{band}", f"phash_band{band} = {_band(band)}")
        # The tenant's hashes were scanned with it; the bands' indexes replace the scan.
        batch.drop_index("ix_patterns_tenant_phash")
    for band in range(PHASH_BANDS):
        op.create_index(f"ix_patterns_phash_band{band}", "patterns", [f"phash_band{band}", "phash"])


def downgrade() -> None:
    for band in range(PHASH_BANDS):
        op.drop_index(f"ix_patterns_phash_band{band}", "patterns")
    with op.batch_alter_table("patterns") as batch:
        batch.create_index("ix_patterns_tenant_phash", ["tenant", "phash"])
        for band in range(PHASH_BANDS):
            batch.drop_constraint(f"ck_patterns_phash_band{band}", type_="check")
            batch.drop_column(f"phash_band{band}")
