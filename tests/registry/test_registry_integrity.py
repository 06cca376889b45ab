"""Integrity and crash safety: corrupted or missing blobs are named, a killed writer leaves no
row without its blobs, and gc removes what it leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from registry_testdata import random_image

from forwardguard.errors import ForwardguardError
from forwardguard.registry import Registry
from forwardguard.registry.blobs import BlobStore, sha256_hex

HERE = Path(__file__).parent


def _blob_path(registry: Registry, key: str) -> Path:
    return registry.blob_root / key[:2] / key


def _flip_byte(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_fails_verify_and_reads(registry: Registry, tmp_path: Path) -> None:
    intact = registry.record_pattern(**random_image(1).record_args())
    image = random_image(2)
    record = registry.record_pattern(**image.record_args())
    registry.create_snapshot("s")
    delta_path = _blob_path(registry, record.delta_blob_sha256)
    _flip_byte(delta_path)

    report = registry.verify()
    assert not report.ok
    [problem] = report.problems
    assert (problem.pattern_id, problem.role, problem.problem, problem.path) == (
        record.id,
        "delta",
        "corrupted",
        delta_path,
    )
    assert str(delta_path) in problem.describe()
    for read in (registry.load_blobs, registry.load_sample):
        with pytest.raises(ForwardguardError, match=f"pattern {record.id}: delta blob {record.delta_blob_sha256} is corrupted"):
            read(record)
    with pytest.raises(ForwardguardError, match="is corrupted"):
        registry.export("s", tmp_path / "export")
    registry.load_sample(intact)  # the other pattern still reads

    # Recording the same pattern again writes an intact copy.
    registry.record_pattern(**image.record_args())
    assert registry.verify().ok
    assert registry.load_sample(record).clean.tolist() == image.clean.tolist()


def test_missing_blob_is_named(registry: Registry) -> None:
    record = registry.record_pattern(**random_image(3).record_args())
    image_path = _blob_path(registry, record.image_sha256)
    image_path.unlink()

    [problem] = registry.verify().problems
    assert (problem.role, problem.problem, problem.path) == ("image", "missing", image_path)
    with pytest.raises(ForwardguardError, match=f"pattern {record.id}: image blob .* is missing"):
        registry.load_blobs(record)


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import sqlalchemy as sa
    from registry_testdata import random_image
    from forwardguard.registry import Registry

    registry = Registry.open(sys.argv[1])
    registry.record_pattern(**random_image(1).record_args())
    # Die after the blobs are written and the row inserted, before COMMIT reaches the database.
    sa.event.listen(sa.Engine, "commit", lambda connection: os.kill(os.getpid(), signal.SIGKILL))
    registry.record_pattern(**random_image(2).record_args())
    print("still alive")
    """
)


def test_writer_killed_before_commit_leaves_only_an_orphan(registry: Registry, registry_location: str) -> None:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, registry_location], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == -9, result.stderr
    assert "still alive" not in result.stdout

    [survivor] = registry.list_patterns()
    assert survivor.image_sha256 == sha256_hex(random_image(1).png)
    lost = random_image(2)
    orphans = {sha256_hex(lost.png)}
    report = registry.verify()
    assert report.ok and report.patterns == 1
    assert orphans < set(report.orphans) and len(report.orphans) == 2  # its PNG and its delta

    assert sorted(registry.gc(dry_run=True).removed_blobs) == report.orphans
    assert sorted(registry.gc().removed_blobs) == report.orphans
    after = registry.verify()
    assert after.ok and after.orphans == [] and after.blobs == 2
    registry.load_sample(survivor)
    # The lost pattern can simply be recorded again.
    registry.record_pattern(**lost.record_args())
    assert len(registry.list_patterns()) == 2 and registry.verify().ok


def test_gc_gives_back_a_blob_whose_row_commits_meanwhile(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    key = store.put(b"pattern bytes")
    assert not store.remove_unreferenced(key, lambda _key: True)
    assert store.get(key) == b"pattern bytes"
    assert store.remove_unreferenced(key, lambda _key: False)
    assert not store.path(key).exists()
    # A writer whose row committed after gc removed its blob writes it again.
    store.restore_if_missing(key, b"pattern bytes")
    assert store.get(key) == b"pattern bytes"
    assert list(store.keys()) == [key]


def test_gc_removes_stale_temporary_files(registry: Registry) -> None:
    record = registry.record_pattern(**random_image(4).record_args())
    folder = _blob_path(registry, record.image_sha256).parent
    stale, fresh = folder / f".{record.image_sha256}.1-a.tmp", folder / f".{record.image_sha256}.2-b.tmp"
    stale.write_bytes(b"half a blob")
    fresh.write_bytes(b"being written")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))

    report = registry.gc()
    assert report.removed_blobs == [] and report.removed_temporaries == [stale]
    assert fresh.exists() and registry.verify().ok


def test_gc_puts_back_a_parked_blob_that_is_still_referenced(registry: Registry) -> None:
    """A gc that died between parking a referenced blob and giving it back loses nothing."""
    record = registry.record_pattern(**random_image(5).record_args())
    blob = _blob_path(registry, record.delta_blob_sha256)
    parked = blob.with_name(f".{blob.name}.gc-123-abcd.tmp")
    os.rename(blob, parked)
    old = time.time() - 2 * 3600
    os.utime(parked, (old, old))
    assert not registry.verify().ok

    assert registry.gc().removed_temporaries == []
    assert not parked.exists() and registry.verify().ok
