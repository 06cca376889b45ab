"""The first schema: patterns, snapshots, snapshot members and models.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patterns",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("model_fingerprint", sa.String(64), nullable=False),
        sa.Column("model_spec", sa.Text, nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("pixel_sha256", sa.String(64), nullable=False),
        sa.Column("delta_blob_sha256", sa.String(64), nullable=False),
        sa.Column("phash", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("has_alpha", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('active', 'retired')", name="ck_patterns_status"),
    )
    op.create_index("ix_patterns_image_sha256", "patterns", ["image_sha256"])
    op.create_index("ix_patterns_pixel_sha256", "patterns", ["pixel_sha256"])
    op.create_index("ix_patterns_delta_blob_sha256", "patterns", ["delta_blob_sha256"])
    op.create_index("ix_patterns_phash", "patterns", ["phash"])
    op.create_index("ix_patterns_tenant_phash", "patterns", ["tenant", "phash"])
    op.create_index("ix_patterns_model_fingerprint", "patterns", ["model_fingerprint"])
    op.create_index("ix_patterns_created_at_id", "patterns", ["created_at", "id"])

    op.create_table(
        "snapshots",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(32), nullable=True),
        sa.Column("model_fingerprint", sa.String(64), nullable=True),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("pattern_count", sa.Integer, nullable=False),
    )
    op.create_table(
        "snapshot_patterns",
        sa.Column("snapshot_name", sa.String(200), sa.ForeignKey("snapshots.name"), primary_key=True),
        sa.Column("pattern_id", sa.String(64), sa.ForeignKey("patterns.id"), primary_key=True),
    )
    op.create_index("ix_snapshot_patterns_pattern_id", "snapshot_patterns", ["pattern_id"])

    op.create_table(
        "models",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("parent_fingerprint", sa.String(64), nullable=True),
        sa.Column("planted_snapshot", sa.String(200), sa.ForeignKey("snapshots.name"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("models")
    op.drop_index("ix_snapshot_patterns_pattern_id", "snapshot_patterns")
    op.drop_table("snapshot_patterns")
    op.drop_table("snapshots")
    op.drop_table("patterns")
