"""Converting slide files into an output directory: store naming, resume, and the journal.

The journal (``.tileserver-journal.json`` in the output directory) maps a content
fingerprint of each source (never its name) to its slide ID. Running a conversion again
resumes an incomplete store under the same ID and skips a complete one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from tileserver.errors import StoreError
from tileserver.pyramid.builder import ConvertResult, Progress, convert
from tileserver.pyramid.plan import ConvertOptions
from tileserver.security.keys import KeyRing
from tileserver.sources import open_slide
from tileserver.store.layout import COMPLETE_MARKER, new_slide_id
from tileserver.store.objects import LocalObjects

JOURNAL = ".tileserver-journal.json"
_SAMPLE = 1 << 20


def fingerprint(path: Path) -> str:
    """sha256 over the size, first and last MiB: identifies content, reveals no name."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(_SAMPLE))
        f.seek(max(size - _SAMPLE, 0))
        digest.update(f.read(_SAMPLE))
    return digest.hexdigest()


@contextlib.contextmanager
def _journal(out_dir: Path) -> Iterator[dict[str, str]]:
    """The journal, locked against other converters writing to the same directory."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = open(out_dir / f"{JOURNAL}.lock", "a")  # noqa: SIM115 - held for the block
    except OSError as exc:
        raise StoreError(f"cannot write to output directory {out_dir}: {exc.strerror}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = out_dir / JOURNAL
        entries: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        before = dict(entries)
        yield entries
        if entries != before:
            LocalObjects(out_dir).put(JOURNAL, json.dumps(entries, indent=1).encode(), durable=True)


def convert_file(
    path: Path,
    out_dir: Path,
    options: ConvertOptions,
    keyring: KeyRing | None,
    backend: str = "auto",
    progress: Progress | None = None,
) -> ConvertResult | str:
    """Convert one slide; returns the result, or the slide ID when it was already complete."""
    with open_slide(path, backend) as source:
        key = fingerprint(path)
        with _journal(out_dir) as journal:
            slide_id = journal.get(key)
            if slide_id and (out_dir / slide_id / COMPLETE_MARKER).is_file():
                return slide_id
            if not slide_id:
                slide_id = journal[key] = new_slide_id()
        if not os.access(out_dir, os.W_OK):
            raise StoreError(f"output directory {out_dir} is not writable")
        return convert(source, out_dir / slide_id, slide_id, options, keyring, progress)
