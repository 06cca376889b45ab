"""bench/registry_bench.py in its smallest mode: it runs on both backends, its perceptual answers equal a
full scan's (or it fails), and it reports every measure; its COPY bulk load writes the rows its INSERT
does."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = REPO_ROOT / "bench" / "registry_bench.py"
INSERTS = REPO_ROOT / "bench" / "registry_inserts.py"


def _bench_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH.parent))  # it imports registry_inserts from beside it
    spec = importlib.util.spec_from_file_location("registry_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_smallest_run_reports_every_measure(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if backend == "postgresql":
        request.getfixturevalue("postgres_schema_url")  # skipped without a server (failed under CI), as every PostgreSQL test
    workdir = tmp_path / "bench"
    workdir.mkdir()
    command = [
        sys.executable, str(BENCH), "--backend", backend,
        "--records", "30", "--sample", "6", "--writers", "2", "--lookups", "3", "--size", "32",
        "--serve-model", "tiny", "--workdir", str(workdir),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr
    [line] = completed.stdout.strip().splitlines()
    result = json.loads(line)
    assert (result["backend"], result["records"], result["sampled"], result["writers"]) == (backend, 30, 6, 2)
    assert result["bulk_load_rows_per_s"] > 0 and result["insert_per_s"] > 0 and result["export_rows_per_s"] > 0
    assert result["while_writing"]["insert_per_s"] > 0
    assert result["tenant_page_ms"] > 0 and result["tenant_snapshot_s"] > 0
    for measures in (result, result["while_writing"]):
        for measure in ("lookup_exact", "lookup_perceptual"):
            assert 0 < measures[measure]["p50_ms"] <= measures[measure]["p99_ms"]
    assert 0 < result["serve_lookup"]["p50_ms"] <= result["serve_lookup"]["p99_ms"]
    assert set(result["found_own_pattern"]) == {"jpeg75", "resize0.5", "shift1"}
    memory = result["memory_mib"]
    commands = {"stats", "list", "verify", "gc", "snapshot", "export"}
    assert set(memory) == {"serve", *commands, *(f"{command} (anonymous)" for command in commands)}
    assert all(peak > 0 for peak in memory.values())
    assert all(memory[f"{command} (anonymous)"] <= memory[command] for command in commands)
    assert list(workdir.iterdir()) == []  # its scratch folder is removed


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_insert_rate_alone(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """registry_inserts.py: the insert rate of writers into an empty registry, with the public API only."""
    if backend == "postgresql":
        request.getfixturevalue("postgres_schema_url")
    command = [
        sys.executable, str(INSERTS), "--backend", backend,
        "--patterns", "6", "--writers", "2", "--size", "16", "--workdir", str(tmp_path),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr
    [line] = completed.stdout.strip().splitlines()
    result = json.loads(line)
    assert (result["backend"], result["patterns"], result["writers"], result["image_size"]) == (backend, 6, 2, "16x16")
    assert Path(result["forwardguard"]) == REPO_ROOT / "src" / "forwardguard"  # the version measured
    assert result["insert_per_s"] > 0
    assert 0 < result["insert_latency"]["p50_ms"] <= result["insert_latency"]["p99_ms"]
    assert list(tmp_path.iterdir()) == []  # its scratch folder is removed


def test_copy_writes_the_rows_an_insert_writes(postgres_schema_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from forwardguard.registry import Registry
    from forwardguard.registry.tables import patterns

    bench = _bench_module(monkeypatch)
    created = datetime.now(timezone.utc)
    hashes = [-(2**63), -1, 0, 12345, 2**63 - 1]
    written = []
    with Registry.open(postgres_schema_url, create=True) as registry:
        for write in (bench.insert_rows, bench.copy_rows):
            with registry.write() as connection:
                write(connection, (bench.bulk_row(index, phash, created) for index, phash in enumerate(hashes)))
            with registry.write() as connection:
                written.append(connection.exec_driver_sql("SELECT *, params::text FROM patterns ORDER BY id").all())
                connection.execute(patterns.delete())
    assert len(written[0]) == len(hashes) and written[0] == written[1]
