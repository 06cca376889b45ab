"""Registry insert rate: --writers processes record --patterns synthetic patterns into a new
registry, one transaction each with fsynced blobs, as a service's workers would. Prints one JSON
line per backend: patterns per second and the p50/p99 latency of one recording.

    python bench/registry_inserts.py --patterns 800 --size 16 --backend sqlite --backend postgresql

It uses forwardguard's public API only (``Registry.open``, ``record_pattern``), so that it measures
any version of it: to compare with an older commit, run it with that commit's sources first on the
path (a git worktree), alternating with the current ones, each run alone:

    git worktree add /tmp/forwardguard-old COMMIT
    PYTHONPATH=/tmp/forwardguard-old/src python bench/registry_inserts.py --backend sqlite --backend postgresql
    python bench/registry_inserts.py --backend sqlite --backend postgresql

bench/registry_bench.py records its sampled patterns with the same functions, into a registry that
already holds millions of rows. PostgreSQL runs in a fresh schema of FORWARDGUARD_TEST_POSTGRES_URL
(or --postgres-url), dropped afterwards.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from PIL import Image

from forwardguard.registry import Registry

FINGERPRINT = "0" * 64
SAMPLED_TENANT = "sampled"


def synthetic(index: int, size: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The immunized PNG, delta and immunized pixels of pattern ``index`` (deterministic): an 8 x 8
    random picture upscaled (so that it has the low frequencies a perceptual hash sees), plus noise."""
    rng = np.random.default_rng(index)
    small = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    clean = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))
    immunized = np.clip(clean.astype(np.int16) + rng.integers(-16, 17, size=clean.shape), 0, 255).astype(np.uint8)
    return encode(immunized, "PNG"), immunized.astype(np.int16) - clean, immunized


def encode(pixels: np.ndarray, format: str, **options: Any) -> bytes:
    """``pixels`` (uint8 RGB) as a file of ``format`` (a Pillow format name) with Pillow's ``options``."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format, **options)
    return buffer.getvalue()


def record(registry: Registry, index: int, size: int) -> tuple[float, int]:
    """Record pattern ``index``: the call's seconds and the pattern's perceptual hash."""
    png, delta, _ = synthetic(index, size)
    start = time.perf_counter()
    recorded = registry.record_pattern(
        image_png=png,
        delta=delta,
        method="noise",
        params={"eps": 16 / 255, "seed": index},
        target="gray",
        model_fingerprint=FINGERPRINT,
        model_spec="bench",
        tenant=SAMPLED_TENANT,
    )
    return time.perf_counter() - start, recorded.phash


def record_share(location: str, indices: range, size: int) -> list[tuple[float, int]]:
    """One writer process: record the patterns ``indices``; return each call's seconds and hash."""
    with Registry.open(location) as registry:
        return [record(registry, index, size) for index in indices]


def record_all(location: str, count: int, writers: int, size: int) -> tuple[float, list[tuple[float, int]]]:
    """Record patterns 0..``count``-1 by ``writers`` processes: the patterns per second, and each
    call's seconds and hash."""
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with context.Pool(writers) as pool:
        shares = [(location, range(writer, count, writers), size) for writer in range(writers)]
        recorded = [pair for share in pool.starmap(record_share, shares) for pair in share]
    return count / (time.perf_counter() - start), recorded


def percentiles(samples: list[float]) -> dict[str, float]:
    values = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2)}


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A fresh schema of the PostgreSQL database ``base_url``, dropped afterwards: its URL."""
    schema = f"fg_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{base_url}{'&' if '?' in base_url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@contextmanager
def new_registry(backend: str, postgres_url: str | None, parent: Path | None) -> Iterator[tuple[str, Path]]:
    """The location of a new, empty registry of ``backend`` and its scratch folder, both removed
    afterwards (a PostgreSQL registry in a fresh schema, its blobs in the scratch folder)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"fg-bench-{backend}-", dir=parent))
    try:
        if backend == "sqlite":
            yield str(workdir / "reg.db"), workdir  # blobs in reg.blobs
        else:
            if not postgres_url:
                raise SystemExit("benchmark: give --postgres-url or set FORWARDGUARD_TEST_POSTGRES_URL")
            with postgres_schema(postgres_url) as url:
                yield f"{url}&blobs={workdir / 'blobs'}", workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=800, help="Patterns recorded.")
    parser.add_argument("--writers", type=int, default=8, help="Processes recording at once.")
    parser.add_argument("--size", type=int, default=16, help="Side of the synthetic images, in pixels.")
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"], help="Repeatable; default sqlite.")
    parser.add_argument("--postgres-url", default=os.environ.get("FORWARDGUARD_TEST_POSTGRES_URL"))
    parser.add_argument("--workdir", type=Path, help="Scratch folder (default: a temporary one, removed).")
    args = parser.parse_args()
    for name in ("patterns", "writers", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    import forwardguard

    for backend in args.backend or ["sqlite"]:
        with new_registry(backend, args.postgres_url, args.workdir) as (location, _):
            Registry.open(location, create=True).close()
            rate, recorded = record_all(location, args.patterns, args.writers, args.size)
        result = {
            "backend": backend,
            "forwardguard": str(Path(forwardguard.__file__).parent),
            "patterns": args.patterns,
            "writers": args.writers,
            "image_size": f"{args.size}x{args.size}",
            "insert_per_s": round(rate, 1),
            "insert_latency": percentiles([seconds for seconds, _ in recorded]),
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
