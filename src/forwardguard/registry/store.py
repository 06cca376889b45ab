"""The registry's Python API: record, find, freeze and check perturbation patterns.

Durability: a pattern's blobs are written (atomically, fsynced) before its row is committed, so a
crash leaves at worst an unreferenced blob, which :meth:`Registry.gc` removes, never a row
without its blobs. Every blob read checks the blob's sha256.

A ``Registry`` holds a connection pool: open one per process (after a fork, open a new one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from forwardguard.errors import ForwardguardError
from forwardguard.images import read_image
from forwardguard.registry import validation
from forwardguard.registry.blobs import BlobError, BlobStore, sha256_hex
from forwardguard.registry.database import create_engine, database_errors, read_transaction, write_transaction
from forwardguard.registry.images import (
    decode_delta,
    decode_png,
    encode_delta,
    hamming_distances,
    has_features,
    pattern_id,
    perceptual_hash,
    pixel_sha256,
)
from forwardguard.registry.location import Location, resolve_location
from forwardguard.registry.records import (
    BlobProblem,
    ExportReport,
    GcReport,
    Match,
    ModelRecord,
    PatternRecord,
    PatternSample,
    SnapshotRecord,
    VerifyReport,
)
from forwardguard.registry.schema import ensure_schema
from forwardguard.registry.validation import DEFAULT_TENANT
from forwardguard.registry.tables import models, patterns, snapshot_patterns, snapshots

# Largest Hamming distance (of 64 bits) at which a perceptual hash counts as a match. Re-encoding
# (JPEG quality 75) or resizing (0.5x) a photograph moves its hash by 0-8 bits; unrelated
# photographs differ by about 20-40.
PHASH_MAX_DISTANCE = 10
_KIND_RANK = {"bytes": 0, "pixels": 1, "perceptual": 2}
_IN_CHUNK = 500


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _insert(connection: sa.Connection, table: sa.Table):  # noqa: ANN202 (dialect-specific Insert)
    """An INSERT that supports ON CONFLICT DO NOTHING on this connection's dialect."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _perceptually_close(
    connection: sa.Connection, query_hash: int, max_distance: int, tenant: str | None
) -> list[sa.RowMapping]:
    """The patterns whose perceptual hash is within ``max_distance`` bits of ``query_hash``.

    First the close hash values, read from the phash indexes alone: PostgreSQL counts the bits
    itself (``bit_count``, PostgreSQL 14+); SQLite has no bit count, so every hash comes through
    the raw driver cursor (SQLAlchemy's row objects would cost several times more) to numpy.
    Then the patterns with those hashes.
    """
    tenant_filter = [patterns.c.tenant == tenant] if tenant is not None else []
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import BIT

        distance = sa.func.bit_count(sa.cast(patterns.c.phash.op("#")(query_hash), BIT(64)))
        query = sa.select(patterns.c.phash).where(distance <= max_distance, *tenant_filter).distinct()
        close = list(connection.execute(query).scalars())
    else:
        cursor = connection.connection.cursor()
        try:
            if tenant is None:
                cursor.execute("SELECT phash FROM patterns")
            else:
                cursor.execute("SELECT phash FROM patterns WHERE tenant = ?", (tenant,))
            hashes = np.fromiter((row[0] for row in cursor.fetchall()), dtype=np.int64)
        finally:
            cursor.close()
        close = np.unique(hashes[hamming_distances(query_hash, hashes) <= max_distance]).tolist()
    rows: list[sa.RowMapping] = []
    for start in range(0, len(close), _IN_CHUNK):
        query = sa.select(patterns).where(patterns.c.phash.in_(close[start : start + _IN_CHUNK]), *tenant_filter)
        rows.extend(connection.execute(query).mappings())
    return rows


