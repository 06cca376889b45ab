"""RunOptions refuses options that can't work together or name missing files, before a model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwardguard.errors import ForwardguardError
from forwardguard.immunize.runner import RunOptions


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"overwrite": True, "resume": True}, "--overwrite redoes every input and --resume skips"),
        ({"target": "no-such-target.png"}, "target image no-such-target.png not found"),
        ({"mask": Path("no-such-mask.png")}, "mask no-such-mask.png not found"),
        ({"batch_size": 0}, "batch size must be at least 1, got 0"),
        ({"bucket_growth": 0.5}, "bucket growth must be at least 1, got 0.5"),
        ({"bucket_growth": float("nan")}, "bucket growth must be at least 1, got nan"),
        ({"max_pixels": 0}, "max pixels must be at least 1, got 0"),
    ],
)
def test_invalid_options_are_refused(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ForwardguardError, match=message):
        RunOptions(out_dir=tmp_path, **options)


def test_existing_target_and_mask_are_taken(tmp_path: Path) -> None:
    (tmp_path / "target.png").write_bytes(b"read later")
    (tmp_path / "mask.png").write_bytes(b"read later")
    options = RunOptions(out_dir=tmp_path, target=str(tmp_path / "target.png"), mask=tmp_path / "mask.png", resume=True)
    assert options.target == str(tmp_path / "target.png") and options.resume
