"""``report.json``'s models: the published JSON Schema is generated from them, and reading them needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from forwardguard.eval.schema import Report, render

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "report.schema.json"


def test_committed_json_schema_is_the_models_one():
    assert render() == COMMITTED.read_text(), "regenerate it: python -m forwardguard.eval.schema > docs/report.schema.json"


def test_json_schema_describes_the_report():
    schema = json.loads(COMMITTED.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema"]["const"] == "forwardguard.eval.report"
    assert set(schema["required"]) == {field.alias or name for name, field in Report.model_fields.items()}
    p90 = schema["$defs"]["Summary"]["properties"]["p90"]
    assert "90th percentile" in p90["description"] and "p90" not in schema["$defs"]["Summary"]["required"]


def test_the_models_import_no_torch():
    code = "import sys, forwardguard.eval.schema; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
