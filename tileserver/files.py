"""Whole-file writes on the local disk: a temporary file renamed (or linked) into place, so a
killed writer never leaves half a file. Used by the local object store, the key ring and the
TLS set-up alike.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets

TMP_PREFIX = ".tmp-"
_ORPHAN_AGE = 3600.0  # seconds; a temporary this old is abandoned whoever wrote it


def is_orphan(name: str, age: float) -> bool:
    """Whether the temporary file ``name`` (from ``write_atomic``), ``age`` seconds old, was
    left by a writer that is gone: one still running (a concurrent converter) keeps its own.
    The writer's process ID is in the name; on a shared disk another host's ID means nothing
    here, so age alone decides past an hour."""
    pid = name.removeprefix(TMP_PREFIX).partition("-")[0]
    if age > _ORPHAN_AGE or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """Dead but not yet reaped: a killed converter's worker keeps its ID until whoever
    adopted it collects it, and writes nothing more."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] == b"Z"
    except (OSError, IndexError):  # gone meanwhile, or no /proc: the signal test decided
        return False


def write_atomic(
    path: str, data: bytes, *, durable: bool = False, exclusive: bool = False, mode: int = 0o666
) -> bool:
    """Write ``data`` to ``path`` all at once; returns False (writing nothing) when
    ``exclusive`` and the file already exists. ``durable`` fsyncs the file and its directory,
    for what must survive a power cut (markers, keys). Raises OSError."""
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}-{name}"
    # A bare descriptor: Python's file objects add three syscalls and a buffer per file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            try:
                os.link(tmp, path)  # fails if the name exists: exactly one racer wins
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
        if durable:
            dir_fd = os.open(parent or ".", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def describe(exc: OSError) -> str:
    return "out of disk space" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
