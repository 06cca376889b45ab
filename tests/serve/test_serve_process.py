"""`forwardguard serve` as a process: graceful shutdown on SIGTERM, and one-line startup errors."""

from __future__ import annotations

import hashlib
import signal
import threading
from pathlib import Path

import httpx
from serve_support import (
    ServeProcess,
    client,
    immunize,
    make_registry,
    new_key,
    random_image,
    wait_for_metric,
)
from typer.testing import CliRunner

from forwardguard.cli import app
from forwardguard.registry import Registry


def test_sigterm_lets_the_request_in_flight_finish_and_be_recorded(tmp_path: Path, taef2_spec: str) -> None:
    registry = make_registry(tmp_path)
    key = new_key(registry, "graceful")
    server = ServeProcess(registry, [taef2_spec], tmp_path / "serve.log", "--torch-threads", "1")
    try:
        responses: list[httpx.Response] = []
        with client(server.url, key) as http:
            thread = threading.Thread(target=lambda: responses.append(immunize(http, random_image(seed=0, size=256), steps=5)))
            thread.start()
            wait_for_metric(server.url, "forwardguard_immunizations_running", 1)
            server.process.send_signal(signal.SIGTERM)
            thread.join()
        assert server.process.wait(120) == -signal.SIGTERM  # uvicorn re-raises the signal once it is done
    finally:
        server.stop()
    (response,) = responses
    assert response.status_code == 200, response.text
    with Registry.open(registry) as opened:
        record = opened.get_pattern(response.headers["x-pattern-id"])
        assert opened.verify().ok
    assert record.image_sha256 == hashlib.sha256(response.content).hexdigest()
    log = server.log.read_text()
    assert log.index("Shutting down") < log.index('"POST /v1/immunize HTTP/1.1" 200') < log.index("Application shutdown complete")


def test_startup_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["serve", "--registry", str(tmp_path / "none.db"), "--model", "tiny"])
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines()[-1].startswith(f"error: no registry at {tmp_path / 'none.db'}")

    registry = make_registry(tmp_path)
    no_model = runner.invoke(app, ["serve", "--registry", str(registry)])
    assert no_model.exit_code == 1
    assert no_model.output.strip().splitlines()[-1] == ("error: --model is required (or FORWARDGUARD_SERVE_MODELS)")
    bad_limit = runner.invoke(
        app, ["serve", "--registry", str(registry), "--model", "tiny", "--max-steps", "10", "--default-steps", "20"]
    )
    assert bad_limit.exit_code == 1
    assert "default_steps 20 is over max_steps 10" in bad_limit.output

    bad_model = runner.invoke(app, ["serve", "--registry", str(registry), "--model", "tiny:x", "--port", "0"])
    assert bad_model.exit_code == 1
    assert bad_model.output.strip().splitlines()[-1] == (
        "error: the server did not start: model spec 'tiny:x': tiny takes a non-negative integer seed, as in tiny:3"
    )
