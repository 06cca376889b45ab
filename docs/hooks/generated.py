"""MkDocs hook: the reference pages that are made from the code, so that they can't drift from it.

A page asks for a generated part with a marker line:

- ``<!-- generated: cli -->``: every ``forwardguard`` command's ``--help``, as the command prints it
  (``serve``'s options come from its settings, so this is the only faithful source);
- ``<!-- generated: report-schema -->``: ``docs/report.schema.json``, the JSON Schema of report.json,
  once the file is there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
REPORT_SCHEMA = DOCS / "report.schema.json"


def on_page_markdown(markdown: str, **_: Any) -> str:
    if "<!-- generated: cli -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli -->", cli_reference())
    if "<!-- generated: report-schema -->" in markdown:
        markdown = markdown.replace("<!-- generated: report-schema -->", report_schema())
    return markdown


def cli_reference() -> str:
    """A section per command (and per command of a group), its ``--help`` in a text block."""
    import typer.main

    from forwardguard.cli import app

    sections: list[str] = []

    def add(command: Any, path: list[str]) -> None:
        level = "#" * (len(path) + 1)
        sections.append(f"{level} `forwardguard {' '.join(path)}`\n\n```text\n{_help(path)}```\n")
        for name, subcommand in getattr(command, "commands", {}).items():
            add(subcommand, [*path, name])

    for name, command in typer.main.get_command(app).commands.items():
        add(command, [name])
    return "\n".join(sections)


def _help(path: list[str]) -> str:
    from typer.testing import CliRunner

    from forwardguard.cli import app

    result = CliRunner().invoke(app, [*path, "--help"], prog_name="forwardguard", terminal_width=100)
    if result.exit_code != 0:
        raise RuntimeError(f"forwardguard {' '.join(path)} --help failed: {result.output}")
    return result.output


def report_schema() -> str:
    if not REPORT_SCHEMA.is_file():
        return "*`docs/report.schema.json` is not published in this checkout yet.*"
    schema = json.loads(REPORT_SCHEMA.read_text())
    return f"[Download report.schema.json](../report.schema.json)\n\n```json\n{json.dumps(schema, indent=2)}\n```\n"
