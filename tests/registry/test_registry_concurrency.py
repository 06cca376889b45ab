"""Concurrent writers: 8 processes recording 100 patterns each into one registry at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from forwardguard.registry import Registry

HERE = Path(__file__).parent
WORKERS = 8
PER_WORKER = 100

_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from registry_testdata import random_image
    from forwardguard.registry import Registry

    location, worker, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    images = [random_image(worker * 1000 + i, size=(16, 16)) for i in range(count)]
    registry = Registry.open(location)
    while not go.exists():  # start together, so the writers really overlap
        time.sleep(0.01)
    for image in images:
        registry.record_pattern(**image.record_args(tenant=f"worker{worker}"))
    """
)


def test_eight_processes_write_800_patterns(registry: Registry, registry_location: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, registry_location, str(worker), str(PER_WORKER), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(WORKERS)
    ]
    go.touch()
    outcomes = [writer.communicate(timeout=240) for writer in writers]
    for writer, (_stdout, stderr) in zip(writers, outcomes, strict=True):
        assert writer.returncode == 0, stderr
        assert stderr == "", stderr

    records = registry.list_patterns()
    assert len(records) == len({r.id for r in records}) == WORKERS * PER_WORKER
    assert registry.stats()["by_tenant"] == {f"worker{w}": PER_WORKER for w in range(WORKERS)}
    report = registry.verify()
    assert report.ok and report.orphans == []
    assert report.patterns == WORKERS * PER_WORKER
    assert report.blobs == 2 * WORKERS * PER_WORKER  # each pattern's PNG and delta, all re-hashed
