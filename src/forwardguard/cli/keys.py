"""``forwardguard keys ...``: the API keys of ``forwardguard serve``, one tenant each.

SQLAlchemy and the registry are imported inside the commands, so that the CLI starts fast.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from forwardguard.cli.common import user_errors
from forwardguard.cli.registry import RegistryOption

app = typer.Typer(
    name="keys",
    help="Create, list and revoke the API keys of `forwardguard serve`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

TenantOption = Annotated[str, typer.Option("--tenant", help="The tenant the key acts for.", show_default=False)]


@app.command("create")
def create_command(
    tenant: TenantOption,
    registry: RegistryOption,
    name: Annotated[str | None, typer.Option(help="A label for the key, e.g. who holds it.")] = None,
) -> None:
    """Create a key; it is printed once, alone on the last line, and only its hash is stored."""
    with user_errors():
        from forwardguard.registry import Registry
        from forwardguard.registry.keys import create_key

        with Registry.open(registry) as opened:
            record, key = create_key(opened, tenant=tenant, name=name)
    typer.echo(f"created key {record.id} for tenant {record.tenant}; store it now, it is not shown again:")
    typer.echo(key)


@app.command("list")
def list_command(
    registry: RegistryOption,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
) -> None:
    """List keys (never the keys themselves): id, tenant, name, created, revoked."""
    with user_errors():
        from forwardguard.registry import Registry
        from forwardguard.registry.keys import list_keys

        with Registry.open(registry) as opened:
            records = list_keys(opened, tenant=tenant)
    if as_json:
        typer.echo(json.dumps([record.to_dict() for record in records], indent=2))
        return
    for record in records:
        state = "active" if record.active else f"revoked {record.revoked_at:%Y-%m-%d %H:%M}"
        typer.echo(
            f"{record.id}  {record.tenant}  created {record.created_at:%Y-%m-%d %H:%M}  {state}  {record.name or ''}".rstrip()
        )


@app.command("revoke")
def revoke_command(
    tenant: TenantOption,
    registry: RegistryOption,
    key_id: Annotated[str | None, typer.Argument(help="The key's id (see `keys list`).", show_default=False)] = None,
    revoke_all: Annotated[bool, typer.Option("--all", help="Revoke every key of the tenant.")] = False,
) -> None:
    """Revoke one key of a tenant, or all of them with --all; requests with it get 401 at once."""
    with user_errors():
        from forwardguard.errors import ForwardguardError
        from forwardguard.registry import Registry
        from forwardguard.registry.keys import revoke_key, revoke_tenant_keys

        if (key_id is None) != revoke_all:
            raise ForwardguardError("give either a key id or --all (every key of the tenant)")
        with Registry.open(registry) as opened:
            revoked = (
                revoke_tenant_keys(opened, tenant=tenant)
                if key_id is None
                else [revoke_key(opened, tenant=tenant, key_id=key_id)]
            )
    for record in revoked:
        typer.echo(f"revoked key {record.id} of tenant {record.tenant}")
    if revoke_all:
        typer.echo(f"{len(revoked)} keys revoked")
