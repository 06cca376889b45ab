"""The ``forwardguard registry`` commands, end to end, and their one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image
from registry_testdata import FINGERPRINT, photo, random_image
from typer.testing import CliRunner

from forwardguard.cli.registry import app
from forwardguard.registry import Registry

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


def _assert_one_line_error(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def populated(registry_location: str) -> tuple[str, list]:
    assert cli("init", "--registry", registry_location).exit_code == 0
    with Registry.open(registry_location) as registry:
        records = [
            registry.record_pattern(**photo("astronaut").record_args(tenant="acme")),
            registry.record_pattern(**random_image(1).record_args(method="encoder")),
            registry.record_pattern(**random_image(2).record_args()),
        ]
    return registry_location, records


def test_init_list_show_stats(populated: tuple[str, list]) -> None:
    location, records = populated
    listed = cli("list", "--registry", location, "--json")
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert [row["id"] for row in rows] == [r.id for r in records]
    for row, record in zip(rows, records, strict=True):
        for key in ("id", "method", "model_fingerprint", "image_sha256", "tenant", "created_at", "status"):
            assert row[key] == record.to_dict()[key]
    assert [row["id"] for row in json.loads(cli("list", "--registry", location, "--json", "--tenant", "acme").stdout)] == [
        records[0].id
    ]
    table = cli("list", "--registry", location)
    assert table.exit_code == 0 and records[1].id[:12] in table.stdout and "encoder" in table.stdout

    shown = cli("show", records[1].id[:8], "--registry", location, "--json")
    assert json.loads(shown.stdout) == records[1].to_dict()
    assert records[1].image_sha256 in cli("show", records[1].id, "--registry", location).stdout

    stats = json.loads(cli("stats", "--registry", location, "--json").stdout)
    assert stats["patterns"] == 3 and stats["by_method"] == {"encoder": 1, "noise": 2}
    assert cli("init", "--registry", location).exit_code == 0  # init again: nothing to do


def test_lookup(populated: tuple[str, list], tmp_path: Path) -> None:
    location, records = populated
    exact = tmp_path / "exact.png"
    exact.write_bytes(photo("astronaut").png)
    result = cli("lookup", str(exact), "--registry", location, "--json")
    assert result.exit_code == 0
    assert [(m["id"], m["distance"], m["kind"]) for m in json.loads(result.stdout)] == [(records[0].id, 0, "bytes")]
    with Registry.open(location) as registry:  # the same picture immunized again: found only when asked
        again = registry.record_pattern(**photo("astronaut", seed=5).record_args(tenant="acme"))
    result = cli("lookup", str(exact), "--registry", location, "--json", "--perceptual")
    assert [(m["id"], m["kind"]) for m in json.loads(result.stdout)] == [(records[0].id, "bytes"), (again.id, "perceptual")]

    jpeg = tmp_path / "copy.jpg"
    Image.open(io.BytesIO(photo("astronaut").png)).save(jpeg, "JPEG", quality=75)
    result = cli("lookup", str(jpeg), "--registry", location)
    assert result.exit_code == 0 and records[0].id in result.stdout and "perceptual" in result.stdout

    unrelated = tmp_path / "other.png"
    unrelated.write_bytes(photo("coffee").png)
    result = cli("lookup", str(unrelated), "--registry", location, "--json")
    assert (result.exit_code, json.loads(result.stdout)) == (1, [])
    _assert_one_line_error(cli("lookup", str(unrelated), "--registry", location), "no pattern matches")
    _assert_one_line_error(cli("lookup", str(tmp_path / "absent.png"), "--registry", location), "can't read")


def test_snapshot_export_retire(populated: tuple[str, list], tmp_path: Path) -> None:
    import datasets

    location, records = populated
    result = cli("snapshot", "--registry", location, "--name", "noise-1", "--method", "noise")
    assert (result.exit_code, result.stdout.strip()) == (0, "snapshot noise-1: 2 patterns")
    _assert_one_line_error(cli("snapshot", "--registry", location, "--name", "noise-1"), "already exists")
    result = cli("snapshot", "--registry", location, "--name", "acme", "--tenant", "acme", "--model-fingerprint", FINGERPRINT)
    assert result.stdout.strip() == "snapshot acme: 1 patterns"

    result = cli("export", "--registry", location, "--snapshot", "noise-1", "--to", str(tmp_path / "ds"))
    assert result.exit_code == 0, result.output
    assert sorted(datasets.load_from_disk(str(tmp_path / "ds"))["pattern_id"]) == sorted([records[0].id, records[2].id])

    result = cli("retire", records[2].id, "--registry", location)
    assert result.stdout.strip() == f"pattern {records[2].id} is retired"
    retired = json.loads(cli("list", "--registry", location, "--status", "retired", "--json").stdout)
    assert [row["id"] for row in retired] == [records[2].id]


def test_verify_and_gc(populated: tuple[str, list], tmp_path: Path) -> None:
    location, records = populated
    assert cli("snapshot", "--registry", location, "--name", "all").exit_code == 0
    result = cli("verify", "--registry", location)
    assert result.exit_code == 0 and "3 patterns, 6 blobs checked: 0 problems" in result.stdout
    with Registry.open(location) as registry:
        blob = registry.blob_root / records[1].image_sha256[:2] / records[1].image_sha256
        orphan = registry.blob_root / "ff" / ("ff" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))

    result = cli("verify", "--registry", location)
    assert result.exit_code == 1
    assert f"corrupted image blob {blob} of pattern {records[1].id}" in result.stderr
    assert "1 problems, 1 unreferenced blobs" in result.stdout
    report = json.loads(cli("verify", "--registry", location, "--json").stdout)
    assert (report["ok"], report["problems"][0]["path"], report["orphans"]) == (False, str(blob), ["ff" * 32])
    assert cli("show", records[1].id, "--registry", location).exit_code == 0  # the record itself still reads
    result = cli("export", "--registry", location, "--snapshot", "all", "--to", str(tmp_path / "ds"))
    _assert_one_line_error(result, f"pattern {records[1].id}: image blob {records[1].image_sha256} is corrupted")
    result = cli("gc", "--registry", location)
    assert result.exit_code == 0 and "1 unreferenced blobs removed" in result.stdout and not orphan.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--registry", "postgresql://fg:pw@127.0.0.1:1/db?blobs=/tmp/b"], "Connection refused"),
        (["list", "--registry", "postgresql://fg:pw@127.0.0.1:bad/db"], "malformed registry URL"),
        (["stats", "--registry", "redis://localhost"], "unsupported registry URL scheme"),
        (["show", "abcdef0123", "--registry", "{registry}"], "no pattern abcdef0123"),
        (["show", "zz", "--registry", "{registry}"], "invalid pattern id"),
        (["export", "--snapshot", "nope", "--to", "{tmp}/out", "--registry", "{registry}"], "no snapshot 'nope'"),
        (["retire", "abcdef0123", "--registry", "{registry}"], "no pattern abcdef0123"),
        (["list", "--registry", "{tmp}/absent.db"], "no registry at"),
        (["list", "--status", "gone", "--registry", "{registry}"], "status must be one of"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    registry = tmp_path / "reg.db"
    Registry.open(registry, create=True).close()
    result = cli(*[arg.format(registry=registry, tmp=tmp_path) for arg in args])
    _assert_one_line_error(result, message)
    assert "pw@" not in result.stderr


def test_newer_schema_is_one_line(tmp_path: Path) -> None:
    registry = tmp_path / "reg.db"
    Registry.open(registry, create=True).close()
    engine = sa.create_engine(f"sqlite:///{registry}")
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff'"))
    engine.dispose()
    for command in ("list", "init"):
        _assert_one_line_error(cli(command, "--registry", str(registry)), "newer than this forwardguard knows")


def test_usage_errors_exit_2_and_errors_reach_a_real_process(tmp_path: Path) -> None:
    assert cli("list").exit_code == 2  # --registry missing
    process = subprocess.run(
        [
            sys.executable,
            "-c",
            "from forwardguard.cli.registry import app; app()",
            "show",
            "abcdef",
            "--registry",
            str(tmp_path / "x.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 1
    missing = tmp_path / "x.db"
    assert process.stderr.strip().splitlines() == [
        f"error: no registry at {missing}: create it with `forwardguard registry init --registry {missing}`"
    ]


def test_item_14_init_leaves_another_applications_sqlite_file_alone(tmp_path: Path) -> None:
    """issue 14 item 14: ``registry init`` on another application's SQLite file added our tables and
    switched it to WAL without a word."""
    import sqlite3

    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    connection.close()
    before = foreign.read_bytes()
    _assert_one_line_error(
        cli("init", "--registry", str(foreign)), "is not a forwardguard registry and holds other tables (users)"
    )
    assert foreign.read_bytes() == before
    with sqlite3.connect(foreign) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    connection.close()

    made = tmp_path / "reg.db"
    assert cli("init", "--registry", str(made)).exit_code == 0  # a new registry is still made in WAL mode
    with sqlite3.connect(made) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()
