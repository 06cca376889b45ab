"""The release gate's section of a model card: ``gate --model-card`` appends it to the card that
``finetune`` wrote beside the checkpoint (its ``README.md``), so the card says whether and why the
model was released."""

from __future__ import annotations

from pathlib import Path

from forwardguard.errors import ForwardguardError
from forwardguard.eval.gate import GateResult, format_limit, format_value, outcome, rule_scope, verdict


def check_card(path: Path) -> None:
    """Refuse a card that does not exist (checked before gating: the gate appends, it never creates)."""
    if not path.is_file():
        raise ForwardguardError(f"--model-card {path}: no such file (it is the checkpoint's model card)")


def gate_section(result: GateResult, *, policy_path: Path, report_path: Path) -> str:
    """The "## Release gate" section: the verdict, the policy and report paths, and the rule table."""
    lines = [
        "## Release gate",
        "",
        f"**{verdict(result)}**",
        "",
        f"- policy: `{policy_path}`",
        f"- report: `{report_path}`",
        "",
        "| rule | snapshot / transform / edit | value | limit | result |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rule in result.rules:
        result_text = outcome(rule) + (f": {rule.reason}" if rule.reason else "")
        cells = (rule.rule, rule_scope(rule), format_value(rule.value), format_limit(rule), result_text)
        lines.append("| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def append_gate_section(path: Path, result: GateResult, *, policy_path: Path, report_path: Path) -> None:
    """Append :func:`gate_section` to the card at ``path``, a blank line before it."""
    section = gate_section(result, policy_path=policy_path, report_path=report_path)
    try:
        existing = path.read_text()
        separator = "" if not existing or existing.endswith("\n\n") else ("\n" if existing.endswith("\n") else "\n\n")
        with path.open("a") as card:
            card.write(separator + section)
    except OSError as error:
        raise ForwardguardError(f"--model-card {path}: cannot append ({error.strerror})") from None


def _markdown_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
