"""The ``forwardguard`` command: registers each command group; the work lives in the modules.

Heavy libraries (torch, diffusers, SQLAlchemy) are imported inside the commands, so that
``forwardguard --help`` and argument errors answer at once.
"""

from __future__ import annotations

import os

import typer

from forwardguard.cli.demo import demo_command
from forwardguard.cli.eval import eval_command
from forwardguard.cli.finetune import finetune_command
from forwardguard.cli.gate import gate_command
from forwardguard.cli.immunize import immunize_command
from forwardguard.cli.keys import app as keys_app
from forwardguard.cli.registry import app as registry_app
from forwardguard.cli.serve import PASS_THROUGH, serve_command

app = typer.Typer(
    name="forwardguard",
    help="Immunize images against AI editing, and keep them immunized in future model versions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: flags show no type, required options say [required]
)
app.command("immunize")(immunize_command)
app.command("finetune")(finetune_command)
app.command("eval")(eval_command)
app.command("gate")(gate_command)
app.command("demo")(demo_command)
app.add_typer(registry_app, name="registry")
app.command("serve", context_settings=PASS_THROUGH, add_help_option=False)(serve_command)
app.add_typer(keys_app, name="keys")


def _show_version(value: bool) -> None:
    if value:
        from forwardguard import __version__

        typer.echo(f"forwardguard {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True, help="Print the version."),
) -> None:
    """Immunize images against AI editing, and keep them immunized in future model versions."""
    # The commands show their own progress; the libraries' bars (loading and writing weights) would only
    # spill escape codes into it. A user who wants them sets HF_HUB_DISABLE_PROGRESS_BARS=0.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
