"""Registry locations: paths and URLs, their blob folders, and the malformed or unsupported ones."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwardguard.errors import ForwardguardError
from forwardguard.registry.location import resolve_location


@pytest.mark.parametrize(
    ("given", "database", "blobs"),
    [
        ("/data/reg.db", "/data/reg.db", "/data/reg.blobs"),
        ("/data/registry", "/data/registry", "/data/registry.blobs"),
        ("sqlite:////data/reg.db", "/data/reg.db", "/data/reg.blobs"),
        ("sqlite+pysqlite:////data/reg.db", "/data/reg.db", "/data/reg.blobs"),
        ("sqlite:////data/reg.db?blobs=/elsewhere", "/data/reg.db", "/elsewhere"),
    ],
)
def test_sqlite_locations(given: str, database: str, blobs: str) -> None:
    location = resolve_location(given)
    assert location.is_sqlite
    assert (location.sqlite_path, location.blob_root) == (Path(database), Path(blobs))
    assert location.display() == database


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_location("reg.db").sqlite_path == tmp_path / "reg.db"
    assert resolve_location(Path("reg.db"), blob_root="b").blob_root == tmp_path / "b"


def test_postgresql_location() -> None:
    location = resolve_location("postgresql://fg:s3cret@db.example:5433/patterns?blobs=/mnt/blobs&sslmode=require")
    assert not location.is_sqlite
    assert location.blob_root == Path("/mnt/blobs")
    assert location.url.drivername == "postgresql+psycopg"
    assert dict(location.url.query) == {"sslmode": "require"}
    assert "s3cret" not in location.display() and "db.example:5433/patterns" in location.display()
    assert "s3cret" in location.with_password()
    explicit = resolve_location("postgresql+psycopg://fg@db/patterns?blobs=/mnt/blobs", blob_root="/other")
    assert explicit.blob_root == Path("/other")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "empty registry location"),
        ("postgresql://fg:pw@db:notaport/x?blobs=/b", "malformed registry URL 'postgresql://fg:\\*\\*\\*@db:notaport"),
        ("mysql://fg@db/x", "unsupported registry URL scheme 'mysql'"),
        ("nosuchdb://x/y", "unsupported registry URL scheme 'nosuchdb'"),
        ("postgresql+asyncpg://fg@db/x?blobs=/b", "unsupported PostgreSQL driver"),
        ("postgresql://fg@db/x", "needs a blob folder: add \\?blobs="),
        ("postgresql://fg@db?blobs=/b", "names no database"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
        ("sqlite:////data/reg.db?timeout=5", "takes no driver or options"),
        ("/data/reg.blobs", "can't end in .blobs"),
    ],
)
def test_bad_locations(given: str, message: str) -> None:
    with pytest.raises(ForwardguardError, match=message) as caught:
        resolve_location(given)
    assert "\n" not in str(caught.value)
    assert "pw@" not in str(caught.value)


def test_item_15_an_unescaped_at_in_a_password_is_refused_without_showing_it() -> None:
    """issue 14 item 15: ``user:p@ss@host`` parsed as password "p" on host "ss@host", printed in errors."""
    with pytest.raises(ForwardguardError, match="write an '@' in the password as %40") as caught:
        resolve_location("postgresql://fg:SECRET@PART2@db.example/patterns?blobs=/b")
    assert "SECRET" not in str(caught.value) and "PART2" not in str(caught.value)
    escaped = resolve_location("postgresql://fg:SECRET%40PART2@db.example/patterns?blobs=/b")
    assert escaped.url.password == "SECRET@PART2" and "PART2" not in escaped.display()


# Passwords of letters that neither the rest of the URL nor any message uses, '@' and the URL's delimiters.
_MARKERS = "QWXZJK"
_passwords = st.text(alphabet=_MARKERS + "@/:#%", min_size=1, max_size=24)
_URL = "postgresql://fg:{}@db.example:5432/patterns?blobs=/b&sslmode=require"


@given(_passwords)
def test_a_percent_encoded_password_is_kept_whole_and_never_displayed(password: str) -> None:
    location = resolve_location(_URL.format(quote(password, safe="")))
    assert location.url.password == password
    assert location.url.host == "db.example" and location.url.database == "patterns"
    assert not any(character in _MARKERS for character in location.display())


@given(_passwords)
def test_no_part_of_a_raw_password_is_ever_displayed(password: str) -> None:
    try:
        shown = resolve_location(_URL.format(password)).display()
    except ForwardguardError as error:
        shown = str(error)
    assert not any(character in _MARKERS for character in shown), shown
