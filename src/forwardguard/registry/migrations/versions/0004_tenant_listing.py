"""A tenant's patterns in listing order: the index behind a tenant's pages, snapshots and exports.

Without it, listing one tenant's patterns (``GET /v1/patterns``, ``registry list --tenant``) or
snapshotting them walked the whole table's ``(created_at, id)`` order and skipped every other tenant's
rows: 200 s for a snapshot of 1,000 patterns among ten million on PostgreSQL.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_patterns_tenant_created_at_id", "patterns", ["tenant", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_patterns_tenant_created_at_id", "patterns")
