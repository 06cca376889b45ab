"""Registry benchmark: lookup latency (p50/p99) at a provider's scale, insert rate, lookups while
writers insert, and the memory of the registry commands and of the server, SQLite and PostgreSQL.

    python bench/registry_bench.py --records 100000                      # SQLite only
    eval "$(.ci/start-postgres)"                                           # then both backends:
    python bench/registry_bench.py --records 1000000 --backend sqlite --backend postgresql
    python bench/registry_bench.py --records 10000000 --backend postgresql

A run fills a new registry with --records patterns: all but --sample of them bulk-loaded as rows
(random 64-bit perceptual hashes, no blobs; a transaction per 10,000, written by COPY on
PostgreSQL, by an executemany INSERT on SQLite), then --sample real ones
(smooth synthetic --size px images, immunized with uniform noise) recorded through the public API,
one transaction per pattern, blobs fsynced, by --writers processes at once (default 8), as a
service's workers would: the insert rate and latency (bench/registry_inserts.py measures them alone,
into an empty registry, for any version of forwardguard). Then --lookups lookups of the sampled images:
exact (their PNG bytes) and perceptual (a JPEG quality-75 copy, a 0.5x resize and a 1-pixel shift,
in turn), each perceptual answer compared with a full scan of every recorded hash (the run fails
when they differ). Then the same lookups again while --writers processes keep recording new
patterns; then a snapshot of every pattern, the first page (100) of the sampled tenant's patterns
and a snapshot of them (a small tenant among millions of rows: `tenant_page_ms`,
`tenant_snapshot_s`), and an export of that snapshot (the rows that have blobs). Then memory:
`forwardguard serve` (--serve-model, default TAEF2) is started on the registry and sent the sampled
images through POST /v1/lookup (their latency), and its peak resident memory read (VmHWM); then each
registry command runs as its own process, and its peak resident memory is taken (ru_maxrss, and the
peak of its anonymous memory): `stats`, `list` of every pattern (to /dev/null), `verify --sample
100`, `gc --dry-run`, and a `snapshot` of the sampled tenant and its `export`.
PostgreSQL runs in a fresh schema of FORWARDGUARD_TEST_POSTGRES_URL (or --postgres-url), VACUUM
ANALYZEd after the bulk load as autovacuum would, CHECKPOINTed (where the role may), and dropped
afterwards. Prints one JSON object per backend.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa
from PIL import Image
from registry_inserts import FINGERPRINT, SAMPLED_TENANT, encode, new_registry, percentiles, record, record_all, synthetic

from forwardguard.images import read_image
from forwardguard.registry import PHASH_MAX_DISTANCE, Registry
from forwardguard.registry.database import create_engine
from forwardguard.registry.images import hamming_distances, perceptual_hash
from forwardguard.registry.location import Location
from forwardguard.registry.phash_index import encode_postings, phash_bands
from forwardguard.registry.tables import patterns, phash_postings

BULK_BATCH = 10_000
POSTINGS_TRIGGER = "patterns_phash_postings"
# Where the patterns recorded while lookups run are numbered from: after every sampled one.
LOAD_INDEX_BASE = 1 << 40


VARIANTS: dict[str, Callable[[np.ndarray], bytes]] = {
    "jpeg75": lambda pixels: encode(pixels, "JPEG", quality=75),
    "resize0.5": lambda pixels: encode(
        np.asarray(Image.fromarray(pixels).resize((pixels.shape[1] // 2, pixels.shape[0] // 2), Image.Resampling.BICUBIC)),
        "PNG",
    ),
    "shift1": lambda pixels: encode(np.roll(pixels, 1, axis=1), "PNG"),
}


def bulk_load(registry: Registry, count: int) -> np.ndarray:
    """Insert ``count`` rows with random perceptual hashes and no blobs, a transaction per
    ``BULK_BATCH`` rows, made as they are written: on PostgreSQL by COPY, on SQLite by an
    executemany INSERT. The trigger that appends each row's hash to its postings (four upserts a row)
    is off meanwhile; the postings are written after, from the hashes. Return the hashes."""
    rng = np.random.default_rng(2**32)
    hashes = rng.integers(-(2**63), 2**63 - 1, size=count, dtype=np.int64, endpoint=True)
    created = datetime.now(timezone.utc)
    write = insert_rows if registry.location.is_sqlite else copy_rows
    with postings_trigger_off(registry):
        for start in range(0, count, BULK_BATCH):
            indices = range(start, min(start + BULK_BATCH, count))
            with registry.write() as connection:
                write(connection, (bulk_row(index, int(hashes[index]), created) for index in indices))
        with registry.write() as connection:
            write_postings(connection, hashes)
    return hashes


@contextmanager
def postings_trigger_off(registry: Registry) -> Iterator[None]:
    """Without the trigger of migration 0005 (SQLite cannot disable one: it is dropped and made again)."""
    with registry.write() as connection:
        if registry.location.is_sqlite:
            made = connection.exec_driver_sql(f"SELECT sql FROM sqlite_master WHERE name = '{POSTINGS_TRIGGER}'").scalar_one()
            connection.exec_driver_sql(f"DROP TRIGGER {POSTINGS_TRIGGER}")
        else:
            connection.exec_driver_sql(f"ALTER TABLE patterns DISABLE TRIGGER {POSTINGS_TRIGGER}")
    yield
    with registry.write() as connection:
        connection.exec_driver_sql(
            made if registry.location.is_sqlite else f"ALTER TABLE patterns ENABLE TRIGGER {POSTINGS_TRIGGER}"
        )


def write_postings(connection: sa.Connection, hashes: np.ndarray) -> None:
    """The postings of ``hashes`` (the table is empty before), as the trigger stores them."""
    postgresql = connection.dialect.name == "postgresql"
    for band, values in enumerate(phash_bands(hashes)):
        order = np.argsort(values, kind="stable")
        encoded = encode_postings(hashes[order], postgresql)
        width = len(encoded) // len(hashes)
        present, starts = np.unique(values[order], return_index=True)
        ends = [*starts[1:].tolist(), len(hashes)]
        rows = [
            {"band": band, "value": int(value), "hashes": encoded[start * width : end * width]}
            for value, start, end in zip(present.tolist(), starts.tolist(), ends, strict=True)
        ]
        if postgresql:
            with (
                connection.connection.driver_connection.cursor() as cursor,
                cursor.copy("COPY phash_postings (band, value, hashes) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row([row["band"], row["value"], row["hashes"]])
        else:
            connection.execute(phash_postings.insert(), rows)


def bulk_row(index: int, phash: int, created: datetime) -> dict[str, Any]:
    """Bulk-loaded row ``index``: its id (and blob keys, which name no blob) is the index in hex."""
    key = f"{index:064x}"
    return {
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
        "width": 64,
        "height": 64,
        "has_alpha": False,
        "created_at": created,
        "status": "active",
        "retired_at": None,
    }


def insert_rows(connection: sa.Connection, rows: Iterable[dict[str, Any]]) -> None:
    connection.execute(patterns.insert(), list(rows))


def copy_rows(connection: sa.Connection, rows: Iterable[dict[str, Any]]) -> None:
    """COPY ``rows`` into the patterns table through the connection's psycopg connection, in its
    transaction: many times the rate of an INSERT's executemany. ``params`` is written as
    SQLAlchemy's JSON type writes it (``json.dumps``)."""
    columns = [column.name for column in patterns.columns]
    statement = f"COPY patterns ({', '.join(columns)}) FROM STDIN"
    with connection.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([json.dumps(row[name]) if name == "params" else row[name] for name in columns])


