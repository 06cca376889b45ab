"""One way to record an immunized image: `forwardguard immunize --registry` and POST /v1/immunize record
the same image with the same params (see forwardguard.immunize.recording)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_support import client, new_key
from typer.testing import CliRunner

from forwardguard.cli import app
from forwardguard.registry import Registry


@pytest.mark.parametrize("method", ["encoder", "diffusion"])
def test_cli_and_api_record_an_image_alike(
    method: str, server: str, served_registry: Path, taef2_spec: str, photo, tmp_path: Path
) -> None:
    model = taef2_spec if method == "encoder" else "tiny"
    source = tmp_path / "coffee.png"
    Image.fromarray(photo("coffee", (48, 40))).save(source)
    uploads = {"image": ("coffee.png", source.read_bytes(), "image/png")}
    cli_mask: list[str] = []
    if method == "diffusion":
        mask = tmp_path / "mask.png"
        pixels = np.zeros((40, 48), dtype=np.uint8)
        pixels[8:32, 8:40] = 255
        Image.fromarray(pixels).save(mask)
        uploads["mask"] = ("mask.png", mask.read_bytes(), "image/png")
        cli_mask = ["--mask", str(mask)]

    result = CliRunner().invoke(
        app,
        ["immunize", str(source), "--out", str(tmp_path / "out"), "--model", model, "--method", method,
         "--steps", "2", "--device", "cpu", "--registry", str(served_registry), "--tenant", f"cli-{method}", *cli_mask],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with client(server, new_key(served_registry, f"api-{method}")) as http:
        response = http.post("/v1/immunize", files=uploads, data={"method": method, "steps": "2", "model": model})
    assert response.status_code == 200, response.text

    with Registry.open(served_registry) as registry:
        [by_cli] = registry.list_patterns(tenant=f"cli-{method}")
        by_api = registry.get_pattern(response.headers["x-pattern-id"])
    assert by_api.params == by_cli.params
    assert (by_api.method, by_api.target, by_api.model_fingerprint, by_api.model_spec) == (
        by_cli.method, by_cli.target, by_cli.model_fingerprint, by_cli.model_spec,
    )  # fmt: skip
    assert by_api.pixel_sha256 == by_cli.pixel_sha256, "the same settings must immunize the image alike"
    assert by_cli.params["source"] == "coffee.png" and by_cli.params["steps_run"] == 2
    assert by_cli.params["mask"] == ("mask.png" if method == "diffusion" else None)
    assert "method" not in by_cli.params
