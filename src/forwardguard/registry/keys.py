"""API keys of ``forwardguard serve``: one tenant each, stored as their sha256, revocable.

A key is 32 random bytes (``fg_`` + URL-safe base64), so its sha256 needs no salt: it cannot be
guessed or found in a table, and the hash finds the key's row directly. The key itself is returned
once, by :func:`create_key`, and never stored.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from forwardguard.errors import ForwardguardError
from forwardguard.registry import validation
from forwardguard.registry.records import utc
from forwardguard.registry.store import Registry
from forwardguard.registry.tables import api_keys

KEY_PREFIX = "fg_"
_MAX_KEY_LENGTH = 256


@dataclass(frozen=True)
class ApiKeyRecord:
    """A key's record: never the key itself."""

    id: str
    tenant: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ApiKeyRecord:
        return cls(
            id=row["id"],
            tenant=row["tenant"],
            name=row["name"],
            created_at=utc(row["created_at"]),
            revoked_at=utc(row["revoked_at"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at is not None else None,
            "active": self.active,
        }


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(registry: Registry, *, tenant: str, name: str | None = None) -> tuple[ApiKeyRecord, str]:
    """Make a new key for ``tenant``; return its record and the key, which is shown only now."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = {
        "id": secrets.token_hex(8),
        "tenant": validation.check_tenant(tenant),
        "key_sha256": key_sha256(key),
        "name": None if name is None else validation.check_text(name, "key name"),
        "created_at": datetime.now(timezone.utc),
        "revoked_at": None,
    }
    with registry.write() as connection:
        connection.execute(api_keys.insert().values(**row))
    return ApiKeyRecord.from_row(row), key


def list_keys(registry: Registry, *, tenant: str | None = None) -> list[ApiKeyRecord]:
    """Every key (of one tenant when given), revoked ones included, oldest first."""
    query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
    if tenant is not None:
        query = query.where(api_keys.c.tenant == tenant)
    with registry.read() as connection:
        return [ApiKeyRecord.from_row(row) for row in connection.execute(query).mappings()]


def revoke_key(registry: Registry, *, tenant: str, key_id: str) -> ApiKeyRecord:
    """Revoke one of ``tenant``'s keys (revoking a revoked key keeps its first revocation time)."""
    with registry.write() as connection:
        connection.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.tenant == tenant, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(timezone.utc))
        )
        row = (
            connection.execute(sa.select(api_keys).where(api_keys.c.id == key_id, api_keys.c.tenant == tenant)).mappings().first()
        )
    if row is None:
        raise ForwardguardError(f"tenant {tenant!r} has no key {key_id!r} in registry {registry.display()}")
    return ApiKeyRecord.from_row(row)


def revoke_tenant_keys(registry: Registry, *, tenant: str) -> list[ApiKeyRecord]:
    """Revoke every active key of ``tenant``; return the keys revoked now."""
    now = datetime.now(timezone.utc)
    with registry.write() as connection:
        ids = list(
            connection.execute(
                sa.select(api_keys.c.id).where(api_keys.c.tenant == tenant, api_keys.c.revoked_at.is_(None))
            ).scalars()
        )
        if ids:
            connection.execute(api_keys.update().where(api_keys.c.id.in_(ids)).values(revoked_at=now))
        rows = connection.execute(sa.select(api_keys).where(api_keys.c.id.in_(ids))).mappings().all()
    return sorted((ApiKeyRecord.from_row(row) for row in rows), key=lambda record: (record.created_at, record.id))


def authenticate(registry: Registry, *, key: str) -> ApiKeyRecord | None:
    """The active key's record, or None for an unknown or revoked key."""
    if not key.startswith(KEY_PREFIX) or len(key) > _MAX_KEY_LENGTH:
        return None
    query = sa.select(api_keys).where(api_keys.c.key_sha256 == key_sha256(key), api_keys.c.revoked_at.is_(None))
    with registry.read() as connection:
        row = connection.execute(query).mappings().first()
    return None if row is None else ApiKeyRecord.from_row(row)
