"""``--gauntlet``: the built-in gauntlet, none, or a YAML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwardguard.configs import GAUNTLET as GAUNTLET_YAML
from forwardguard.errors import ForwardguardError
from forwardguard.eval.settings import resolve_gauntlet
from forwardguard.transforms import GAUNTLET


def test_default_is_the_built_in_gauntlet_and_none_is_empty() -> None:
    assert resolve_gauntlet("default") == tuple(transform.name for transform in GAUNTLET)
    assert "jpeg_q75" in resolve_gauntlet("default")
    assert resolve_gauntlet("none") == ()


def test_a_file_names_its_transforms(tmp_path: Path) -> None:
    path = tmp_path / "gauntlet.yaml"
    path.write_text("transforms: [jpeg_q75, hflip]\n")
    assert resolve_gauntlet(str(path)) == ("jpeg_q75", "hflip")
    assert resolve_gauntlet(str(GAUNTLET_YAML)) == resolve_gauntlet("default")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ForwardguardError, match=r"--gauntlet .*missing\.yaml: cannot read"):
        resolve_gauntlet(str(tmp_path / "missing.yaml"))
