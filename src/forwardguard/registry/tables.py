"""The registry's tables (SQLAlchemy Core). The migrations in ``migrations/versions`` create them.

A test compares these definitions with the migrated database, so the two cannot drift apart.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# The perceptual hash's index (see phash_index): its 64 bits cut into 4 bands of 16.
PHASH_BANDS = 4
PHASH_BAND_BITS = 16

patterns = sa.Table(
    "patterns",
    metadata,
    # sha256 over the immunized PNG's sha256, the delta's sha256 and the tenant (see images.pattern_id).
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("model_fingerprint", sa.String(64), nullable=False),
    sa.Column("model_spec", sa.Text, nullable=False),
    # The immunized PNG's sha256, which is also its blob's key.
    sa.Column("image_sha256", sa.String(64), nullable=False),
    # sha256 of the decoded RGB pixels, so that a lossless re-save still matches exactly.
    sa.Column("pixel_sha256", sa.String(64), nullable=False),
    # Key of the delta's safetensors blob.
    sa.Column("delta_blob_sha256", sa.String(64), nullable=False),
    # 64-bit perceptual hash of the RGB pixels, stored as a signed integer.
    sa.Column("phash", sa.BigInteger, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("has_alpha", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('active', 'retired')", name="ck_patterns_status"),
    sa.Index("ix_patterns_image_sha256", "image_sha256"),
    sa.Index("ix_patterns_pixel_sha256", "pixel_sha256"),
    sa.Index("ix_patterns_delta_blob_sha256", "delta_blob_sha256"),
    sa.Index("ix_patterns_phash", "phash"),
    sa.Index("ix_patterns_model_fingerprint", "model_fingerprint"),
    sa.Index("ix_patterns_created_at_id", "created_at", "id"),
    sa.Index("ix_patterns_tenant_created_at_id", "tenant", "created_at", "id"),
)

# The perceptual hash's postings (see phash_index): for each band and each of its 65,536 values, the
# hashes of every pattern whose band takes that value, concatenated (a pattern's hash once per
# pattern). Written by the database itself: a trigger on INSERT into patterns (migration 0005).
phash_postings = sa.Table(
    "phash_postings",
    metadata,
    sa.Column("band", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("value", sa.Integer, primary_key=True, autoincrement=False),
    # PostgreSQL: 8 bytes per hash, big-endian (int8send). SQLite: 16 hex digits per hash, as bytes.
    sa.Column("hashes", sa.LargeBinary, nullable=False),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # The filters it was made with (NULL: any).
    sa.Column("method", sa.String(32), nullable=True),
    sa.Column("model_fingerprint", sa.String(64), nullable=True),
    sa.Column("tenant", sa.String(128), nullable=True),
    sa.Column("pattern_count", sa.Integer, nullable=False),
)

snapshot_patterns = sa.Table(
    "snapshot_patterns",
    metadata,
    sa.Column("snapshot_name", sa.String(200), sa.ForeignKey("snapshots.name"), primary_key=True),
    sa.Column("pattern_id", sa.String(64), sa.ForeignKey("patterns.id"), primary_key=True),
    sa.Index("ix_snapshot_patterns_pattern_id", "pattern_id"),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    # Not a foreign key: a base model (e.g. SD v1.5) need not be recorded itself.
    sa.Column("parent_fingerprint", sa.String(64), nullable=True),
    sa.Column("planted_snapshot", sa.String(200), sa.ForeignKey("snapshots.name"), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    # A short random id that names the key in listings and revocations; not secret.
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    # sha256 of the key: the key itself is shown once, at creation, and never stored.
    sa.Column("key_sha256", sa.String(64), nullable=False),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_api_keys_key_sha256", "key_sha256", unique=True),
    sa.Index("ix_api_keys_tenant", "tenant"),
)