class Registry:
    """A registry of perturbation patterns; make one with :meth:`open`."""

    def __init__(self, location: Location, engine: sa.Engine, schema_revision: str) -> None:
        self.location = location
        self.schema_revision = schema_revision
        self._engine = engine
        self._blobs = BlobStore(location.blob_root)

    @classmethod
    def open(cls, location: str | Path, *, create: bool = False, blob_root: str | Path | None = None) -> Registry:
        """Open the registry at a SQLite path or a database URL (see :mod:`.location`).

        ``create``: make the registry if it does not exist, or migrate an older schema to this
        code's. Without it, a missing registry or an outdated schema is an error.
        """
        resolved = resolve_location(location, blob_root=blob_root)
        if resolved.is_sqlite:
            path = resolved.sqlite_path
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.is_file():
                raise ForwardguardError(
                    f"no registry at {path}: create it with `forwardguard registry init --registry {path}`"
                )
        engine = create_engine(resolved)
        try:
            with database_errors(resolved):
                revision = ensure_schema(engine, upgrade=create, display=resolved.display())
            if create:
                resolved.blob_root.mkdir(parents=True, exist_ok=True)
        except BaseException:
            engine.dispose()
            raise
        return cls(resolved, engine, revision)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def blob_root(self) -> Path:
        return self.location.blob_root

    def display(self) -> str:
        return self.location.display()

    # -- patterns -------------------------------------------------------------------------------

    def record_pattern(
        self,
        *,
        image_png: bytes,
        delta: np.ndarray,
        method: str,
        params: dict[str, Any],
        target: str,
        model_fingerprint: str,
        model_spec: str,
        tenant: str = DEFAULT_TENANT,
    ) -> PatternRecord:
        """Record an immunized image and its delta (``immunized - clean``, integers, (H, W, 3)).

        Idempotent: recording the same image and delta again for the same tenant returns the
        existing record as it was first written (its metadata included). Another tenant's recording
        of them is its own pattern (see :func:`.images.pattern_id`).
        """
        pixels = decode_png(image_png)
        params = validation.check_params(params)
        delta16 = validation.check_delta(delta, pixels.rgb, params)
        row = {
            "tenant": validation.check_tenant(tenant),
            "method": validation.check_method(method),
            "params": params,
            "target": validation.check_text(target, "target"),
            "model_fingerprint": validation.check_fingerprint(model_fingerprint),
            "model_spec": validation.check_text(model_spec, "model_spec"),
            "pixel_sha256": pixel_sha256(pixels.rgb),
            "phash": perceptual_hash(pixels.rgb),
            "width": pixels.rgb.shape[1],
            "height": pixels.rgb.shape[0],
            "has_alpha": pixels.alpha is not None,
            "created_at": _now(),
            "status": "active",
            "retired_at": None,
        }
        delta_blob = encode_delta(delta16)
        row["image_sha256"] = self._blobs.put(image_png)
        row["delta_blob_sha256"] = self._blobs.put(delta_blob)
        row["id"] = pattern_id(row["image_sha256"], delta16, row["tenant"])
        with database_errors(self.location), write_transaction(self._engine) as connection:
            connection.execute(
                _insert(connection, patterns).values(**row).on_conflict_do_nothing(index_elements=["id"])
            )
        self._blobs.restore_if_missing(row["image_sha256"], image_png)
        self._blobs.restore_if_missing(row["delta_blob_sha256"], delta_blob)
        return self.get_pattern(row["id"])

    def get_pattern(self, pattern_id: str) -> PatternRecord:
        """The pattern with this id (or unique id prefix of 6+ hex characters)."""
        prefix = validation.check_id_prefix(pattern_id, "pattern id")
        with database_errors(self.location), read_transaction(self._engine) as connection:
            return PatternRecord.from_row(self._one_by_prefix(connection, patterns, patterns.c.id, prefix, "pattern"))

    def iter_patterns(
        self,
        *,
        tenant: str | None = None,
        method: str | None = None,
        model_fingerprint: str | None = None,
        status: str | None = None,
        snapshot: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        batch_size: int = 1000,
    ) -> Iterator[PatternRecord]:
        """Patterns matching every given filter, oldest first, streamed in batches."""
        query = sa.select(patterns)
        if snapshot is not None:
            self.get_snapshot(snapshot)
            query = query.join(snapshot_patterns, snapshot_patterns.c.pattern_id == patterns.c.id).where(
                snapshot_patterns.c.snapshot_name == snapshot
            )
        for column, value in (
            (patterns.c.tenant, tenant),
            (patterns.c.method, method),
            (patterns.c.model_fingerprint, model_fingerprint),
            (patterns.c.status, validation.check_status(status)),
        ):
            if value is not None:
                query = query.where(column == value)
        query = query.order_by(patterns.c.created_at, patterns.c.id).limit(limit).offset(offset)
        with database_errors(self.location), read_transaction(self._engine) as connection:
            result = connection.execution_options(yield_per=batch_size).execute(query)
            for row in result.mappings():
                yield PatternRecord.from_row(row)

    def list_patterns(
        self,
        *,
        tenant: str | None = None,
        method: str | None = None,
        model_fingerprint: str | None = None,
        status: str | None = None,
        snapshot: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[PatternRecord]:
        """:meth:`iter_patterns` as a list."""
        return list(
            self.iter_patterns(
                tenant=tenant,
                method=method,
                model_fingerprint=model_fingerprint,
                status=status,
                snapshot=snapshot,
                limit=limit,
                offset=offset,
            )
        )

    def load_blobs(self, record: PatternRecord) -> tuple[bytes, bytes]:
        """A record's immunized PNG and delta safetensors bytes, both verified against their sha256."""
        return self._read_blob(record, "image", record.image_sha256), self._read_blob(
            record, "delta", record.delta_blob_sha256
        )

    def load_image(self, pattern_id: str) -> bytes:
        """The immunized PNG's bytes, verified."""
        record = self.get_pattern(pattern_id)
        return self._read_blob(record, "image", record.image_sha256)

    def load_delta(self, pattern_id: str) -> np.ndarray:
        """The delta ``immunized - clean`` as int16 (H, W, 3), verified."""
        record = self.get_pattern(pattern_id)
        return decode_delta(self._read_blob(record, "delta", record.delta_blob_sha256))

    def load_clean(self, pattern_id: str) -> np.ndarray:
        """The clean original, uint8 (H, W, 3): exactly the immunized pixels minus the delta."""
        return self.load_sample(pattern_id).clean

    def load_sample(self, pattern_id: str) -> PatternSample:
        """Everything the finetune and eval stages need of one pattern, each blob read once."""
        record = self.get_pattern(pattern_id)
        image_png, delta_blob = self.load_blobs(record)
        pixels, delta = decode_png(image_png), decode_delta(delta_blob)
        clean = (pixels.rgb.astype(np.int16) - delta).astype(np.uint8)
        return PatternSample(record=record, immunized=pixels.rgb, clean=clean, delta=delta, alpha=pixels.alpha)

    def retire(self, pattern_id: str) -> PatternRecord:
        """Mark a pattern retired: it stays in the snapshots that hold it, and new snapshots skip it."""
        record = self.get_pattern(pattern_id)
        with database_errors(self.location), write_transaction(self._engine) as connection:
            connection.execute(
                patterns.update()
                .where(patterns.c.id == record.id, patterns.c.status == "active")
                .values(status="retired", retired_at=_now())
            )
        return self.get_pattern(record.id)

    def lookup(
        self,
        image: bytes | np.ndarray,
        *,
        file_sha256: str | None = None,
        tenant: str | None = None,
        max_distance: int = PHASH_MAX_DISTANCE,
    ) -> list[Match]:
        """The patterns of an image, best first: exact matches of the file's bytes or of its
        pixels, then perceptual-hash matches within ``max_distance`` bits.

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
        if isinstance(image, (bytes, bytearray)):
            rgb = read_image(bytes(image)).rgb
            image_sha = sha256_hex(bytes(image))
        else:
            array = np.asarray(image)
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
                raise ForwardguardError(
                    f"lookup needs uint8 RGB(A) pixels (H, W, 3|4), got {array.dtype} {array.shape}"
                )
            rgb, image_sha = np.ascontiguousarray(array[..., :3]), file_sha256
        query_hash = perceptual_hash(rgb)
        tenant_filter = [patterns.c.tenant == tenant] if tenant is not None else []
        found: dict[str, Match] = {}

        def add(rows: Iterable[sa.RowMapping], kind: str) -> None:
            for row in rows:
                record = PatternRecord.from_row(row)
                distance = (
                    0 if kind != "perceptual" else int(hamming_distances(query_hash, np.array([record.phash]))[0])
                )
                previous = found.get(record.id)
                if previous is None or _KIND_RANK[kind] < _KIND_RANK[previous.kind]:
                    found[record.id] = Match(pattern=record, distance=distance, kind=kind)

        with database_errors(self.location), read_transaction(self._engine) as connection:
            if image_sha is not None:
                query = sa.select(patterns).where(patterns.c.image_sha256 == image_sha, *tenant_filter)
                add(connection.execute(query).mappings(), "bytes")
            query = sa.select(patterns).where(patterns.c.pixel_sha256 == pixel_sha256(rgb), *tenant_filter)
            add(connection.execute(query).mappings(), "pixels")
            if has_features(rgb):  # a featureless image would "match" every other one
                add(_perceptually_close(connection, query_hash, max_distance, tenant), "perceptual")
        return sorted(
            found.values(), key=lambda m: (m.distance, _KIND_RANK[m.kind], m.pattern.created_at, m.pattern.id)
        )

    # -- snapshots and models -------------------------------------------------------------------

    def create_snapshot(
        self,
        name: str,
        *,
        method: str | None = None,
        model_fingerprint: str | None = None,
        tenant: str | None = None,
    ) -> SnapshotRecord:
        """Freeze the active patterns matching every given filter (all by default) under a new,
        unique name. A snapshot never changes afterwards."""
        validation.check_snapshot_name(name)
        selected = sa.select(sa.literal(name), patterns.c.id).where(patterns.c.status == "active")
        for column, value in (
            (patterns.c.method, method),
            (patterns.c.model_fingerprint, model_fingerprint),
            (patterns.c.tenant, tenant),
        ):
            if value is not None:
                selected = selected.where(column == value)
        exists = ForwardguardError(f"snapshot {name!r} already exists in registry {self.display()}")
        with database_errors(self.location):
            try:
                with write_transaction(self._engine) as connection:
                    if connection.execute(sa.select(snapshots.c.name).where(snapshots.c.name == name)).first():
                        raise exists
                    connection.execute(
                        snapshots.insert().values(
                            name=name,
                            created_at=_now(),
                            method=method,
                            model_fingerprint=model_fingerprint,
                            tenant=tenant,
                            pattern_count=0,
                        )
                    )
                    connection.execute(
                        snapshot_patterns.insert().from_select(["snapshot_name", "pattern_id"], selected)
                    )
                    count = connection.execute(
                        sa.select(sa.func.count()).where(snapshot_patterns.c.snapshot_name == name)
                    ).scalar_one()
                    if count == 0:
                        raise ForwardguardError(f"no active pattern matches, so snapshot {name!r} was not created")
                    connection.execute(snapshots.update().where(snapshots.c.name == name).values(pattern_count=count))
            except sa.exc.IntegrityError:
                raise exists from None
        return self.get_snapshot(name)

    def get_snapshot(self, name: str) -> SnapshotRecord:
        with database_errors(self.location), read_transaction(self._engine) as connection:
            row = connection.execute(sa.select(snapshots).where(snapshots.c.name == name)).mappings().first()
        if row is None:
            raise ForwardguardError(f"no snapshot {name!r} in registry {self.display()}")
        return SnapshotRecord.from_row(row)

    def list_snapshots(self) -> list[SnapshotRecord]:
        with database_errors(self.location), read_transaction(self._engine) as connection:
            rows = connection.execute(
                sa.select(snapshots).order_by(snapshots.c.created_at, snapshots.c.name)
            ).mappings()
            return [SnapshotRecord.from_row(row) for row in rows]

    def snapshot_patterns(self, name: str) -> list[PatternRecord]:
        """The patterns a snapshot froze (retired ones included: a snapshot never changes)."""
        return self.list_patterns(snapshot=name)

    def record_model(
        self,
        *,
        fingerprint: str,
        spec: str,
        name: str,
        parent_fingerprint: str | None = None,
        planted_snapshot: str | None = None,
    ) -> ModelRecord:
        """Record a model version; recording the same one again returns it, a conflicting one fails."""
        row = {
            "fingerprint": validation.check_fingerprint(fingerprint, "fingerprint"),
            "spec": validation.check_text(spec, "spec"),
            "name": validation.check_text(name, "name"),
            "parent_fingerprint": parent_fingerprint
            if parent_fingerprint is None
            else validation.check_fingerprint(parent_fingerprint, "parent_fingerprint"),
            "planted_snapshot": planted_snapshot,
            "created_at": _now(),
        }
        if planted_snapshot is not None:
            self.get_snapshot(planted_snapshot)
        with database_errors(self.location), write_transaction(self._engine) as connection:
            connection.execute(
                _insert(connection, models).values(**row).on_conflict_do_nothing(index_elements=["fingerprint"])
            )
        record = self.get_model(fingerprint)
        differing = [
            key
            for key in ("spec", "name", "parent_fingerprint", "planted_snapshot")
            if getattr(record, key) != row[key]
        ]
        if differing:
            raise ForwardguardError(
                f"model {fingerprint[:12]} is already recorded with a different {', '.join(differing)}"
            )
        return record

    def get_model(self, fingerprint: str) -> ModelRecord:
        """The model with this fingerprint (or unique prefix of 6+ hex characters)."""
        prefix = validation.check_id_prefix(fingerprint, "model fingerprint")
        with database_errors(self.location), read_transaction(self._engine) as connection:
            return ModelRecord.from_row(self._one_by_prefix(connection, models, models.c.fingerprint, prefix, "model"))

    def list_models(self) -> list[ModelRecord]:
        with database_errors(self.location), read_transaction(self._engine) as connection:
            rows = connection.execute(sa.select(models).order_by(models.c.created_at, models.c.fingerprint)).mappings()
            return [ModelRecord.from_row(row) for row in rows]

    # -- maintenance ----------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Re-hash every blob that a pattern references; list the missing or corrupted ones, and
        the blobs no pattern references (which :meth:`gc` removes)."""
        status: dict[str, str] = {}
        problems: list[BlobProblem] = []
        count = 0
        query = sa.select(patterns.c.id, patterns.c.image_sha256, patterns.c.delta_blob_sha256).order_by(patterns.c.id)
        with database_errors(self.location), read_transaction(self._engine) as connection:
            for row in connection.execution_options(yield_per=1000).execute(query):
                count += 1
                for role, key in (("image", row.image_sha256), ("delta", row.delta_blob_sha256)):
                    if key not in status:
                        status[key] = self._blobs.check(key)
                    if status[key] != "ok":
                        problems.append(BlobProblem(row.id, role, key, status[key], self._blobs.path(key)))
        orphans = sorted(key for key in self._blobs.keys() if key not in status)
        return VerifyReport(patterns=count, blobs=len(status), problems=problems, orphans=orphans)

    def gc(self, *, dry_run: bool = False) -> GcReport:
        """Remove the blobs that no pattern references (left by a writer that died between its
        blob and its row), and stale temporary files. Safe while writers are running."""
        with database_errors(self.location), read_transaction(self._engine) as connection:
            referenced = set(connection.execute(sa.select(patterns.c.image_sha256)).scalars())
            referenced.update(connection.execute(sa.select(patterns.c.delta_blob_sha256)).scalars())
        candidates = [key for key in self._blobs.keys() if key not in referenced]
        if dry_run:
            return GcReport(removed_blobs=candidates, removed_temporaries=[])
        removed = [key for key in candidates if self._blobs.remove_unreferenced(key, self._is_referenced)]
        return GcReport(
            removed_blobs=removed, removed_temporaries=self._blobs.remove_stale_temporaries(self._is_referenced)
        )

    def stats(self) -> dict[str, Any]:
        """Counts of patterns (by status, method and tenant), snapshots, models and blobs."""
        with database_errors(self.location), read_transaction(self._engine) as connection:

            def counts(column: sa.Column) -> dict[str, int]:
                rows = connection.execute(sa.select(column, sa.func.count()).group_by(column).order_by(column))
                return {str(key): value for key, value in rows}

            by_status = counts(patterns.c.status)
            result = {
                "registry": self.display(),
                "blob_root": str(self.blob_root),
                "schema_revision": self.schema_revision,
                "patterns": sum(by_status.values()),
                "by_status": by_status,
                "by_method": counts(patterns.c.method),
                "by_tenant": counts(patterns.c.tenant),
                "snapshots": connection.execute(sa.select(sa.func.count()).select_from(snapshots)).scalar_one(),
                "models": connection.execute(sa.select(sa.func.count()).select_from(models)).scalar_one(),
            }
        sizes = Counter()
        for key in self._blobs.keys():
            sizes["blobs"] += 1
            sizes["blob_bytes"] += self._blobs.path(key).stat().st_size
        return result | {"blobs": sizes["blobs"], "blob_bytes": sizes["blob_bytes"]}

    def export(self, snapshot: str, to_dir: str | Path) -> ExportReport:
        """Write a snapshot as a Hugging Face ``datasets`` dataset on disk (see :mod:`.export`)."""
        from forwardguard.registry.export import export_snapshot

        return export_snapshot(self, snapshot, Path(to_dir))

    # -- internals ------------------------------------------------------------------------------

    def _read_blob(self, record: PatternRecord, role: str, key: str) -> bytes:
        try:
            return self._blobs.get(key)
        except BlobError as error:
            raise BlobError(
                f"pattern {record.id}: {role} {error}; run `forwardguard registry verify --registry {self.display()}`"
            ) from None

    def _is_referenced(self, key: str) -> bool:
        query = sa.select(patterns.c.id).where(
            sa.or_(patterns.c.image_sha256 == key, patterns.c.delta_blob_sha256 == key)
        )
        with database_errors(self.location), read_transaction(self._engine) as connection:
            return connection.execute(query.limit(1)).first() is not None

    def _one_by_prefix(
        self, connection: sa.Connection, table: sa.Table, column: sa.Column, prefix: str, what: str
    ) -> sa.RowMapping:
        if len(prefix) == 64:
            query = sa.select(table).where(column == prefix)
        else:  # hex digits sort below "g": an index range scan
            query = sa.select(table).where(column >= prefix, column < prefix + "g").limit(2)
        rows = connection.execute(query).mappings().all()
        if not rows:
            raise ForwardguardError(f"no {what} {prefix} in registry {self.display()}")
        if len(rows) > 1:
            raise ForwardguardError(f"{what} id prefix {prefix} is ambiguous: give more characters")
        return rows[0]
