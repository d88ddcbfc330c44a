"""The object store contract over a local directory (``/path`` or ``file:///path``).

Writes go through a temporary file and a rename (all-or-nothing); ``put_if_absent`` links
the temporary file into place, which fails when the name exists, and fsyncs: it writes the
markers and journal entries that must survive a crash. Reads of the event loop's async
methods are plain reads (decision 0001: a small local read costs less than a thread hop).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from tileserver.errors import StoreError
from tileserver.files import TMP_PREFIX, describe, is_orphan, write_atomic
from tileserver.store.objects import check_key, check_prefix

# Never readable by others: even sealed, stores and the journal say which slides exist.
FILE_MODE = 0o640
DIR_MODE = 0o750


class LocalObjects:
    """Objects under one directory (created on the first write)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = f"{root}/"
        self._dirs: set[str] = set()  # directories known to exist (saves a syscall a write)

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> str:
        # Strings, not Paths: every tile served comes through here, and pathlib's parsing
        # cost more than the system calls.
        return self._prefix + check_key(key)

    def get(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot read {key}: {describe(exc)}") from exc

    def get_range(self, key: str, start: int, length: int) -> bytes | None:
        if start < 0 or length < 0:
            raise StoreError(f"invalid range {start}+{length} of {key}")
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot read {key}: {describe(exc)}") from exc
        try:
            return os.pread(fd, length, start)
        except IsADirectoryError:  # opening a directory works; reading it does not
            return None
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot read {key}: {describe(exc)}") from exc
        finally:
            os.close(fd)

    async def get_async(self, key: str) -> bytes | None:
        return self.get(key)

    async def get_range_async(self, key: str, start: int, length: int) -> bytes | None:
        return self.get_range(key, start, length)

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def _write(self, key: str, data: bytes, *, exclusive: bool) -> bool:
        path = self._path(key)
        parent = path.rpartition("/")[0]
        try:
            if parent not in self._dirs:
                os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
                self._dirs.add(parent)
            return write_atomic(path, data, durable=exclusive, exclusive=exclusive, mode=FILE_MODE)
        except OSError as exc:
            raise StoreError(f"cannot write {key} in {self.url}: {describe(exc)}") from exc

    def put(self, key: str, data: bytes) -> None:
        self._write(key, data, exclusive=False)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._write(key, data, exclusive=True)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot delete {key} in {self.url}: {describe(exc)}") from exc

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        base = self.root / check_prefix(prefix)
        if not base.is_dir():
            return
        found = []
        for directory, _dirs, files in os.walk(base):
            rel = os.path.relpath(directory, self.root)
            for name in files:
                if not name.startswith(TMP_PREFIX):
                    found.append(name if rel == "." else f"{rel}/{name}")
        yield from sorted(found)

    def children(self, prefix: str = "") -> list[str]:
        base = self.root / check_prefix(prefix)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            return sorted(
                entry.name for entry in os.scandir(base) if entry.is_dir(follow_symlinks=False)
            )
        return []

    def child(self, prefix: str) -> LocalObjects:
        return LocalObjects(self.root / check_prefix(prefix).rstrip("/"))

    def remove_temporaries(self) -> None:
        """Drop leftovers of writes a killed process never finished (not the temporaries of
        a writer still at work on the same store)."""
        now = time.time()
        for path in self.root.rglob(f"{TMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if is_orphan(path.name, now - path.stat().st_mtime):
                    path.unlink(missing_ok=True)
