"""A tenant's patterns in listing order: the index behind a tenant's pages, snapshots and exports.

Without it, a page of one tenant's patterns (``GET /v1/patterns``, ``registry list --tenant``) or a
snapshot of them walked the whole table in ``(created_at, id)`` order, skipping every other tenant's
rows: a cost that grows with the registry, not with the tenant (a first page of 10 among a million
rows on SQLite: 300 ms without the index, 1 ms with it).

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
