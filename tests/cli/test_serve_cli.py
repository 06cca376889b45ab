"""``forwardguard serve``'s options are made from ServeSettings, and a missing ``serve`` extra is one error line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from forwardguard.cli import app

runner = CliRunner()


def test_every_setting_is_an_option_with_its_description() -> None:
    from forwardguard.serve.settings import ServeSettings, option_name

    result = runner.invoke(app, ["serve", "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: forwardguard serve [OPTIONS]")
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip().startswith("--")}
    for name, field in ServeSettings.model_fields.items():
        assert field.description, f"{name} has no description for its option's help"
        assert field.description in lines[option_name(name)]
    assert "(default 8000)" in lines["--port"] and "(default 0.12549)" in lines["--max-eps"]
    assert "Required." in lines["--registry"] and "Required." in lines["--model"]


def test_the_options_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import forwardguard.serve

    started = []
    monkeypatch.setattr(forwardguard.serve, "run", started.append)
    monkeypatch.setenv("FORWARDGUARD_REGISTRY", "from-the-variable.db")
    monkeypatch.setenv("FORWARDGUARD_SERVE_QUEUE_SIZE", "16")
    result = runner.invoke(
        app,
        [
            "serve",
            "--model",
            "tiny",
            "--model",
            "tiny:1",
            "--port",
            "0",
            "--max-eps",
            "8/255",
            "--request-timeout",
            "1/2",
        ],
    )
    assert result.exit_code == 0, result.output
    [settings] = started
    assert settings.registry == "from-the-variable.db" and settings.models == ["tiny", "tiny:1"]
    assert settings.port == 0 and settings.max_eps == 8 / 255 and settings.request_timeout_s == 0.5
    assert settings.queue_size == 16 and settings.workers == 1  # a variable, and a default


def test_a_missing_registry_names_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDGUARD_REGISTRY", raising=False)
    monkeypatch.delenv("FORWARDGUARD_SERVE_REGISTRY", raising=False)
    result = runner.invoke(app, ["serve", "--model", "tiny"])
    assert result.exit_code == 1
    assert result.stderr == "error: --registry is required (or FORWARDGUARD_SERVE_REGISTRY)\n"


@pytest.mark.parametrize("module", ["fastapi", "pydantic_settings"])
def test_serve_without_the_serve_extra_is_one_error_line(module: str) -> None:
    """An import that fails as it does when the extra is not installed (None in sys.modules)."""
    program = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from forwardguard.cli import app\n"
        "app(['serve', '--registry', 'reg.db', '--model', 'tiny'], prog_name='forwardguard')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"error: {module} is not installed; this command needs the serve extra: pip install 'forwardguard[serve]'\n"
    )
