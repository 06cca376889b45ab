"""API keys: `forwardguard keys create|list|revoke`, stored hashed; authenticate() and revocation."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from serve_support import make_registry
from typer.testing import CliRunner

from forwardguard.cli import app
from forwardguard.registry import Registry
from forwardguard.registry.keys import (
    authenticate,
    create_key,
    list_keys,
    revoke_key,
    revoke_tenant_keys,
)

runner = CliRunner()


def _keys(*args: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["keys", *args])
    return result.exit_code, result.output.strip().splitlines()


def test_keys_cli_creates_lists_and_revokes(tmp_path: Path) -> None:
    registry = str(make_registry(tmp_path))
    code, lines = _keys("create", "--tenant", "acme", "--registry", registry, "--name", "ci")
    assert code == 0
    key = lines[-1]
    assert key.startswith("fg_") and len(key) == 46 and " " not in key
    with Registry.open(registry) as opened:
        (record,) = list_keys(opened)
        assert authenticate(opened, key=key) == record
    assert lines[0] == f"created key {record.id} for tenant acme; store it now, it is not shown again:"

    # Only the key's sha256 is stored.
    with sqlite3.connect(tmp_path / "reg.db") as connection:
        rows = connection.execute("SELECT * FROM api_keys").fetchall()
    assert hashlib.sha256(key.encode()).hexdigest() in rows[0]
    assert not any(key in str(value) for value in rows[0])

    code, listed = _keys("list", "--registry", registry)
    assert code == 0 and listed[0].startswith(f"{record.id}  acme  created ") and listed[0].endswith("active  ci")
    assert key not in "\n".join(listed)

    assert _keys("revoke", record.id, "--tenant", "other", "--registry", registry) == (
        1,
        [f"error: tenant 'other' has no key '{record.id}' in registry {registry}"],
    )
    assert _keys("revoke", "--tenant", "acme", "--registry", registry) == (
        1,
        ["error: give either a key id or --all (every key of the tenant)"],
    )
    assert _keys("revoke", record.id, "--tenant", "acme", "--registry", registry) == (
        0,
        [f"revoked key {record.id} of tenant acme"],
    )
    with Registry.open(registry) as opened:
        assert authenticate(opened, key=key) is None
    code, listed = _keys("list", "--registry", registry, "--tenant", "acme")
    assert " revoked " in listed[0]

    assert _keys("create", "--tenant", "bad tenant!", "--registry", registry)[0] == 1
    assert _keys("create", "--tenant", "acme", "--registry", str(tmp_path / "none.db"))[0] == 1


def test_revoking_all_of_a_tenants_keys_spares_the_others(tmp_path: Path) -> None:
    with Registry.open(make_registry(tmp_path)) as registry:
        first, first_key = create_key(registry, tenant="acme")
        _, second_key = create_key(registry, tenant="acme")
        other, other_key = create_key(registry, tenant="globex")
        assert authenticate(registry, key="fg_" + "x" * 43) is None
        assert authenticate(registry, key=first_key[3:]) is None

        revoke_key(registry, tenant="acme", key_id=first.id)
        revoked = revoke_tenant_keys(registry, tenant="acme")
        assert len(revoked) == 1 and revoked[0].id != first.id  # the first was revoked already
        assert authenticate(registry, key=first_key) is None
        assert authenticate(registry, key=second_key) is None
        assert authenticate(registry, key=other_key) == other
        assert [record.active for record in list_keys(registry)] == [False, False, True]
        assert revoke_key(registry, tenant="acme", key_id=first.id).revoked_at == list_keys(registry)[0].revoked_at
