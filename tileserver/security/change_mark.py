"""The change mark: a small shared-memory file beside the SQLite auth database that tells
every process on the host, without reading the database, that its change counter has not
moved since they last read it.

Reading the counter from SQLite costs 30-45 us of CPU per request in a busy server (measured
in place, benchmarks/RESULTS.md; 5 us in a tight loop, where SQLite's code and pages stay in
the CPU caches), and every authenticated request reads it. Reading the mark costs about 2 us.

Protocol (decision 0005):
- A writer that bumps the counter (``Accounts._db``) holds an exclusive lock on the file for
  its whole transaction; it writes a fresh random odd value before the transaction and a
  fresh random even value after it (committed or not).
- A reader reads the mark, then the counter, and keeps the pair when the mark was even. Next
  time, the same even mark means no transaction committed since: every writer changes the
  mark before committing and again after, and random values do not come back. An odd mark (a
  write under way, or a writer that died mid-way: the mark stays odd until the next writer
  finishes), or a file removed or replaced, means: read the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import secrets
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SIZE = 8


def _open(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size < SIZE:
            os.ftruncate(fd, SIZE)  # zeros: an even mark, as good as any other
    except BaseException:
        os.close(fd)
        raise
    return fd


class _View:
    """The file, open and mapped, for reading; closed once dropped."""

    def __init__(self, path: Path) -> None:
        self.fd = _open(path)
        try:
            self.map = mmap.mmap(self.fd, SIZE, access=mmap.ACCESS_READ)
        except BaseException:
            os.close(self.fd)
            raise
        weakref.finalize(self, _release, self.fd, self.map)

    def gone(self) -> bool:
        return os.fstat(self.fd).st_nlink == 0


def _release(fd: int, view: mmap.mmap) -> None:
    view.close()
    os.close(fd)


class ChangeMark:
    """The mark of one database file. Thread-safe, and safe across ``fork``: writers open the
    file each time, so their locks exclude writers in every process and thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._view = _View(path)

    @classmethod
    def beside(cls, database: Path) -> ChangeMark | None:
        """The mark of ``database`` (``<database>.changes``, 0600); None where it cannot be
        kept (a read-only directory): then every reader reads the database."""
        try:
            return cls(database.with_name(database.name + ".changes"))
        except OSError:
            return None

    def settled(self) -> int | None:
        """The mark when no write is under way; None when one is, or when the file was
        removed or replaced since it was opened (it is opened again for the next call)."""
        view = self._view
        if view.gone():  # writers now write to the new file
            with self._lock, contextlib.suppress(OSError):  # if not now, next time
                if self._view is view:
                    self._view = _View(self.path)
            return None
        value = int.from_bytes(view.map[:SIZE], "little")
        return None if value & 1 else value

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around a write transaction that bumps the counter: odd before, even after."""
        fd = _open(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.pwrite(fd, (secrets.randbits(64) | 1).to_bytes(SIZE, "little"), 0)
            try:
                yield
            finally:
                os.pwrite(fd, (secrets.randbits(64) & ~1).to_bytes(SIZE, "little"), 0)
        finally:
            os.close(fd)  # and with it the lock