def vacuum_analyze(location: Location) -> None:
    """What autovacuum does to grown tables: their statistics, and the visibility map that lets an
    index answer without reading the table; then a CHECKPOINT, so that the bulk load's gigabytes of
    dirty pages are not written out while lookups are timed (a registry grown over months has its
    checkpoints spread over them)."""
    engine = create_engine(location)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE patterns, phash_postings")
        try:
            connection.exec_driver_sql("CHECKPOINT")
        except sa.exc.DBAPIError as error:  # the role is neither superuser nor pg_checkpoint
            print(f"benchmark: no CHECKPOINT after the bulk load: {error.orig}", file=sys.stderr)
    engine.dispose()


def record_until(location: str, first: int, step: int, size: int, ready: Any, stop: Any) -> int:
    """One writer process: record patterns first, first + step, ... (saying ``ready`` after the first)
    until ``stop`` is set; return how many."""
    count = 0
    with Registry.open(location) as registry:
        while count == 0 or not stop.is_set():
            record(registry, first + count * step, size)
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


def commands_memory(location: str, workdir: Path) -> dict[str, float]:
    """The peak resident memory (MiB) of each registry command, run as its own process on the filled
    registry: the whole listing (to /dev/null), a sampled verify, a dry-run gc, and a snapshot of the
    sampled tenant and its export; and, as "NAME (anonymous)", the peak of its anonymous memory alone
    (see ``PEAK_LAUNCHER``)."""
    commands = {
        "stats": ["stats"],
        "list": ["list"],
        "verify": ["verify", "--sample", "100"],
        "gc": ["gc", "--dry-run"],
        "snapshot": ["snapshot", "--name", "memory", "--tenant", SAMPLED_TENANT],
        "export": ["export", "--snapshot", "memory", "--to", str(workdir / "memory-export")],
    }
    peaks = {}
    for name, arguments in commands.items():
        peak_file, log = workdir / f"{name}.peak", workdir / f"{name}.log"
        launch = [sys.executable, "-c", PEAK_LAUNCHER, str(peak_file), *forwardguard("registry", *arguments)]
        with open(log, "wb") as errors:
            code = subprocess.run(launch, env=registry_environment(location), stdout=subprocess.DEVNULL, stderr=errors).returncode
        # The bulk-loaded rows have no blobs: a sample that reaches them says so, and exits 1.
        if code != 0 and not (name == "verify" and code == 1):
            raise SystemExit(f"benchmark: `forwardguard registry {name}` failed ({code}):\n{log.read_text()}")
        resident, anonymous = (round(int(kib) / 1024, 1) for kib in peak_file.read_text().split())
        peaks[name] = resident
        peaks[f"{name} (anonymous)"] = anonymous
    return peaks


