"""Content-addressed blobs: ``ROOT/ab/abcdef...`` holds the bytes whose sha256 is ``abcdef...``.

A blob is written atomically (temporary file, fsync, rename, fsync of the folder) and every read
checks its hash, so a blob on disk is either complete and intact or reported as missing or
corrupted, never silently wrong.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from forwardguard.errors import ForwardguardError

_KEY = re.compile(r"[0-9a-f]{64}")
TEMP_SUFFIX = ".tmp"
# A temporary file older than this belongs to a writer that died mid-write; gc removes it.
STALE_TEMP_SECONDS = 3600


class BlobError(ForwardguardError):
    """A blob is missing or its bytes no longer match its hash."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def put(self, data: bytes) -> str:
        """Store ``data`` unless an intact copy exists (a corrupted one is replaced); return its key."""
        key = sha256_hex(data)
        if self.check(key) != "ok":
            self._write(key, data)
        return key

    def restore_if_missing(self, key: str, data: bytes) -> None:
        """Write ``data`` again if its blob vanished: a concurrent gc removes a blob whose row it
        did not see committed yet."""
        if not self.path(key).exists():
            self._write(key, data)

    def get(self, key: str) -> bytes:
        """The blob's bytes, checked against its key; BlobError when missing or corrupted."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobError(f"blob {key} is missing ({path})") from None
        actual = sha256_hex(data)
        if actual != key:
            raise BlobError(f"blob {key} is corrupted: its bytes now hash to {actual[:16]}... ({path})")
        return data

    def check(self, key: str) -> str:
        """``"ok"``, ``"missing"`` or ``"corrupted"``."""
        try:
            self.get(key)
        except BlobError:
            return "missing" if not self.path(key).exists() else "corrupted"
        return "ok"

    def keys(self, lower: str = "", upper: str | None = None) -> Iterator[str]:
        """Every stored blob's key with ``lower <= key < upper`` (temporary files excluded), streamed
        one folder at a time."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if not (folder.is_dir() and len(folder.name) == 2 and lower[:2] <= folder.name):
                continue
            if upper is not None and folder.name > upper[:2]:
                return
            for entry in os.scandir(folder):
                name = entry.name
                if _KEY.fullmatch(name) and name.startswith(folder.name) and lower <= name and (upper is None or name < upper):
                    yield name

    def remove_unreferenced(self, key: str, is_referenced: Callable[[str], bool]) -> bool:
        """Delete a blob that no row references; return whether it was deleted.

        The blob is first renamed away, then the references are checked again: a writer that
        commits its row in between either sees the blob gone and writes it again
        (:meth:`restore_if_missing`), or is seen here and gets its blob back.
        """
        path = self.path(key)
        parked = path.with_name(f".{key}.gc-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            os.rename(path, parked)
        except FileNotFoundError:
            return False
        if is_referenced(key):
            os.replace(parked, path)
            return False
        parked.unlink()
        return True

    def remove_stale_temporaries(
        self, is_referenced: Callable[[str], bool], *, older_than_s: float = STALE_TEMP_SECONDS
    ) -> list[Path]:
        """Delete the temporary files of writers (or gc runs) that died; return them.

        One that holds a complete blob which a row references but which is missing (a gc that
        died between parking a blob and giving it back) is put back instead.
        """
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        deadline = time.time() - older_than_s
        for path in self.root.glob(f"*/.*{TEMP_SUFFIX}"):
            try:
                if path.stat().st_mtime >= deadline:
                    continue
                key = path.name[1:65]
                if _KEY.fullmatch(key) and not self.path(key).exists() and is_referenced(key):
                    if sha256_hex(path.read_bytes()) == key:
                        os.replace(path, self.path(key))
                        continue
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                continue
        return removed

    def _write(self, key: str, data: bytes) -> None:
        folder = self.root / key[:2]
        temp = folder / f".{key}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            self._make_folder(folder)
            with open(temp, "xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, folder / key)
            _fsync_folder(folder)
        except OSError as error:  # a full disk, a quota: no partial blob stays behind
            temp.unlink(missing_ok=True)
            raise ForwardguardError(f"can't write blob {key} in {folder}: {error.strerror or error}") from None

    def _make_folder(self, folder: Path) -> None:
        if folder.is_dir():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            folder.mkdir()
        except FileExistsError:
            return
        except OSError as error:
            raise ForwardguardError(f"can't create blob folder {folder}: {error.strerror}") from None
        _fsync_folder(self.root)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
