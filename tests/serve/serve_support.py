"""Helpers of the serve tests: real servers on 127.0.0.1 (in a thread, or a `forwardguard serve`
process), images as upload bytes, and reading /metrics."""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from forwardguard.registry import Registry
from forwardguard.registry.keys import create_key
from forwardguard.serve import ServeSettings, build_server

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running_server(settings: ServeSettings) -> Iterator[str]:
    """A real uvicorn server in a thread, on a free port; yields its base URL and stops it after."""
    server = build_server(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start: {getattr(server.config.app.state, 'startup_error', None)}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


class ServeProcess:
    """`forwardguard serve` in its own process, its log in a file; the port is read from the log."""

    def __init__(self, registry: Path, models: list[str], log: Path, *options: str) -> None:
        command = [sys.executable, "-m", "forwardguard", "serve", "--registry", str(registry), "--port", "0"]
        for model in models:
            command += ["--model", model]
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen([*command, *options], stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        self.url = self._wait_for_port()

    def _wait_for_port(self) -> str:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", self.log.read_text())
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.process.kill()
        raise RuntimeError(f"forwardguard serve did not start:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(60)


def make_registry(folder: Path) -> Path:
    path = folder / "reg.db"
    Registry.open(path, create=True).close()
    return path


def new_key(registry: Path, tenant: str) -> str:
    with Registry.open(registry) as opened:
        return create_key(opened, tenant=tenant)[1]


def client(url: str, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.Client(base_url=url, headers=headers, timeout=300)


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def random_image(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def immunize(http: httpx.Client, rgb: np.ndarray, name: str = "photo.png", **fields: object) -> httpx.Response:
    data = {name_: str(value) for name_, value in fields.items()}
    return http.post("/v1/immunize", files={"image": (name, png_bytes(rgb), "image/png")}, data=data)


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for_metric(url: str, name: str, value: float, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(url, name) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not reach {value} within {timeout_s} s")
        time.sleep(0.05)


def pattern_count(registry: Path) -> int:
    with Registry.open(registry) as opened:
        return len(opened.list_patterns())
