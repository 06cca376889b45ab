"""Limits that need a server of their own: per-key rate (429), a full queue (503) and batching,
the request timeout (504) and the upload timeout (408), and health when the registry breaks."""

from __future__ import annotations

import socket
import sqlite3
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from serve_support import (
    client,
    immunize,
    make_registry,
    metric,
    new_key,
    pattern_count,
    random_image,
    running_server,
    wait_for_metric,
)

from forwardguard.serve import ServeSettings


def _settings(registry: Path, model: str, **overrides: object) -> ServeSettings:
    values = {"registry": str(registry), "models": [model], "device": "cpu", "rate_burst": 1000, "rate_per_minute": 6000}
    return ServeSettings(**(values | overrides))


def _in_thread(http: httpx.Client, *args: object, **fields: object) -> tuple[threading.Thread, list[httpx.Response]]:
    responses: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: responses.append(immunize(http, *args, **fields)))
    thread.start()
    return thread, responses


def test_rate_limit_is_per_key_with_retry_after(tmp_path: Path, taef2_spec: str) -> None:
    registry = make_registry(tmp_path)
    settings = _settings(registry, taef2_spec, rate_burst=2, rate_per_minute=6)
    busy_key, calm_key = new_key(registry, "busy"), new_key(registry, "calm")
    with running_server(settings) as url, client(url, busy_key) as busy, client(url, calm_key) as calm:
        assert [busy.get("/v1/models").status_code for _ in range(2)] == [200, 200]
        limited = immunize(busy, random_image(seed=1), method="noise")
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 10
        assert calm.get("/v1/models").status_code == 200
    assert pattern_count(registry) == 0


def test_full_queue_is_503_and_alike_waiting_requests_are_batched(tmp_path: Path, taef2_spec: str) -> None:
    registry = make_registry(tmp_path)
    settings = _settings(registry, taef2_spec, queue_size=3, max_batch=4, max_steps=20)
    with running_server(settings) as url, client(url, new_key(registry, "queue")) as http:
        slow, slow_response = _in_thread(http, random_image(seed=0, size=256), steps=12)
        wait_for_metric(url, "forwardguard_immunizations_running", 1)
        waiting = [_in_thread(http, random_image(seed=seed), steps=1) for seed in (1, 2, 3)]
        wait_for_metric(url, "forwardguard_queue_depth", 3)

        refused = immunize(http, random_image(seed=4), steps=1)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"

        for thread, _ in [(slow, slow_response), *waiting]:
            thread.join()
        responses = slow_response + [response for _, responses in waiting for response in responses]
        assert [response.status_code for response in responses] == [200] * 4
        assert len({response.headers["x-pattern-id"] for response in responses}) == 4
        # The slow job alone, then the three alike ones that waited for it in one batch.
        assert metric(url, "forwardguard_batch_size_count") == 2
        assert metric(url, "forwardguard_batch_size_sum") == 4
    assert pattern_count(registry) == 4


def test_robust_and_plain_requests_are_not_batched_together(tmp_path: Path, taef2_spec: str) -> None:
    registry = make_registry(tmp_path)
    settings = _settings(registry, taef2_spec, max_batch=8, max_steps=20)
    with running_server(settings) as url, client(url, new_key(registry, "mixed")) as http:
        slow, slow_response = _in_thread(http, random_image(seed=0, size=256), steps=12)
        wait_for_metric(url, "forwardguard_immunizations_running", 1)
        kinds = [{}, {"robust": "true"}, {}, {"robust_mix": "hflip"}, {"robust": "true"}, {"robust_draws": 2}]
        waiting = [_in_thread(http, random_image(seed=seed), steps=1, **fields) for seed, fields in enumerate(kinds, 1)]
        wait_for_metric(url, "forwardguard_queue_depth", len(kinds))

        for thread, _ in [(slow, slow_response), *waiting]:
            thread.join()
        responses = slow_response + [response for _, responses in waiting for response in responses]
        assert [response.status_code for response in responses] == [200] * 7, [r.text for r in responses]
        # The slow job alone, then the three plain ones (draws without a mix is plain), the two with
        # the default mix, and the hflip one: a batch per attack.
        assert metric(url, "forwardguard_batch_size_count") == 4
        assert metric(url, "forwardguard_batch_size_sum") == 7
    assert pattern_count(registry) == 7


def test_request_timeout_is_504_and_the_work_is_dropped(tmp_path: Path, taef2_spec: str) -> None:
    registry = make_registry(tmp_path)
    settings = _settings(registry, taef2_spec, request_timeout_s=2, max_steps=500)
    with running_server(settings) as url, client(url, new_key(registry, "slow")) as http:
        response = immunize(http, random_image(seed=0, size=256), steps=500)
        assert response.status_code == 504
        assert "nothing was recorded" in response.json()["detail"]
        # The batch stops at its next step instead of running its 500 steps, and the worker is free.
        wait_for_metric(url, "forwardguard_immunizations_running", 0, timeout_s=60)
        assert immunize(http, random_image(seed=1, size=32), method="noise").status_code == 200
    assert pattern_count(registry) == 1


def test_a_body_that_does_not_arrive_in_time_is_408(tmp_path: Path, taef2_spec: str) -> None:
    registry = make_registry(tmp_path)
    key = new_key(registry, "slow-upload")  # without one, the answer is 401 before the body (test_serve_hardening)
    with running_server(_settings(registry, taef2_spec, upload_timeout_s=1)) as url:
        address = urlsplit(url)
        with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
            connection.sendall(
                b"POST /v1/immunize HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                + f"Authorization: Bearer {key}\r\n".encode()
                + b"Content-Length: 1000\r\n\r\n--b\r\n"
            )
            answer = b""
            while chunk := connection.recv(65536):  # the server closes the connection after its answer
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"did not arrive within 1 s" in answer


def test_health_reports_an_unreachable_registry(tmp_path: Path, taef2_spec: str) -> None:
    registry = make_registry(tmp_path)
    key = new_key(registry, "health")
    with running_server(_settings(registry, taef2_spec)) as url, client(url, key) as http:
        assert http.get("/healthz").status_code == 200
        with sqlite3.connect(registry) as connection:
            connection.execute("DROP TABLE snapshot_patterns")
            connection.execute("DROP TABLE patterns")
        health = http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable" and "no such table: patterns" in health.json()["registry"]
        missing = http.get(f"/v1/patterns/{'a' * 64}")
        assert missing.status_code == 503 and "the registry is unavailable" in missing.json()["detail"]
