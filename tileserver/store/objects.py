"""Key -> bytes objects in a local directory, with atomic writes.

Keys are zarr-style relative paths ("0/c/0/3/7"); anything that could step outside the
root (absolute paths, "..", empty parts, backslashes) is refused. A write lands in a
temporary file that is renamed into place, so a killed writer never leaves half an object.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from tileserver.errors import StoreError

_TMP_PREFIX = ".tmp-"


def check_key(key: str) -> str:
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise StoreError(f"invalid object key {key!r}")
    return key


class Objects(Protocol):
    """What stores read and write through: plain local files, or sealed ones."""

    @property
    def root(self) -> Path: ...

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes, *, durable: bool = False, atomic: bool = True) -> None: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def keys(self) -> Iterator[str]: ...

    def remove_temporaries(self) -> None: ...


class LocalObjects:
    """Objects under one directory. Thread-safe: every write is its own temp file + rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = f"{root}/"
        self._dirs: set[str] = set()  # directories known to exist (saves a syscall a write)

    def _path(self, key: str) -> str:
        # Strings, not Paths: every tile served and every chunk written comes through here,
        # and pathlib's parsing cost more than the system calls.
        return self._prefix + check_key(key)

    def get(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(f"{self.root.name}: cannot read {key}: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def put(self, key: str, data: bytes, *, durable: bool = False, atomic: bool = True) -> None:
        """Write an object. ``atomic`` (the default) goes through a temporary file and a rename,
        so readers never see half an object; chunks of a store still being built skip that
        (the store is unreadable until its marker exists, and a resumed build rewrites them).
        ``durable`` also fsyncs, for markers that must survive a crash."""
        path = self._path(key)
        parent, _, name = path.rpartition("/")
        target = f"{parent}/{_TMP_PREFIX}{secrets.token_hex(6)}-{name}" if atomic else path
        try:
            if parent not in self._dirs:
                os.makedirs(parent, exist_ok=True)
                self._dirs.add(parent)
            # A bare descriptor: a store is ~10^4 small files, and Python's file objects
            # add three syscalls (fstat, ioctl, lseek) and a buffer to each.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if atomic:
                os.replace(target, path)
            if durable:
                dir_fd = os.open(parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            if atomic:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
            reason = "out of disk space" if exc.errno == errno.ENOSPC else exc.strerror
            raise StoreError(f"cannot write {key} in {self.root}: {reason}") from exc

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def keys(self) -> Iterator[str]:
        """Every object key, temporary files excluded."""
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.name.startswith(_TMP_PREFIX):
                yield path.relative_to(self.root).as_posix()

    def remove_temporaries(self) -> None:
        """Drop leftovers of writes a killed process never finished."""
        for path in self.root.rglob(f"{_TMP_PREFIX}*"):
            path.unlink(missing_ok=True)
