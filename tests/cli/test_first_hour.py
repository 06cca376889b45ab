"""What a new user meets in the first hour (issue 12): help, required options, offline hub ids, progress bars."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from forwardguard.cli import app
from forwardguard.errors import ForwardguardError

runner = CliRunner()


@pytest.mark.parametrize(
    "command", [["immunize"], ["finetune"], ["eval"], ["gate"], ["demo"], ["serve"], ["registry", "snapshot"], ["keys", "create"]]
)
def test_help_shows_no_type_after_flags_and_marks_required_options(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    if command[0] in ("immunize", "eval", "gate"):
        assert "[required]" in result.output


def test_serve_without_a_model_names_the_option(tmp_path, monkeypatch):
    monkeypatch.delenv("FORWARDGUARD_SERVE_MODELS", raising=False)
    result = runner.invoke(app, ["serve", "--registry", str(tmp_path / "reg.db")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --model is required") and result.stderr.count("\n") == 1


def test_a_hub_id_not_cached_while_offline_fails_at_once(monkeypatch):
    from huggingface_hub import constants

    from forwardguard.models import load_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ForwardguardError, match="'someone/no-such-model' is not in the local Hugging Face cache and HF_HUB_OFFLINE"
    ):
        load_model("someone/no-such-model")


def test_a_hub_id_with_the_hub_unreachable_fails_in_one_line(monkeypatch):
    import huggingface_hub

    from forwardguard.models import load_model

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(ForwardguardError, match="not in the local Hugging Face cache and the hub is unreachable") as error:
        load_model("someone/no-such-model")
    assert "\n" not in str(error.value)


def test_the_cli_turns_the_libraries_progress_bars_off(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    runner.invoke(app, ["gate", "--report", str(tmp_path / "missing.json"), "--candidate", "v2"])
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
