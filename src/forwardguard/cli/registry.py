"""``forwardguard registry ...``: wires the options to :class:`forwardguard.registry.Registry`.

SQLAlchemy and the registry are imported inside the commands, so that the CLI starts fast.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from forwardguard.cli.common import print_error, user_errors

if TYPE_CHECKING:
    from forwardguard.registry import Registry

app = typer.Typer(
    name="registry",
    help="Record, find, freeze and check perturbation patterns.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

RegistryOption = Annotated[
    str,
    typer.Option(
        "--registry",
        envvar="FORWARDGUARD_REGISTRY",
        help="SQLite file path (or sqlite:///PATH), or postgresql://USER:PASSWORD@HOST/DB?blobs=/shared/folder.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _open(location: str, *, create: bool = False) -> Registry:
    from forwardguard.registry import Registry

    return Registry.open(location, create=create)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _print_json_array(values: Iterable[Any]) -> None:
    """Print a JSON array as :func:`_print_json` would, an element at a time (never all in memory)."""
    separator = "[\n"
    for value in values:
        typer.echo(separator + textwrap.indent(json.dumps(value, indent=2), "  "), nl=False)
        separator = ",\n"
    typer.echo("[]" if separator == "[\n" else "\n]")


def _fields(values: dict[str, Any]) -> None:
    """Print ``name  value`` lines, nested values as JSON."""
    width = max(len(name) for name in values)
    for name, value in values.items():
        text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
        typer.echo(f"{name:<{width}}  {text}")


def _short(value: str) -> str:
    return value[:12]


@app.command("init")
def init_command(registry: RegistryOption) -> None:
    """Create a registry, or migrate an existing one to this version's schema."""
    with user_errors(), _open(registry, create=True) as opened:
        typer.echo(f"registry {opened.display()} is ready (schema {opened.schema_revision}, blobs in {opened.blob_root})")


@app.command("list")
def list_command(
    registry: RegistryOption,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's patterns.")] = None,
    method: Annotated[str | None, typer.Option(help="Only patterns made by this method.")] = None,
    model_fingerprint: Annotated[str | None, typer.Option(help="Only patterns made against this model.")] = None,
    status: Annotated[str | None, typer.Option(help="active or retired (default: both).")] = None,
    snapshot: Annotated[str | None, typer.Option(help="Only the patterns this snapshot froze.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many patterns (default: all).")] = None,
    as_json: JsonOption = False,
) -> None:
    """List patterns, oldest first."""
    with user_errors(), _open(registry) as opened:
        records = opened.iter_patterns(
            tenant=tenant,
            method=method,
            model_fingerprint=model_fingerprint,
            status=status,
            snapshot=snapshot,
            limit=limit,
        )
        if as_json:
            _print_json_array(record.to_dict() for record in records)
            return
        # Printed as the rows come (a registry may hold millions): fixed columns, not a measured table.
        typer.echo(_LIST_ROW.format("id", "method", "model", "tenant", "size", "status", "created (UTC)"))
        count = 0
        for r in records:
            count += 1
            size = f"{r.width}x{r.height}"
            created = f"{r.created_at:%Y-%m-%d %H:%M}"
            typer.echo(_LIST_ROW.format(_short(r.id), r.method, _short(r.model_fingerprint), r.tenant, size, r.status, created))
        typer.echo(f"{count} patterns")


_LIST_ROW = "{:<12}  {:<9}  {:<12}  {:<10}  {:<9}  {:<7}  {}"


@app.command("show")
def show_command(
    pattern_id: Annotated[str, typer.Argument(help="Pattern id, or a unique prefix of 6+ characters.", show_default=False)],
    registry: RegistryOption,
    as_json: JsonOption = False,
) -> None:
    """Show one pattern's record."""
    with user_errors(), _open(registry) as opened:
        record = opened.get_pattern(pattern_id).to_dict()
    if as_json:
        _print_json(record)
    else:
        _fields(record)


