"""Registry benchmark: lookup latency (p50/p99) at a provider's scale, insert rate, and lookups while
writers insert, SQLite and PostgreSQL.

    python bench/registry_bench.py --records 100000                      # SQLite only
    eval "$(.ci/start-postgres)"                                           # then both backends:
    python bench/registry_bench.py --records 1000000 --backend sqlite --backend postgresql

A run fills a new registry with --records patterns: all but --sample of them bulk-loaded as rows
(random 64-bit perceptual hashes, no blobs), then --sample real ones (smooth synthetic --size px
images, immunized with uniform noise) recorded through the public API, one transaction per
pattern, blobs fsynced, by --writers processes at once (default 8), as a service's workers would:
the insert rate and latency. Then --lookups lookups of the sampled images: exact (their PNG
bytes) and perceptual (a JPEG quality-75 copy, a 0.5x resize and a 1-pixel shift, in turn), each
perceptual answer compared with a full scan of every recorded hash (the run fails when they
differ). Then the same lookups again while --writers processes keep recording new patterns; then
a snapshot of every pattern, and an export of the sampled ones (the rows that have blobs).
PostgreSQL runs in a fresh schema of FORWARDGUARD_TEST_POSTGRES_URL (or --postgres-url), VACUUM
ANALYZEd after the bulk load as autovacuum would, and dropped afterwards. Prints one JSON object
per backend.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from forwardguard.images import read_image
from forwardguard.registry import PHASH_MAX_DISTANCE, Registry
from forwardguard.registry.database import create_engine
from forwardguard.registry.images import hamming_distances, perceptual_hash
from forwardguard.registry.location import Location
from forwardguard.registry.phash_index import phash_bands
from forwardguard.registry.tables import patterns

FINGERPRINT = "0" * 64
SAMPLED_TENANT = "sampled"
BULK_BATCH = 10_000
# Where the patterns recorded while lookups run are numbered from: after every sampled one.
LOAD_INDEX_BASE = 1 << 40


def synthetic(index: int, size: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The immunized PNG, delta and immunized pixels of pattern ``index`` (deterministic): an 8 x 8
    random picture upscaled (so that it has the low frequencies a perceptual hash sees), plus noise."""
    rng = np.random.default_rng(index)
    small = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    clean = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))
    immunized = np.clip(clean.astype(np.int16) + rng.integers(-16, 17, size=clean.shape), 0, 255).astype(np.uint8)
    return _encode(immunized, "PNG"), immunized.astype(np.int16) - clean, immunized


def _encode(pixels: np.ndarray, format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format, **options)
    return buffer.getvalue()


