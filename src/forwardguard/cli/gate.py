"""``forwardguard gate``: applies a release policy to an eval report; the exit status is the verdict.

0 releases the candidate, 1 holds it, 2 means the report, the policy or the model card is unusable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forwardguard.cli.common import print_error
from forwardguard.configs import GATE_POLICY

RELEASE, HOLD, UNUSABLE = 0, 1, 2


def gate_command(
    report: Annotated[Path, typer.Option(help="report.json written by `forwardguard eval`.")],
    candidate: Annotated[str, typer.Option(help="The model to release or hold: its NAME in the eval's --model NAME=SPEC.")],
    policy: Annotated[Path, typer.Option(help="Gate policy YAML (default: the shipped configs/gate.yaml).")] = GATE_POLICY,
    model_card: Annotated[
        Path | None, typer.Option("--model-card", help="Append a '## Release gate' section to this existing markdown file.")
    ] = None,
) -> None:
    """Release or hold a candidate model: exit 0 to release, 1 to hold, 2 for an unusable report or policy."""
    from forwardguard.errors import ForwardguardError

    try:
        from forwardguard.eval.card import append_gate_section, check_card
        from forwardguard.eval.gate import gate, load_policy
        from forwardguard.eval.schema import load_report

        if model_card is not None:
            check_card(model_card)
        result = gate(load_report(report), load_policy(policy), candidate)
        print_gate(result)
        if model_card is not None:
            append_gate_section(model_card, result, policy_path=policy, report_path=report)
    except ForwardguardError as error:
        print_error(str(error))
        raise typer.Exit(UNUSABLE) from None
    except Exception as error:  # a crash must not exit 1, which reads as a verdict (HOLD)
        print_error(f"cannot gate {report}: {type(error).__name__}: {error}")
        raise typer.Exit(UNUSABLE) from None
    raise typer.Exit(RELEASE if result.released else HOLD)


def print_gate(result) -> None:  # noqa: ANN001  (a GateResult; imported lazily)
    """The gate's table of rules, the reasons of the failed ones, and the verdict."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from forwardguard.eval.gate import format_limit, format_value, outcome, rule_scope, verdict

    table = Table(title=f"release gate: {_escape(result.candidate)}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("rule", no_wrap=True)
    table.add_column("snapshot / transform / edit", overflow="fold")
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("limit", no_wrap=True)
    table.add_column("result", no_wrap=True)
    colours = {"pass": "green", "HOLD": "red", "skipped": "yellow"}
    notes = []
    for rule in result.rules:
        text = outcome(rule)
        shown = f"[{colours[text]}]{text}[/]"
        if rule.reason:
            notes.append(rule.reason)
            shown += f" \\[{len(notes)}]"
        table.add_row(_escape(rule.rule), _escape(rule_scope(rule)), format_value(rule.value), format_limit(rule), shown)
    console = Console()
    if not console.is_terminal:  # a file or a pipe: no terminal to fit, keep each rule on one line
        console = Console(width=140)
    console.print(table)
    for number, note in enumerate(notes, 1):
        console.print(f"\\[{number}] {_escape(note)}", soft_wrap=True)
    console.print(f"[bold {'green' if result.released else 'red'}]{_escape(verdict(result))}[/]", soft_wrap=True)


def _escape(text: str) -> str:
    """Names come from users: rich must print them, not read them as markup."""
    from rich.markup import escape

    return escape(text)
