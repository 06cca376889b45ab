"""Registry benchmark: insert rate, lookup latency (p50/p99) and export rate, SQLite and PostgreSQL.

    python bench/registry_bench.py --records 100000                      # SQLite only
    eval "$(.ci/start-postgres)"                                           # then both backends:
    python bench/registry_bench.py --records 100000 --backend sqlite --backend postgresql

Each record is a small synthetic immunized image (16x16 by default) recorded through the public
API, one transaction per pattern, blobs fsynced, by --writers processes at once (default 8), as
a service's workers would; insert latency is per record_pattern call. Lookups are of recorded
images: exact (the PNG bytes) and perceptual (a JPEG quality-75 copy, which scans every
perceptual hash). PostgreSQL runs in a fresh schema of FORWARDGUARD_TEST_POSTGRES_URL
(or --postgres-url), dropped afterwards. Prints one JSON object per backend.
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

import numpy as np
from PIL import Image

from forwardguard.registry import Registry

FINGERPRINT = "0" * 64


def synthetic(index: int, size: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The immunized PNG, delta and immunized pixels of pattern ``index`` (deterministic)."""
    rng = np.random.default_rng(index)
    clean = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    immunized = np.clip(clean.astype(np.int16) + rng.integers(-16, 17, size=clean.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(immunized).save(buffer, "PNG")
    return buffer.getvalue(), immunized.astype(np.int16) - clean, immunized


def percentiles(samples: list[float]) -> dict[str, float]:
    values = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2)}


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    import sqlalchemy as sa

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


def record_share(location: str, blob_root: str, indices: range, size: int) -> list[float]:
    """One writer process: record the patterns ``indices``; return each call's seconds."""
    latencies = []
    with Registry.open(location, blob_root=blob_root) as registry:
        for index in indices:
            png, delta, _ = synthetic(index, size)
            start = time.perf_counter()
            registry.record_pattern(
                image_png=png,
                delta=delta,
                method="noise",
                params={"eps": 16 / 255, "seed": index},
                target="gray",
                model_fingerprint=FINGERPRINT,
                model_spec="bench",
                tenant=f"tenant{index % 4}",
            )
            latencies.append(time.perf_counter() - start)
    return latencies


def run(location: str, blob_root: Path, *, records: int, writers: int, lookups: int, size: int, workdir: Path) -> dict:
    result: dict = {"records": records, "image_size": f"{size}x{size}", "writers": writers}
    Registry.open(location, create=True, blob_root=blob_root).close()
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with context.Pool(writers) as pool:
        shares = [(location, str(blob_root), range(w, records, writers), size) for w in range(writers)]
        latencies = [latency for share in pool.starmap(record_share, shares) for latency in share]
    result["insert_per_s"] = round(records / (time.perf_counter() - start), 1)
    result["insert_latency"] = percentiles(latencies)
    with Registry.open(location, blob_root=blob_root) as registry:
        picks = np.random.default_rng(1).choice(records, size=min(lookups, records), replace=False)
        exact, perceptual = [], []
        for index in picks.tolist():
            png, _, immunized = synthetic(index, size)
            buffer = io.BytesIO()
            Image.fromarray(immunized).save(buffer, "JPEG", quality=75)
            for samples, query in ((exact, png), (perceptual, buffer.getvalue())):
                start = time.perf_counter()
                matches = registry.lookup(query)
                samples.append(time.perf_counter() - start)
                if not matches:
                    raise SystemExit(f"benchmark: lookup of pattern {index} found nothing")
        result["lookup_exact"] = percentiles(exact)
        result["lookup_perceptual_jpeg75"] = percentiles(perceptual)

        start = time.perf_counter()
        registry.create_snapshot("bench")
        result["snapshot_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        registry.export("bench", workdir / "export")
        elapsed = time.perf_counter() - start
        result["export_rows_per_s"] = round(records / elapsed, 1)
        start = time.perf_counter()
        report = registry.verify()
        result["verify_s"] = round(time.perf_counter() - start, 2)
        if not report.ok or report.patterns != records:
            raise SystemExit(f"benchmark: verify found {report.patterns} patterns, {len(report.problems)} problems")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--writers", type=int, default=8, help="Processes recording at once.")
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--size", type=int, default=16, help="Side of the synthetic images, in pixels.")
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"], help="Repeatable; default sqlite.")
    parser.add_argument("--postgres-url", default=os.environ.get("FORWARDGUARD_TEST_POSTGRES_URL"))
    parser.add_argument("--workdir", type=Path, help="Scratch folder (default: a temporary one, removed).")
    args = parser.parse_args()

    for backend in args.backend or ["sqlite"]:
        workdir = Path(tempfile.mkdtemp(prefix=f"fg-bench-{backend}-", dir=args.workdir))
        try:
            if backend == "sqlite":
                result = run(
                    str(workdir / "reg.db"),
                    workdir / "reg.blobs",
                    records=args.records,
                    writers=args.writers,
                    lookups=args.lookups,
                    size=args.size,
                    workdir=workdir,
                )
            else:
                if not args.postgres_url:
                    raise SystemExit("benchmark: give --postgres-url or set FORWARDGUARD_TEST_POSTGRES_URL")
                with postgres_schema(args.postgres_url) as url:
                    result = run(
                        url,
                        workdir / "blobs",
                        records=args.records,
                        writers=args.writers,
                        lookups=args.lookups,
                        size=args.size,
                        workdir=workdir,
                    )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(json.dumps({"backend": backend} | result), flush=True)


if __name__ == "__main__":
    main()