VARIANTS: dict[str, Callable[[np.ndarray], bytes]] = {
    "jpeg75": lambda pixels: _encode(pixels, "JPEG", quality=75),
    "resize0.5": lambda pixels: _encode(
        np.asarray(Image.fromarray(pixels).resize((pixels.shape[1] // 2, pixels.shape[0] // 2), Image.Resampling.BICUBIC)),
        "PNG",
    ),
    "shift1": lambda pixels: _encode(np.roll(pixels, 1, axis=1), "PNG"),
}


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


def bulk_load(registry: Registry, count: int) -> np.ndarray:
    """Insert ``count`` rows with random perceptual hashes and no blobs, in large transactions;
    return their hashes."""
    rng = np.random.default_rng(2**32)
    hashes = rng.integers(-(2**63), 2**63 - 1, size=count, dtype=np.int64, endpoint=True)
    created = datetime.now(timezone.utc)
    for start in range(0, count, BULK_BATCH):
        rows = []
        for index in range(start, min(start + BULK_BATCH, count)):
            key = f"{index:064x}"
            phash = int(hashes[index])
            rows.append(
                {
                    "id": key,
                    "tenant": f"tenant{index % 4}",
                    "method": "noise",
                    "params": {"eps": 16 / 255, "seed": index},
                    "target": "gray",
                    "model_fingerprint": FINGERPRINT,
                    "model_spec": "bench",
                    "image_sha256": key,
                    "pixel_sha256": key,
                    "delta_blob_sha256": key,
                    "phash": phash,
                    **phash_bands(phash),
                    "width": 64,
                    "height": 64,
                    "has_alpha": False,
                    "created_at": created,
                    "status": "active",
                    "retired_at": None,
                }
            )
        with registry.write() as connection:
            connection.execute(patterns.insert(), rows)
    return hashes


def vacuum_analyze(location: Location) -> None:
    """What autovacuum does to a grown table: its statistics, and the visibility map that lets the
    band indexes answer without reading the table."""
    engine = create_engine(location)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE patterns")
    engine.dispose()


def _record(registry: Registry, index: int, size: int) -> tuple[float, int]:
    png, delta, _ = synthetic(index, size)
    start = time.perf_counter()
    record = registry.record_pattern(
        image_png=png,
        delta=delta,
        method="noise",
        params={"eps": 16 / 255, "seed": index},
        target="gray",
        model_fingerprint=FINGERPRINT,
        model_spec="bench",
        tenant=SAMPLED_TENANT,
    )
    return time.perf_counter() - start, record.phash


def record_share(location: str, blob_root: str, indices: range, size: int) -> list[tuple[float, int]]:
    """One writer process: record the patterns ``indices``; return each call's seconds and hash."""
    with Registry.open(location, blob_root=blob_root) as registry:
        return [_record(registry, index, size) for index in indices]


def record_until(location: str, blob_root: str, first: int, step: int, size: int, ready: Any, stop: Any) -> int:
    """One writer process: record patterns first, first + step, ... (saying ``ready`` after the first)
    until ``stop`` is set; return how many."""
    count = 0
    with Registry.open(location, blob_root=blob_root) as registry:
        while count == 0 or not stop.is_set():
            _record(registry, first + count * step, size)
            count += 1
            if count == 1:
                ready.put(first)
    return count


def lookups(registry: Registry, picks: list[int], size: int, hashes: np.ndarray | None) -> dict[str, Any]:
    """Exact and perceptual lookups of the sampled patterns ``picks``; with ``hashes`` (every recorded
    hash), each perceptual answer is checked against a full scan of them."""
    exact, perceptual = [], []
    asked, found_own = dict.fromkeys(VARIANTS, 0), dict.fromkeys(VARIANTS, 0)
    for position, index in enumerate(picks):
        png, _, immunized = synthetic(index, size)
        start = time.perf_counter()
        matches = registry.lookup(png)
        exact.append(time.perf_counter() - start)
        if not matches or matches[0].kind != "bytes":
            raise SystemExit(f"benchmark: the exact lookup of pattern {index} found {matches[:1]}")
        variant = list(VARIANTS)[position % len(VARIANTS)]
        query = VARIANTS[variant](immunized)
        asked[variant] += 1
        start = time.perf_counter()
        matches = registry.lookup(query)
        perceptual.append(time.perf_counter() - start)
        found_own[variant] += any(match.pattern.params["seed"] == index for match in matches)
        if hashes is not None:
            query_hash = perceptual_hash(read_image(query).rgb)
            expected = set(hashes[hamming_distances(query_hash, hashes) <= PHASH_MAX_DISTANCE].tolist())
            if {match.pattern.phash for match in matches} != expected:
                raise SystemExit(f"benchmark: the perceptual lookup of pattern {index} ({variant}) differs from a full scan")
    return {
        "lookup_exact": percentiles(exact),
        "lookup_perceptual": percentiles(perceptual),
        "found_own_pattern": {variant: round(found_own[variant] / asked[variant], 3) for variant in VARIANTS if asked[variant]},
    }


def run(
    location: str, blob_root: Path, *, records: int, sample: int, writers: int, queries: int, size: int, workdir: Path
) -> dict:
    sample = min(sample, records)
    result: dict = {"records": records, "sampled": sample, "image_size": f"{size}x{size}", "writers": writers}
    Registry.open(location, create=True, blob_root=blob_root).close()
    with Registry.open(location, blob_root=blob_root) as registry:
        start = time.perf_counter()
        bulk_hashes = bulk_load(registry, records - sample)
        result["bulk_load_rows_per_s"] = round((records - sample) / (time.perf_counter() - start))
        if not registry.location.is_sqlite:
            vacuum_analyze(registry.location)

    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with context.Pool(writers) as pool:
        shares = [(location, str(blob_root), range(w, sample, writers), size) for w in range(writers)]
        recorded = [pair for share in pool.starmap(record_share, shares) for pair in share]
    result["insert_per_s"] = round(sample / (time.perf_counter() - start), 1)
    result["insert_latency"] = percentiles([latency for latency, _ in recorded])
    hashes = np.concatenate([bulk_hashes, np.array([phash for _, phash in recorded], dtype=np.int64)])

    picks = np.random.default_rng(1).choice(sample, size=min(queries, sample), replace=False).tolist()
    with Registry.open(location, blob_root=blob_root) as registry:
        result |= lookups(registry, picks, size, hashes)
        manager = context.Manager()
        ready, stop = manager.Queue(), manager.Event()
        with context.Pool(writers) as pool:
            pending = pool.starmap_async(
                record_until,
                [(location, str(blob_root), LOAD_INDEX_BASE + w, writers, size, ready, stop) for w in range(writers)],
            )
            for _ in range(writers):  # every writer is writing
                ready.get(timeout=600)
            start = time.perf_counter()
            loaded = lookups(registry, picks, size, None)
            stop.set()
            inserted = sum(pending.get())
            result["while_writing"] = {
                "lookup_exact": loaded["lookup_exact"],
                "lookup_perceptual": loaded["lookup_perceptual"],
                "insert_per_s": round(inserted / (time.perf_counter() - start), 1),
            }
        manager.shutdown()

        start = time.perf_counter()
        registry.create_snapshot("bench")
        result["snapshot_s"] = round(time.perf_counter() - start, 2)
        registry.create_snapshot("sampled", tenant=SAMPLED_TENANT)
        start = time.perf_counter()
        exported = registry.export("sampled", workdir / "export")
        result["export_rows_per_s"] = round(exported.rows / (time.perf_counter() - start), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="Patterns in the registry.")
    parser.add_argument("--sample", type=int, default=1000, help="Of them, recorded with real images and blobs.")
    parser.add_argument("--writers", type=int, default=8, help="Processes recording at once.")
    parser.add_argument("--lookups", type=int, default=1000, help="Sampled images looked up (at most --sample).")
    parser.add_argument("--size", type=int, default=64, help="Side of the synthetic images, in pixels.")
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"], help="Repeatable; default sqlite.")
    parser.add_argument("--postgres-url", default=os.environ.get("FORWARDGUARD_TEST_POSTGRES_URL"))
    parser.add_argument("--workdir", type=Path, help="Scratch folder (default: a temporary one, removed).")
    args = parser.parse_args()
    for name in ("records", "sample", "writers", "lookups", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    options = {
        "records": args.records,
        "sample": args.sample,
        "writers": args.writers,
        "queries": args.lookups,
        "size": args.size,
    }
    for backend in args.backend or ["sqlite"]:
        workdir = Path(tempfile.mkdtemp(prefix=f"fg-bench-{backend}-", dir=args.workdir))
        try:
            if backend == "sqlite":
                result = run(str(workdir / "reg.db"), workdir / "reg.blobs", workdir=workdir, **options)
            else:
                if not args.postgres_url:
                    raise SystemExit("benchmark: give --postgres-url or set FORWARDGUARD_TEST_POSTGRES_URL")
                with postgres_schema(args.postgres_url) as url:
                    result = run(url, workdir / "blobs", workdir=workdir, **options)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(json.dumps({"backend": backend} | result), flush=True)


if __name__ == "__main__":
    main()
