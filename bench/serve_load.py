"""Load test of `forwardguard serve`: immunize requests from concurrent clients against a server it
starts on 127.0.0.1, then a check of the registry against what every client got back.

    .venv/bin/python bench/serve_load.py                                   # 500 requests, 16 clients, TAEF2
    .venv/bin/python bench/serve_load.py --requests 200 --kill-after 50    # SIGKILL the server mid-run, restart it

Each request uploads its own image (seeded noise, --size px), alternating the methods of --methods.
A client answered 503 or 429 waits Retry-After seconds before its next request, and does not retry.
Checks, after the run: `forwardguard registry verify` passes; every registry record belongs to one
request (matched by its clean pixels, exactly the upload's); every accepted request (200) has exactly
one record, whose id and image are the ones it got back; every rejected request (an error answer) has
none. A request lost to the kill (no answer) may have one or none, and is counted. Prints a summary
and one JSON line (also written to --json); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
TENANT = "bench"


def default_model() -> str:
    shared = Path(os.environ.get("FORWARDGUARD_SHARED", REPO_ROOT.parent / "shared"))
    return f"taesd:{shared / 'models' / 'taef2'}"


@dataclass
class Outcome:
    index: int
    method: str
    status: int | None  # None: no answer (the connection failed)
    seconds: float
    pattern_id: str | None = None
    image_sha256: str | None = None


class Server:
    """`forwardguard serve` in a child process; ``restart`` keeps the registry and counts generations."""

    def __init__(self, command: list[str], log_dir: Path) -> None:
        self.command = command
        self.log_dir = log_dir
        self.generation = 0
        self.changed = threading.Condition()
        self.process, self.url = self._start(0)

    def _start(self, generation: int) -> tuple[subprocess.Popen, str]:
        log = self.log_dir / f"serve-{generation}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())
            if found:
                return process, found.group(1)
            if process.poll() is not None:
                break
            time.sleep(0.1)
        process.kill()
        raise SystemExit(f"forwardguard serve did not start:\n{log.read_text()}")

    def kill_and_restart(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        process, url = self._start(self.generation + 1)
        with self.changed:
            self.process, self.url = process, url
            self.generation += 1
            self.changed.notify_all()

    def wait_for_restart(self, generation: int) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.generation > generation, timeout=300)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(300)


def make_image(index: int, size: int) -> np.ndarray:
    """A unique picture per request: a smooth gradient under seeded noise."""
    rng = np.random.default_rng(index)
    ramp = np.linspace(0, 200, size)[None, :, None] + np.linspace(0, 55, size)[:, None, None]
    return np.clip(ramp + rng.integers(-40, 41, (size, size, 3)), 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def run_clients(args: argparse.Namespace, server: Server, key: str, plan: list[tuple[int, str]]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    remaining = iter(plan)

    def client() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:
            while True:
                with lock:
                    item = next(remaining, None)
                if item is None:
                    return
                index, method = item
                generation, url = server.generation, server.url
                files = {"image": (f"{index}.png", png_bytes(make_image(index, args.size)), "image/png")}
                data = {"method": method, "steps": str(args.steps)}
                start = time.perf_counter()
                try:
                    response = http.post(f"{url}/v1/immunize", files=files, data=data)
                except httpx.TransportError:
                    with lock:
                        outcomes.append(Outcome(index, method, None, time.perf_counter() - start))
                    server.wait_for_restart(generation)
                    continue
                outcome = Outcome(index, method, response.status_code, time.perf_counter() - start)
                if response.status_code == 200:
                    outcome.pattern_id = response.headers["x-pattern-id"]
                    outcome.image_sha256 = hashlib.sha256(response.content).hexdigest()
                with lock:
                    outcomes.append(outcome)
                if "retry-after" in response.headers:  # a polite client: the request is not retried
                    time.sleep(float(response.headers["retry-after"]))

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    if args.kill_after:
        while sum(o.status == 200 for o in list(outcomes)) < args.kill_after and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        if any(thread.is_alive() for thread in threads):
            server.kill_and_restart()
    for thread in threads:
        thread.join()
    return outcomes


def check(registry_path: Path, plan: list[tuple[int, str]], outcomes: list[Outcome], size: int) -> list[str]:
    """What went wrong; empty when every record belongs to exactly the requests it should."""
    from forwardguard.registry import Registry

    verify = subprocess.run(
        [sys.executable, "-m", "forwardguard", "registry", "verify", "--registry", str(registry_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    problems = [] if verify.returncode == 0 else [f"registry verify failed: {verify.stdout}{verify.stderr}"]
    by_clean = {hashlib.sha256(make_image(index, size).tobytes()).hexdigest(): index for index, _ in plan}
    records: dict[int, list] = {}
    with Registry.open(registry_path) as registry:
        for record in registry.iter_patterns(tenant=TENANT):
            index = by_clean.get(hashlib.sha256(registry.load_sample(record).clean.tobytes()).hexdigest())
            if index is None:
                problems.append(f"record {record.id} belongs to no request")
                continue
            records.setdefault(index, []).append(record)
    for outcome in outcomes:
        found = records.get(outcome.index, [])
        if outcome.status == 200:
            if len(found) != 1:
                problems.append(f"accepted request {outcome.index} has {len(found)} records")
            elif (found[0].id, found[0].image_sha256) != (outcome.pattern_id, outcome.image_sha256):
                problems.append(f"accepted request {outcome.index}: its record is not the image it got back")
        elif outcome.status is not None and found:
            problems.append(f"rejected request {outcome.index} ({outcome.status}) has {len(found)} records")
        elif len(found) > 1:
            problems.append(f"lost request {outcome.index} has {len(found)} records")
    return problems


def summarize(
    args: argparse.Namespace, outcomes: list[Outcome], seconds: float, restarts: int, registry_path: Path, problems: list[str]
) -> dict:
    from forwardguard.registry import Registry

    accepted = [o.seconds for o in outcomes if o.status == 200]
    statuses: dict[str, int] = {}
    for outcome in outcomes:
        name = "no answer" if outcome.status is None else str(outcome.status)
        statuses[name] = statuses.get(name, 0) + 1
    with Registry.open(registry_path) as registry:
        recorded = len(registry.list_patterns(tenant=TENANT))
    lost_recorded = recorded - len(accepted)
    return {
        "requests": len(outcomes),
        "clients": args.clients,
        "size": args.size,
        "steps": args.steps,
        "methods": args.methods,
        "model": args.model,
        "workers": args.workers,
        "torch_threads": args.torch_threads,
        "statuses": dict(sorted(statuses.items())),
        "accepted": len(accepted),
        "recorded": recorded,
        "lost_but_recorded": lost_recorded,
        "restarts": restarts,
        "p50_s": float(np.percentile(accepted, 50)) if accepted else None,
        "p99_s": float(np.percentile(accepted, 99)) if accepted else None,
        "throughput_per_s": len(accepted) / seconds,
        "seconds": seconds,
        "ok": not problems,
        "problems": problems[:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Model spec (default: TAEF2 from the shared folder).")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="Side of each uploaded image, px.")
    parser.add_argument("--steps", type=int, default=5, help="PGD steps of the encoder attack.")
    parser.add_argument("--methods", default="noise,encoder", help="Comma-separated, used in turn.")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=None, help="The server's --torch-threads.")
    parser.add_argument("--queue-size", type=int, default=8, help="Small, so that bursts get 503s.")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--kill-after", type=int, default=0, help="SIGKILL the server after N accepted requests.")
    parser.add_argument("--work-dir", type=Path, default=None, help="Registry and logs (default: a temporary folder).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.model = args.model or default_model()
    methods = args.methods.split(",")
    plan = [(index, methods[index % len(methods)]) for index in range(args.requests)]

    from forwardguard.registry import Registry
    from forwardguard.registry.keys import create_key

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="serve-load-"))
    work.mkdir(parents=True, exist_ok=True)
    registry_path = work / "reg.db"
    with Registry.open(registry_path, create=True) as registry:
        _, key = create_key(registry, tenant=TENANT)
    command = [
        sys.executable,
        "-m",
        "forwardguard",
        "serve",
        "--registry",
        str(registry_path),
        "--model",
        args.model,
        "--port",
        "0",
        "--device",
        "cpu",
        "--workers",
        str(args.workers),
        "--queue-size",
        str(args.queue_size),
        "--max-batch",
        str(args.max_batch),
        "--max-steps",
        str(max(args.steps, 1)),
        "--rate-per-minute",
        "1000000",
        "--rate-burst",
        "1000000",
    ]
    if args.torch_threads is not None:
        command += ["--torch-threads", str(args.torch_threads)]
    server = Server(command, work)
    start = time.perf_counter()
    try:
        outcomes = run_clients(args, server, key, plan)
        seconds = time.perf_counter() - start
    finally:
        server.stop()
    problems = check(registry_path, plan, outcomes, args.size)
    result = summarize(args, outcomes, seconds, server.generation, registry_path, problems)

    print(
        f"{result['requests']} requests from {args.clients} clients ({args.methods}, {args.size}px, "
        f"{args.steps} steps, {args.model}) in {seconds:.1f} s, {server.generation} restarts"
    )
    print(
        f"  answers: {result['statuses']}; recorded {result['recorded']} "
        f"({result['lost_but_recorded']} of them for requests that got no answer)"
    )
    if result["accepted"]:
        print(
            f"  accepted latency p50 {result['p50_s']:.3f} s, p99 {result['p99_s']:.3f} s; "
            f"throughput {result['throughput_per_s']:.2f} accepted/s"
        )
    print("  checks: " + ("every record matches its request" if not problems else f"{len(problems)} problems"))
    for problem in problems[:20]:
        print(f"    {problem}")
    print(json.dumps(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result | {"outcomes": [asdict(o) for o in outcomes]}, indent=2) + "\n")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