# Linux carries the peak of a process's address space across exec, so a command's own ru_maxrss
# would count this benchmark's memory: each command is started by a small process, which writes
# that command's peak (ru_maxrss, KiB) to the file argv[1] and exits with its status. It also writes
# the peak of the command's anonymous memory (RssAnon, read every 10 ms): ru_maxrss counts the pages
# of memory-mapped files too (an export's Arrow files), which the kernel drops when memory is short.
PEAK_LAUNCHER = """
import os, sys, time
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
anonymous = 0
while True:
    ended, status, usage = os.wait4(pid, os.WNOHANG)
    if ended:
        break
    try:
        with open(f"/proc/{pid}/status") as lines:
            anonymous = max([anonymous] + [int(line.split()[1]) for line in lines if line.startswith("RssAnon:")])
    except OSError:
        pass
    time.sleep(0.01)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {anonymous}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def serve_memory(location: str, model: str, picks: list[int], size: int, workdir: Path) -> tuple[float, dict[str, float]]:
    """Start `forwardguard serve` on the filled registry, look each sampled image up through
    POST /v1/lookup (its PNG, with the perceptual search too), stop it: its peak resident memory
    (MiB) and the lookups' latency."""
    from forwardguard.registry.keys import create_key

    with Registry.open(location) as registry:
        _, key = create_key(registry, tenant=SAMPLED_TENANT)
    log = workdir / "serve.log"
    # A burst of every lookup: the default rate limit would answer most of them 429.
    options = ["--model", model, "--port", "0", "--device", "cpu", "--torch-threads", "1", "--rate-burst", str(len(picks))]
    with open(log, "wb") as errors:
        server = subprocess.Popen(
            forwardguard("serve", *options), env=registry_environment(location), stdout=errors, stderr=subprocess.STDOUT
        )
    try:
        seconds = []
        with httpx.Client(base_url=server_url(server, log), headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:
            for index in picks:
                files = {"image": ("image.png", synthetic(index, size)[0], "image/png")}
                start = time.perf_counter()
                response = http.post("/v1/lookup", files=files, data={"perceptual": "true"})
                seconds.append(time.perf_counter() - start)
                if response.status_code != 200 or not response.json()["matches"]:
                    raise SystemExit(f"benchmark: the server's lookup of pattern {index}: {response.status_code} {response.text}")
        peak = peak_so_far_mib(server.pid)
    finally:
        server.terminate()
        server.wait(600)
    return peak, percentiles(seconds)


def peak_so_far_mib(pid: int) -> float:
    """The peak resident memory of the running process ``pid`` so far (its VmHWM), in MiB."""
    found = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    if found is None:
        raise SystemExit(f"benchmark: /proc/{pid}/status says no VmHWM")
    return round(int(found.group(1)) / 1024, 1)


def forwardguard(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "forwardguard", *arguments]


def registry_environment(location: str) -> dict[str, str]:
    """The environment of a command on the registry: its location in FORWARDGUARD_REGISTRY, where no
    process listing shows its password."""
    return os.environ | {"FORWARDGUARD_REGISTRY": location}


def server_url(server: subprocess.Popen, log: Path) -> str:
    """The address ``server`` listens on, once its log says it is running."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        found = re.search(r"Uvicorn running on (http://[\d.]+:\d+)", log.read_text())
        if found:
            return found.group(1)
        if server.poll() is not None:
            raise SystemExit(f"benchmark: forwardguard serve exited:\n{log.read_text()}")
        time.sleep(0.1)
    raise SystemExit(f"benchmark: forwardguard serve did not start within 10 minutes:\n{log.read_text()}")


def run(
    location: str, *, records: int, sample: int, writers: int, queries: int, size: int, serve_model: str, workdir: Path
) -> dict:
    sample = min(sample, records)
    result: dict = {"records": records, "sampled": sample, "image_size": f"{size}x{size}", "writers": writers}
    Registry.open(location, create=True).close()
    with Registry.open(location) as registry:
        start = time.perf_counter()
        bulk_hashes = bulk_load(registry, records - sample)
        result["bulk_load_rows_per_s"] = round((records - sample) / (time.perf_counter() - start))
        if not registry.location.is_sqlite:
            vacuum_analyze(registry.location)

    rate, recorded = record_all(location, sample, writers, size)
    result["insert_per_s"] = round(rate, 1)
    result["insert_latency"] = percentiles([latency for latency, _ in recorded])
    hashes = np.concatenate([bulk_hashes, np.array([phash for _, phash in recorded], dtype=np.int64)])

    picks = np.random.default_rng(1).choice(sample, size=min(queries, sample), replace=False).tolist()
    with Registry.open(location) as registry:
        result |= lookups(registry, picks, size, hashes)
        context = multiprocessing.get_context("spawn")
        manager = context.Manager()
        ready, stop = manager.Queue(), manager.Event()
        with context.Pool(writers) as pool:
            pending = pool.starmap_async(
                record_until,
                [(location, LOAD_INDEX_BASE + w, writers, size, ready, stop) for w in range(writers)],
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
        start = time.perf_counter()
        registry.list_patterns(tenant=SAMPLED_TENANT, limit=100)
        result["tenant_page_ms"] = round((time.perf_counter() - start) * 1000, 2)
        start = time.perf_counter()
        registry.create_snapshot("sampled", tenant=SAMPLED_TENANT)
        result["tenant_snapshot_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        exported = registry.export("sampled", workdir / "export")
        result["export_rows_per_s"] = round(exported.rows / (time.perf_counter() - start), 1)

    serve_peak, result["serve_lookup"] = serve_memory(location, serve_model, picks, size, workdir)
    result["memory_mib"] = commands_memory(location, workdir) | {"serve": serve_peak}
    return result


def default_model() -> str:
    """TAEF2, from the shared folder beside the repository (or FORWARDGUARD_SHARED)."""
    shared = Path(os.environ.get("FORWARDGUARD_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    return f"taesd:{shared / 'models' / 'taef2'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="Patterns in the registry.")
    parser.add_argument("--sample", type=int, default=1000, help="Of them, recorded with real images and blobs.")
    parser.add_argument("--writers", type=int, default=8, help="Processes recording at once.")
    parser.add_argument("--lookups", type=int, default=1000, help="Sampled images looked up (at most --sample).")
    parser.add_argument("--size", type=int, default=64, help="Side of the synthetic images, in pixels.")
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"], help="Repeatable; default sqlite.")
    parser.add_argument("--postgres-url", default=os.environ.get("FORWARDGUARD_TEST_POSTGRES_URL"))
    parser.add_argument("--serve-model", default=default_model(), help="The model `forwardguard serve` loads (default TAEF2).")
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
        "serve_model": args.serve_model,
    }
    for backend in args.backend or ["sqlite"]:
        with new_registry(backend, args.postgres_url, args.workdir) as (location, workdir):
            result = run(location, workdir=workdir, **options)
        print(json.dumps({"backend": backend} | result), flush=True)


if __name__ == "__main__":
    main()
