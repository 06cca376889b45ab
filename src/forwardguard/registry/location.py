"""Where a registry lives: a database URL and the folder that holds its blobs.

- a plain path ``reg.db`` or ``sqlite:///reg.db``: a SQLite file, its blobs in ``reg.blobs/`` beside it;
- ``postgresql://user:password@host:5432/db?blobs=/shared/forwardguard-blobs``: a PostgreSQL
  database; the ``blobs`` query parameter names the blob folder, which every writer must see
  (a shared file system when the writers run on several machines). Other query parameters go to
  the driver (psycopg 3), e.g. ``sslmode=require`` or ``connect_timeout=5``.

An explicit ``blob_root`` overrides both defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from forwardguard.errors import ForwardguardError

BLOBS_QUERY_KEY = "blobs"


@dataclass(frozen=True)
class Location:
    url: URL
    blob_root: Path

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def sqlite_path(self) -> Path:
        return Path(self.url.database or "")

    def display(self) -> str:
        """The location without its password, for messages."""
        if self.is_sqlite:
            return str(self.sqlite_path)
        return self.url.render_as_string(hide_password=True)

    def with_password(self) -> str:
        """The full database URL, password included, to open the same registry in another process."""
        return self.url.render_as_string(hide_password=False)


def resolve_location(location: str | Path, *, blob_root: str | Path | None = None) -> Location:
    """Parse a registry path or URL; raise ForwardguardError when it is malformed or unsupported."""
    text = str(location).strip()
    if not text:
        raise ForwardguardError("empty registry location: give a SQLite file path or a postgresql:// URL")
    if isinstance(location, Path) or "://" not in text:
        return _sqlite_location(Path(text), blob_root)
    try:
        url = sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError):  # its message may quote the password: not shown
        raise ForwardguardError(
            f"malformed registry URL {_redact(text)!r}: check its host, port and database, and percent-encode "
            "special characters of the user and password"
        ) from None
    query_blobs = url.query.get(BLOBS_QUERY_KEY)
    if isinstance(query_blobs, tuple):
        raise ForwardguardError(f"registry URL gives '{BLOBS_QUERY_KEY}' more than once")
    url = url.difference_update_query([BLOBS_QUERY_KEY])
    if blob_root is None and query_blobs:
        blob_root = query_blobs
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.drivername not in ("sqlite", "sqlite+pysqlite") or url.query:
            raise ForwardguardError("a SQLite registry URL takes no driver or options: use sqlite:///PATH")
        if not url.database or url.database == ":memory:":
            raise ForwardguardError("an in-memory SQLite database can't hold a registry: give a file path")
        return _sqlite_location(Path(url.database), blob_root)
    if backend == "postgresql":
        if url.drivername not in ("postgresql", "postgresql+psycopg"):
            raise ForwardguardError(f"unsupported PostgreSQL driver {url.drivername!r}: use postgresql:// (psycopg 3)")
        if "@" in (url.host or "") + (url.database or ""):
            # "user:p@ss@host" parses as password "p" on host "ss@host": the rest of the password would
            # be shown wherever the host is (every error message), so such a URL is refused here.
            raise ForwardguardError(
                f"registry URL {_redact(text)!r}: write an '@' in the password as %40 (percent-encode the password)"
            )
        if not url.database:
            raise ForwardguardError(f"registry URL {_redact(text)!r} names no database")
        if blob_root is None:
            raise ForwardguardError(
                f"a PostgreSQL registry needs a blob folder: add ?{BLOBS_QUERY_KEY}=/path/to/folder to the URL"
            )
        return Location(url=url.set(drivername="postgresql+psycopg"), blob_root=Path(blob_root).expanduser().absolute())
    raise ForwardguardError(
        f"unsupported registry URL scheme {url.drivername!r}: give a SQLite file path, sqlite:///PATH or postgresql://..."
    )


def _sqlite_location(path: Path, blob_root: str | Path | None) -> Location:
    path = path.expanduser().absolute()
    if blob_root is None:
        if path.suffix == ".blobs":
            raise ForwardguardError(f"a SQLite registry file can't end in .blobs (that is its blob folder): {path}")
        blob_root = path.with_suffix(".blobs")
    return Location(url=URL.create("sqlite", database=str(path)), blob_root=Path(blob_root).expanduser().absolute())


def _redact(text: str) -> str:
    """Hide a password in a URL that SQLAlchemy could not parse, or parsed wrongly.

    The credentials end at the last '@' before the query: a password may hold '@', '/' or ':' unescaped.
    """
    scheme, sep, rest = text.partition("://")
    before_query, question, query = rest.partition("?")
    credentials, at, host = before_query.rpartition("@")
    if not at or ":" not in credentials:
        return text
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}{question}{query}"
