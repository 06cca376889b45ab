"""The serve tests' shared server: TAEF2 (encoder, noise) and tiny (diffusion), tight limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_support import make_registry, running_server

from forwardguard.serve import ServeSettings


@pytest.fixture(scope="package")
def served_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_registry(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="package")
def serve_settings(served_registry: Path, taef2_spec: str) -> ServeSettings:
    return ServeSettings(
        registry=str(served_registry),
        models=[taef2_spec, "tiny"],
        device="cpu",
        max_pixels=300_000,
        max_upload_mb=1,
        max_steps=20,
        default_steps=2,
        rate_per_minute=6000,
        rate_burst=1000,
        request_timeout_s=240,
    )


@pytest.fixture(scope="package")
def server(serve_settings: ServeSettings) -> str:
    """The base URL of a real server on 127.0.0.1, shared by the tests (each uses its own keys)."""
    with running_server(serve_settings) as url:
        yield url
