"""verify and gc page through the registry (small pages here): shards that cover it once, samples,
resuming after an id, and orphans found a page of keys at a time."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from registry_testdata import random_image
from test_registry_cli import _assert_one_line_error, cli

from forwardguard.errors import ForwardguardError
from forwardguard.registry import Registry, maintenance
from forwardguard.registry.patterns import patterns_query

PATTERNS = 12


@pytest.fixture
def paged(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> tuple[Registry, list[str], list[str]]:
    """A registry of 12 patterns read 5 at a time, with 3 unreferenced blobs; its ids and orphans, sorted."""
    monkeypatch.setattr(maintenance, "PAGE_SIZE", 5)
    ids = sorted(registry.record_pattern(**random_image(i).record_args()).id for i in range(PATTERNS))
    orphans = sorted(registry._storage.blobs.put(f"orphan {i}".encode()) for i in range(3))
    return registry, ids, orphans


def test_a_full_verify_reads_pages(paged: tuple[Registry, list[str], list[str]]) -> None:
    registry, ids, orphans = paged
    statements: list[str] = []

    def log(_conn, _cursor, statement: str, *_args) -> None:
        statements.append(statement)

    sa.event.listen(registry._storage.engine, "before_cursor_execute", log)
    try:
        report = registry.verify()
    finally:
        sa.event.remove(registry._storage.engine, "before_cursor_execute", log)
    assert (report.ok, report.patterns, report.blobs, report.orphans) == (True, PATTERNS, 2 * PATTERNS, orphans)
    assert sum("ORDER BY patterns.id" in statement for statement in statements) == 3  # 5 + 5 + 2 rows


def test_shards_cover_every_pattern_and_blob_once(paged: tuple[Registry, list[str], list[str]]) -> None:
    registry, ids, orphans = paged
    broken = registry.get_pattern(ids[7])
    registry._storage.blobs.path(broken.delta_blob_sha256).unlink()
    reports = [registry.verify(shard=(index, 4)) for index in range(4)]
    assert sum(report.patterns for report in reports) == PATTERNS
    assert sorted(key for report in reports for key in report.orphans or []) == orphans
    assert [(p.pattern_id, p.role, p.problem) for r in reports for p in r.problems] == [(broken.id, "delta", "missing")]
    assert registry.verify(shard=(0, 1)).patterns == PATTERNS
    for shard in ((4, 4), (0, 0), (-1, 2), (0, 65537)):
        with pytest.raises(ForwardguardError, match="shard must be I/N"):
            registry.verify(shard=shard)


def test_a_sample_is_that_many_patterns_each_once(paged: tuple[Registry, list[str], list[str]]) -> None:
    registry, ids, _ = paged
    report = registry.verify(sample=7)
    assert (report.patterns, report.orphans) == (7, None)
    assert registry.verify(sample=100).patterns == PATTERNS  # the whole registry, once
    assert registry.verify(sample=3, shard=(1, 2)).patterns == min(3, sum(i >= "8" for i in ids))


def test_verify_resumes_after_the_last_id_it_reported(paged: tuple[Registry, list[str], list[str]]) -> None:
    registry, ids, _ = paged
    reported: list[tuple[int, str]] = []
    registry.verify(progress=lambda count, last_id: reported.append((count, last_id)))
    assert reported == [(5, ids[4]), (10, ids[9])]
    assert registry.verify(after=ids[4]).patterns == PATTERNS - 5
    with pytest.raises(ForwardguardError, match="not resumed"):
        registry.verify(sample=2, after=ids[4])


def test_gc_finds_orphans_a_page_at_a_time(paged: tuple[Registry, list[str], list[str]]) -> None:
    registry, _, orphans = paged
    assert sorted(registry.gc(dry_run=True).removed_blobs) == orphans
    assert sorted(registry.gc().removed_blobs) == orphans
    report = registry.verify()
    assert report.ok and report.orphans == [] and report.patterns == PATTERNS


def test_verify_options_on_the_command_line(paged: tuple[Registry, list[str], list[str]], registry_location: str) -> None:
    _, ids, _ = paged
    args = ["verify", "--registry", registry_location]
    result = cli(*args, "--shard", "1/2")
    assert result.exit_code == 0 and f"{sum(i >= '8' for i in ids)} patterns" in result.stdout
    result = cli(*args, "--sample", "2")
    assert result.exit_code == 0 and result.stdout.strip() == "2 patterns, 4 blobs checked: 0 problems"
    result = cli(*args, "--after", ids[9])
    assert result.exit_code == 0 and result.stdout.startswith("2 patterns")
    _assert_one_line_error(cli(*args, "--shard", "one/2"), "--shard must be I/N")


def test_keyset_pages_list_every_pattern_once_in_order(registry: Registry) -> None:
    for i in range(7):
        registry.record_pattern(**random_image(i).record_args())
    everything = [record.id for record in registry.list_patterns()]
    pages, after = [], None
    while True:
        page = [record.id for record in registry.list_patterns(limit=3, after=after)]
        pages.append(page)
        if len(page) < 3:
            break
        after = page[-1]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [pattern for page in pages for pattern in page] == everything
    assert registry.list_patterns(after=everything[-1]) == []
    with pytest.raises(ForwardguardError, match="no pattern"):
        registry.list_patterns(after="ab" * 32)


@pytest.mark.parametrize("filters", [{"tenant": "acme"}, {"tenant": "acme", "after": "first"}])
def test_a_tenants_pages_are_read_by_its_own_index(registry: Registry, filters: dict) -> None:
    """One tenant's listing (``GET /v1/patterns``, ``list --tenant``) seeks to that tenant in the
    ``(tenant, created_at, id)`` index: walking the table's order instead skips every other tenant's rows."""
    first = registry.record_pattern(**random_image(0).record_args(tenant="acme"))
    if filters.get("after") == "first":
        filters = {**filters, "after": first.id}
    storage = registry._storage
    query = patterns_query(storage, **filters, limit=10)
    sql = str(query.compile(storage.engine, compile_kwargs={"literal_binds": True}))
    with storage.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SET enable_seqscan = off"))  # a table of one row is read whole otherwise
            plan = connection.execute(sa.text(f"EXPLAIN {sql}")).scalars().all()
        else:
            plan = [row[-1] for row in connection.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}"))]
    assert any("ix_patterns_tenant_created_at_id" in line for line in plan), plan
    assert not any("TEMP B-TREE" in line or line.lstrip("-> ").startswith("Sort") for line in plan), plan