@app.command("lookup")
def lookup_command(
    image: Annotated[Path, typer.Argument(help="An image file: PNG, JPEG or WebP.", show_default=False)],
    registry: RegistryOption,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's patterns.")] = None,
    max_distance: Annotated[int | None, typer.Option(help="Largest perceptual-hash distance that matches (of 64 bits).")] = None,
    perceptual: Annotated[
        bool, typer.Option("--perceptual", help="Search perceptual hashes even when the file or its pixels match exactly.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Find an image's pattern; exit status 1 when none matches.

    Exact file or pixels first; the perceptual hash (JPEG re-encoded or resized copies) when nothing
    matched exactly, or with --perceptual.
    """
    with user_errors():
        from forwardguard.errors import ForwardguardError
        from forwardguard.registry import PHASH_MAX_DISTANCE

        try:
            data = image.read_bytes()
        except OSError as error:
            raise ForwardguardError(f"can't read {image}: {error.strerror}") from None
        with _open(registry) as opened:
            matches = opened.lookup(
                data,
                tenant=tenant,
                max_distance=PHASH_MAX_DISTANCE if max_distance is None else max_distance,
                perceptual=perceptual,
            )
    if as_json:
        _print_json([match.to_dict() for match in matches])
    else:
        for match in matches:
            typer.echo(f"{match.pattern.id}  distance {match.distance}  {match.kind}  {match.pattern.status}")
    if not matches:
        if not as_json:
            print_error(f"no pattern matches {image}")
        raise typer.Exit(1)


@app.command("verify")
def verify_command(
    registry: RegistryOption,
    sample: Annotated[int | None, typer.Option(min=1, help="Only this many patterns, from a random point.")] = None,
    shard: Annotated[
        str | None, typer.Option(help="I/N: only the i-th of n equal parts of the patterns and blobs (0 <= I < N).")
    ] = None,
    after: Annotated[str | None, typer.Option(help="Resume after this pattern id (as the progress lines print it).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-hash every blob; name each missing or corrupted one; exit 1 if any.

    Every 1,000 patterns it prints on stderr how far it got, with the id to resume --after.
    """
    with user_errors():

        def progress(count: int, last_id: str) -> None:
            typer.echo(f"verified {count} patterns, through {last_id} (resume with --after {last_id})", err=True)

        with _open(registry) as opened:
            report = opened.verify(shard=_shard(shard), sample=sample, after=after, progress=progress)
    if as_json:
        _print_json(report.to_dict())
    else:
        for problem in report.problems:
            typer.echo(problem.describe(), err=True)
        orphans = "" if report.orphans is None else f", {len(report.orphans)} unreferenced blobs"
        typer.echo(
            f"{report.patterns} patterns, {report.blobs} blobs checked: {len(report.problems)} problems{orphans}"
            + (" (remove them with `registry gc`)" if report.orphans else "")
        )
    if not report.ok:
        raise typer.Exit(1)


def _shard(value: str | None) -> tuple[int, int] | None:
    """``I/N`` as ``(i, n)``."""
    if value is None:
        return None
    from forwardguard.errors import ForwardguardError

    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit()):
        raise ForwardguardError(f"--shard must be I/N, e.g. 0/4, got {value!r}")
    return int(index), int(count)


@app.command("snapshot")
def snapshot_command(
    registry: RegistryOption,
    name: Annotated[str, typer.Option(help="The new snapshot's unique name.", show_default=False)],
    method: Annotated[str | None, typer.Option(help="Only patterns made by this method.")] = None,
    model_fingerprint: Annotated[str | None, typer.Option(help="Only patterns made against this model.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's patterns.")] = None,
) -> None:
    """Freeze the matching active patterns (all of them by default) under a new name."""
    with user_errors(), _open(registry) as opened:
        snapshot = opened.create_snapshot(name, method=method, model_fingerprint=model_fingerprint, tenant=tenant)
        typer.echo(f"snapshot {snapshot.name}: {snapshot.pattern_count} patterns")


@app.command("export")
def export_command(
    registry: RegistryOption,
    snapshot: Annotated[str, typer.Option(help="The snapshot to export.", show_default=False)],
    to: Annotated[Path, typer.Option("--to", help="A new folder for the dataset.", show_default=False)],
) -> None:
    """Export a snapshot as a Hugging Face datasets dataset on disk (load it with datasets.load_from_disk)."""
    with user_errors(), _open(registry) as opened:
        report = opened.export(snapshot, to)
        typer.echo(f"exported {report.rows} patterns of snapshot {report.snapshot} to {report.path}")


@app.command("retire")
def retire_command(
    pattern_id: Annotated[str, typer.Argument(help="Pattern id, or a unique prefix of 6+ characters.", show_default=False)],
    registry: RegistryOption,
) -> None:
    """Retire a pattern: new snapshots skip it; the snapshots that hold it keep it."""
    with user_errors(), _open(registry) as opened:
        record = opened.retire(pattern_id)
        typer.echo(f"pattern {record.id} is {record.status}")


@app.command("gc")
def gc_command(
    registry: RegistryOption,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
) -> None:
    """Remove blobs that no pattern references (left by a writer that died before its commit)."""
    with user_errors(), _open(registry) as opened:
        report = opened.gc(dry_run=dry_run)
    for key in report.removed_blobs:
        typer.echo(f"{'would remove' if dry_run else 'removed'} blob {key}")
    for path in report.removed_temporaries:
        typer.echo(f"removed temporary file {path}")
    typer.echo(f"{len(report.removed_blobs)} unreferenced blobs {'found' if dry_run else 'removed'}")


@app.command("stats")
def stats_command(registry: RegistryOption, as_json: JsonOption = False) -> None:
    """Counts of patterns, snapshots, models and blobs."""
    with user_errors(), _open(registry) as opened:
        stats = opened.stats()
    if as_json:
        _print_json(stats)
    else:
        _fields(stats)
